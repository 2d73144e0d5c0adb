"""Host and Origin check of the client port: no DNS rebinding, no cross-site request.

A web page the owner opens elsewhere can make their browser talk to ``localhost:4242``: through a
name of its own that it re-points at 127.0.0.1 (DNS rebinding: the browser then sends
``Host: rebind.attacker.example`` and lets the page read the answers), or by a "simple"
cross-site request (a ``text/plain`` POST, no preflight) whose answer it cannot read but whose
effect (a model run, an operator action) happens. The peer check cannot tell: the browser is the
owner's process. So every request on the client port must

- name the balancer in ``Host``: loopback names, any IP address literal (a rebinding page always
  uses a DNS name), the bound host, this machine's host name, or ``allow_hosts``; the port is not
  part of the check, so an ``ssh -L`` tunnel to any local port works;
- carry no ``Origin``, or the balancer's own (``http://`` + its Host): the umbridge client and curl
  send none, the dashboard's page the balancer's own.

The check runs once per request on its headers (``FrontServer.check``), a dictionary look-up for a
Host seen before.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

from balancer.http.messages import Reply, Request, error_reply

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
MEMO_MAX = 256  # Host values found good, remembered (bounded: a client picks the port)


def _name(host: bytes) -> str:
    """The host part of a Host value, lower case, without port or IPv6 brackets."""
    h = host.decode("latin-1").strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.partition(":")[0]
    return h.rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return False
    return True


class HostCheck:
    """``__call__(transport, request)``: None to serve it, else the 403 it gets."""

    def __init__(self, bound_host: str, allow_hosts: Iterable[str] = ()) -> None:
        names = {*LOOPBACK_NAMES, bound_host, socket.gethostname(), *allow_hosts}
        self.names = frozenset(n.strip().lower().rstrip(".") for n in names if n)
        self._good: dict[bytes, bytes] = {}  # Host -> the Origin a page from it sends

    def host_ok(self, host: bytes) -> bool:
        name = _name(host)
        return name in self.names or name.endswith(".localhost") or _is_address(name)

    def __call__(self, transport: asyncio.BaseTransport | None, req: Request) -> Reply | None:
        headers = req.headers
        host = headers.get(b"host")
        origin = headers.get(b"origin")
        if host is None:  # no browser sends no Host: nothing to rebind
            own = None
        else:
            own = self._good.get(host)
            if own is None:
                if not self.host_ok(host):
                    return error_reply(
                        "Forbidden",
                        f"Host {host[:100].decode('latin-1')!r} does not name this balancer "
                        "(DNS rebinding?); add the name to allow_hosts if it does",
                        403,
                    )
                own = b"http://" + host
                if len(self._good) < MEMO_MAX:
                    self._good[host] = own
        if origin is not None and origin != own:
            return error_reply(
                "Forbidden",
                f"cross-origin request from {origin[:100].decode('latin-1')!r} refused",
                403,
            )
        return None
