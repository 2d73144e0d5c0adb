"""The owner's surface: one set of views, the operator API, the dashboard and its feed, Prometheus
metrics, owner-only access and live configuration reload.
"""
