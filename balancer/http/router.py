"""Which handler answers a request: exact routes plus prefix routes, resolved per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from balancer.http.messages import Reply, Request, Stream

Handler = Callable[[Request], Awaitable["Reply | Stream"]]


class Router:
    """Exact routes plus prefix routes (``/api/servers/{id}/...``) for the control API."""

    def __init__(self) -> None:
        self.exact: dict[tuple[bytes, str], Handler] = {}
        self.prefix: list[tuple[bytes, str, Handler]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.exact[(method.encode(), path)] = handler

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
