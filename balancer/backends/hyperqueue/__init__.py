"""The HyperQueue backend: one HQ job per server through the Python API, against an embedded cluster
or a running ``hq`` server.
"""
