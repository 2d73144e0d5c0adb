"""Which handler answers a request: exact routes plus prefix routes, resolved per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from balancer.http.messages import Reply, Request, Stream

Handler = Callable[[Request], Awaitable["Reply | Stream"]]
# A route's fast handler: ``fast(request, done)`` returns True when it takes the request and will
# call ``done(reply)`` once (at once, or later from a socket's callback), False to leave it to the
# route's coroutine handler. The per-call path uses it to answer without a task per request.
FastHandler = Callable[[Request, Callable[[Reply], None]], bool]


class Router:
    """Exact routes plus prefix routes (``/api/servers/{id}/...``) for the control API."""

    def __init__(self) -> None:
        self.exact: dict[tuple[bytes, str], Handler] = {}
        self.prefix: list[tuple[bytes, str, Handler]] = []
        self.fast: dict[tuple[bytes, str], FastHandler] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.exact[(method.encode(), path)] = handler

    def add_fast(self, method: str, path: str, fast: FastHandler) -> None:
        """Try ``fast`` first for this exact route (its ``add`` handler stays the fallback)."""
        self.fast[(method.encode(), path)] = fast

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        self.prefix.append((method.encode(), prefix, handler))

    def resolve(self, method: bytes, path: str) -> Handler | None:
        h = self.exact.get((method, path))
        if h is not None:
            return h
        for m, p, h in self.prefix:
            if m == method and path.startswith(p):
                return h
        return None
