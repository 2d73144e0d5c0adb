"""HTTP for both sides of the balancer: the client-facing server (request/reply types, router,
connection protocol, shared buffers), the keep-alive upstream client and the peer-UID lookup.
Generic: nothing here knows UM-Bridge, so it imports nothing else of the balancer.
"""
