"""HTTP/1.1 frontend: the listener and its open connections (``balancer.http.connection`` is one
connection's protocol, uvicorn's split: the connection apart from the server that owns it).

Why not aiohttp's web server: measured here it costs ~55 us of CPU per request before any of our
code runs, half of the balancer's whole per-call budget. The balancer serves a handful of fixed
routes with small JSON bodies, so a protocol object that parses with llhttp (the parser of
Node.js, also behind uvicorn) and writes one buffer per answer does the same for a fraction. The
server owns the listening socket, the set of connections (for a graceful shutdown) and the sweeper
that closes idle keep-alive connections and requests dripping in below the minimum rate. The
request and reply types and the limits are in ``balancer.http.messages``, the routes in
``balancer.http.router``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable

from balancer.http.connection import HttpProtocol
from balancer.http.messages import HttpLimits, Reply, Request, error_reply
from balancer.http.router import Router

# Asked once per new connection: None serves it, a Reply refuses it (access.PeerGate).
Admit = Callable[[asyncio.BaseTransport], "Reply | None"]
# Told of every 500 (a handler's bug), to be journaled (rate-limited) by the app: ``(route, error)``.
OnError = Callable[[str, str], None]
# Asked once per request, before its handler, with its connection's transport (ops/origin.py's Host
# and Origin check, control/admission.py's token deadline): a Reply answers it instead.
Check = Callable[["asyncio.BaseTransport | None", Request], "Reply | None"]


class FrontServer:
    """Owns the listening socket and the open connections, for a graceful shutdown."""

    def __init__(
        self,
        router: Router,
        limits: HttpLimits,
        admit: Admit | None = None,
        on_error: OnError | None = None,
        check: Check | None = None,
    ) -> None:
        self.router = router
        self.check = check
        self.limits = limits
        self.on_error = on_error
        # Asked once per new connection (access.PeerGate): a Reply refuses it, every request on it
        # gets that answer instead of a handler's, then the connection closes.
        self.admit = admit
        self.conns: set[HttpProtocol] = set()
        self.closing = False
        self.server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def reconfigure(self, max_body: int) -> None:
        """A reloaded body-size limit, for requests from now on."""
        self.limits = dataclasses.replace(self.limits, max_body=max_body)

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: HttpProtocol(self), host, port, backlog=1024)
        self._sweeper = loop.call_later(self._sweep_every(), self._sweep)
        return int(self.server.sockets[0].getsockname()[1])

    def _sweep_every(self) -> float:
        return min(self.limits.idle_timeout_s, self.limits.rate_grace_s) / 3

    def _sweep(self) -> None:
        """Close connections idle too long, and requests dripping in below the minimum rate (a
        client uploading steadily is never cut off, however long its body takes)."""
        now = time.monotonic()
        lim = self.limits
        for c in list(self.conns):
            if c.in_message:
                took = now - c.message_start
                if took > lim.rate_grace_s and c.message_bytes < lim.min_rate * took:
                    c.give_up(
                        error_reply("InvalidInput", f"request arrives slower than {lim.min_rate:g} B/s", 408)
                    )
            elif c.idle() and now - c.last_active > lim.idle_timeout_s:
                c.close()
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every(), self._sweep)

    async def stop_listening(self) -> None:
        """No new connections; idle keep-alive ones close, busy ones after their answer."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            if c.idle():
                c.close()

    async def close(self) -> None:
        """Close the listener and every connection. The listener is closed first: ``wait_closed`` on a
        server still listening waited out its whole timeout, one second added to every shutdown."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            c.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)
