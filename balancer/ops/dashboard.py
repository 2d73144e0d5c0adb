"""The dashboard: one static page (``balancer/ops/web``) and the event stream that feeds it.

The page's files are read once at start and served from memory with a strict Content-Security-Policy
(everything from this origin, nothing inline), so the page works offline behind ``ssh -L``. The
stream is the ``Feed`` (``balancer/ops/feed.py``).

The dashboard is read-only and carries no token: its port is the owner's only (peer check), and
EventSource cannot send an Authorization header anyway.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from balancer.http.messages import Reply, Request, error_reply
from balancer.ops.feed import Feed

CSP = (
    b"Content-Security-Policy: default-src 'self'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'; object-src 'none'\r\n"
)
_SAFE = b"X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "svg": b"image/svg+xml",
}


class Assets:
    """The page and its files, read once: ``balancer/ops/web/**`` -> a ready ``Reply`` each."""

    def __init__(self) -> None:
        self.files: dict[str, Reply] = {}
        root = resources.files("balancer.ops") / "web"
        self._load(root, "")

    def _load(self, node: Any, prefix: str) -> None:
        for item in node.iterdir():
            name = prefix + item.name
            if item.is_dir():
                self._load(item, name + "/")
                continue
            ctype = _TYPES.get(name.rpartition(".")[2], b"text/plain; charset=utf-8")
            # Our own files change with the balancer: revalidate; the vendored library is versioned.
            cache = b"public, max-age=86400" if name.startswith("vendor/") else b"no-cache"
            head = b"Content-Type: %s\r\nCache-Control: %s\r\n%s%s" % (ctype, cache, CSP, _SAFE)
            self.files[name] = (200, head, item.read_bytes())

    async def page(self, request: Request) -> Reply:
        return self.files["dashboard.html"]

    async def asset(self, request: Request) -> Reply:
        """``GET /dashboard/<file>``: only the files read at start, so no path reaches the disk."""
        reply = self.files.get(request.path[len("/dashboard/") :] or "dashboard.html")
        return reply or error_reply("NotFound", "no such dashboard file", 404)


class Dashboard:
    """The page, its files and its feed; ``routes`` says where they are served."""

    def __init__(self, feed: Feed) -> None:
        self.assets = Assets()
        self.feed = feed

    def routes(self) -> list[tuple[str, str, Any, bool]]:
        """(method, path, handler, prefix?) for the client listener's router."""
        return [
            ("GET", "/dashboard", self.assets.page, False),
            ("GET", "/dashboard/events", self.feed.handle, False),
            ("GET", "/dashboard/", self.assets.asset, True),
        ]
