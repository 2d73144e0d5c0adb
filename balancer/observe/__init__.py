"""What happened, for whoever listens: the event bus and its schema, the JSONL journal, the ring
buffer of recent rare events, log histograms and notifications.
"""
