"""The UM-Bridge call path: validate a request, answer Info and cached metadata, and forward
evaluations through the dispatcher to a free server, retrying a call whose server vanished.
"""
