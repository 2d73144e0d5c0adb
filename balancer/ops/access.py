"""Owner-only client port: a connection from another Unix user's process is refused.

A login node is shared: anyone on it can reach 127.0.0.1:4242 and, without this, run the owner's
models on the owner's allocation. ``PeerGate`` is the frontend's ``admit`` hook: once per new
connection it asks the kernel for the UID behind the peer's socket (``balancer.http.peer``) and answers
every request on a refused connection with a 403 UM-Bridge error, so no handler (no model) runs.

- The owner is the balancer's effective UID; ``allow_uids``/``allow_users`` add others.
- A peer with no socket on this machine (a client on a compute node) has no UID the kernel can
  tell: refused unless ``allow_remote = true``.
- A loopback peer whose socket cannot be found (it closed already, or the lookup failed) is
  refused too: the check fails closed.

Refusals are journaled (``peer.refused``) at most once per ``LOG_S`` with their count.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable

from balancer.http.messages import Reply, error_reply
from balancer.http.peer import PeerLookup, user_uids
from balancer.observe.events import Ev, EventBus, Throttled

LOG_S = 5.0


def _loopback(host: str) -> bool:
    return host.startswith(("127.", "::ffff:127.")) or host == "::1"


def _forbidden(message: str) -> Reply:
    return error_reply("Forbidden", message, 403)


class PeerGate:
    """``__call__(transport)``: None to serve the connection, or the reply every request gets."""

    def __init__(
        self,
        bus: EventBus,
        allow_uids: Iterable[int] = (),
        allow_remote: bool = False,
        lookup: PeerLookup | None = None,
        connections: Callable[[], Iterable[asyncio.BaseTransport]] = tuple,
    ) -> None:
        self.bus = bus
        self.owner = os.geteuid()
        self.allowed = frozenset({self.owner, *allow_uids})
        self.allow_remote = allow_remote
        self.lookup = lookup or PeerLookup()
        self._refusals = Throttled(bus, Ev.PEER_REFUSED, LOG_S)
        self.connections = connections  # the client port's open connections (app.py wires it)

    def reconfigure(self, uids: Iterable[int], users: Iterable[str], remote: bool) -> None:
        """A reload's ``allow_uids``/``allow_users``/``allow_remote``: for connections from now on,
        and the open ones are asked again: a keep-alive connection of a user the reload removed is
        closed now, not served for as long as its client keeps it (a call on it loses its answer)."""
        self.allowed = frozenset({self.owner, *uids, *user_uids(list(users)).values()})
        self.allow_remote = remote
        for t in list(self.connections()):
            if not t.is_closing() and self(t) is not None:
                t.close()

    def __call__(self, transport: asyncio.BaseTransport) -> Reply | None:
        local = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple) or not isinstance(local, tuple):
            return None  # not TCP (a Unix socket in a test): the file's mode guards it
        try:
            uid = self.lookup.peer_uid(local[:2], peer[:2])
        except OSError as exc:  # fail closed; the reason goes to the journal line, not a log per connection
            uid, why = None, f"its user could not be determined ({exc.strerror or exc})"
        else:
            why = "its user could not be determined"
        if uid is not None:
            if uid in self.allowed:
                return None
            why = f"uid {uid} is not the owner's (allow it with allow_uids or allow_users)"
        elif not _loopback(str(peer[0])):
            if self.allow_remote:
                return None
            why = "a connection from another host (allow it with allow_remote = true)"
        self._refusals.note(uid=uid, remote=peer[0], reason=why)
        return _forbidden(f"this balancer serves its owner only: {why}")

    def close(self) -> None:
        self._refusals.close()
        self.lookup.close()
