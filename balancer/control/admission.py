"""Who may hold a connection to the launchers' control listener, and for how long without the token.

The control listener faces the cluster network (``control_host``) and needs no connection to be
served but the launchers'; without limits anyone who reaches it could hold every connection (or
file descriptor) the balancer has, and no new server could register. ``ControlGate`` is its
``admit`` and ``check`` hooks (``FrontServer``):

- A peer on this machine (loopback, or this host's own address): the kernel tells its UID
  (``balancer.http.peer``); only the owner's processes are served and trusted, anyone else's
  connection gets a 403 and is closed at once, before it sends anything. A loopback peer whose user
  cannot be told is refused (fail closed).
- A peer on another host (a launcher on a compute node, or anyone): its connection must send a
  request with the run's token within ``deadline_s``, else it is closed. At most ``per_source``
  connections of one address and ``max_pending`` in all may wait for their token; one more evicts
  the oldest waiting one (of its address, else of all), so a flood never shuts a launcher out: its
  request follows its connect at once, an attacker's never does. A connection that sent the token is
  a launcher's and is not limited here (``HttpLimits.max_connections`` still applies).

Refusals and evictions are journaled (``peer.refused`` with ``port = "control"``) at most once per
``LOG_S`` with their count. The cost is one kernel look-up per connection and, until a connection
is trusted, one constant-time token comparison per request.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections import OrderedDict

from balancer.http.messages import Reply, Request, error_reply
from balancer.http.peer import PeerLookup
from balancer.observe.events import Ev, EventBus, Throttled

LOG_S = 5.0
DEADLINE_S = 5.0  # a remote connection must have sent the token by then
PER_SOURCE = 16  # remote connections of one address still without the token
MAX_PENDING = 256  # remote connections still without the token, all addresses


def _on_this_host(peer: str, local: str) -> bool:
    """Loopback, or this host's own address (the one the connection came in on)."""
    return peer.startswith(("127.", "::ffff:127.")) or peer == "::1" or peer == local


def _http(reply: Reply) -> bytes:
    """A refusal written at once, before any request (as the frontend's 503 for too many)."""
    status, headers, body = reply
    return b"HTTP/1.1 %d Forbidden\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n%s" % (
        status,
        len(body),
        headers,
        body,
    )


class ControlGate:
    """The control listener's ``admit(transport)`` and ``check(transport, request)``."""

    def __init__(
        self,
        bus: EventBus,
        token: str,
        lookup: PeerLookup | None = None,
        deadline_s: float = DEADLINE_S,
        per_source: int = PER_SOURCE,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.owner = os.geteuid()
        self.lookup = lookup or PeerLookup()
        self.deadline_s, self.per_source, self.max_pending = deadline_s, per_source, max_pending
        self._bearer = f"Bearer {token}".encode()
        # Remote connections without the token yet, oldest first: transport -> (address, its deadline).
        self._pending: OrderedDict[asyncio.BaseTransport, tuple[str, asyncio.TimerHandle]] = OrderedDict()
        self._by_source: dict[str, OrderedDict[asyncio.BaseTransport, None]] = {}
        self._refusals = Throttled(bus, Ev.PEER_REFUSED, LOG_S)
        self.refused = 0  # connections closed by this gate, for tests and the status

    def __call__(self, transport: asyncio.BaseTransport) -> Reply | None:
        local = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple) or not isinstance(local, tuple):
            return None  # not TCP: nothing to look up
        host = str(peer[0])
        try:
            uid = self.lookup.peer_uid(local[:2], peer[:2])
        except OSError as exc:
            uid, why = None, f"its user could not be determined ({exc.strerror or exc})"
        else:
            why = "its user could not be determined"
        if uid is not None:  # a process on this machine
            if uid == self.owner:
                return None  # the owner's launcher: trusted
            why = f"uid {uid} is not the owner's"
        elif not _on_this_host(host, str(local[0])):
            self._wait_for_token(transport, host)
            return None
        return self._refuse(transport, host, uid, why)

    def _refuse(self, transport: asyncio.BaseTransport, host: str, uid: int | None, why: str) -> Reply:
        reply = error_reply(
            "Forbidden", f"the control listener serves the balancer's launchers only: {why}", 403
        )
        self._close(transport, _http(reply))
        self._refusals.note(port="control", uid=uid, remote=host, reason=why)
        return reply

    def _close(self, transport: asyncio.BaseTransport, farewell: bytes = b"") -> None:
        self.refused += 1
        if not transport.is_closing():
            if farewell and isinstance(transport, asyncio.WriteTransport):
                transport.write(farewell)
            transport.close()

    def _wait_for_token(self, transport: asyncio.BaseTransport, host: str) -> None:
        mine = self._by_source.setdefault(host, OrderedDict())
        if len(mine) >= self.per_source:
            self._evict(
                next(iter(mine)), f"more than {self.per_source} connections from {host} without the token"
            )
        elif len(self._pending) >= self.max_pending:
            self._evict(
                next(iter(self._pending)), f"more than {self.max_pending} connections without the token"
            )
        timer = asyncio.get_running_loop().call_later(self.deadline_s, self._expire, transport)
        self._pending[transport] = (host, timer)
        self._by_source.setdefault(host, mine)[transport] = None

    def _forget(self, transport: asyncio.BaseTransport) -> bool:
        entry = self._pending.pop(transport, None)
        if entry is None:
            return False
        host, timer = entry
        timer.cancel()
        mine = self._by_source.get(host)
        if mine is not None:
            mine.pop(transport, None)
            if not mine:
                del self._by_source[host]
        return True

    def _evict(self, transport: asyncio.BaseTransport, why: str) -> None:
        host = self._pending[transport][0]
        self._forget(transport)
        if not transport.is_closing():
            self._close(transport)
            self._refusals.note(port="control", uid=None, remote=host, reason=why)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        if transport in self._pending:
            self._evict(transport, f"no request with the token within {self.deadline_s:g} s")

    def check(self, transport: asyncio.BaseTransport | None, req: Request) -> Reply | None:
        """A waiting connection that sends the token is trusted from now on; the handlers answer
        every request as before (401 without the token), so this only ever lets one through."""
        if (
            transport is not None
            and transport in self._pending
            and hmac.compare_digest(req.headers.get(b"authorization", b""), self._bearer)
        ):
            self._forget(transport)
        return None

    def close(self) -> None:
        """Timers off, pending refusals journaled. The look-up stays open: launchers report their
        servers' exits until the listener itself closes, after this."""
        for t in list(self._pending):
            self._forget(t)
        self._refusals.close()
