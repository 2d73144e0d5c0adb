"""Which local model servers listen beyond loopback: one scan of the kernel's socket tables serves
every registration that arrived before it began.

A server on this machine (a loopback URL) that also listens on 0.0.0.0 can be reached by anyone on
the network; the check reads ``/proc/net/tcp{,6}`` (no traffic sent). That read walks every socket
of the machine: once per registration it made registering 10,000 servers O(n^2) (measured: ~60 %
of a core for minutes after the last registration, ``bench/scale.py``). Now a registration waits
for the next scan (never one that began before it asked, so a socket it opened is seen), and all
registrations waiting then share it.
"""

from __future__ import annotations

import asyncio
import ipaddress


def listeners() -> dict[int, list[str]]:
    """Port -> the non-loopback addresses this machine listens on (TCP, v4 and v6)."""
    out: dict[int, list[str]] = {}
    for name, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            with open(name) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split(None, 4)
            if len(cols) < 4 or cols[3] != "0A":  # LISTEN
                continue
            addr, _, hexport = cols[1].partition(":")
            if len(addr) != width:
                continue
            ip = _ip(addr)
            if not ip.is_loopback:
                out.setdefault(int(hexport, 16), []).append(str(ip))
    return out


def exposed_addresses(port: int) -> list[str]:
    """Non-loopback addresses on which this machine listens on TCP ``port`` (one scan, now)."""
    return listeners().get(port, [])


def _ip(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hexaddr)
    # The kernel prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


class ExposureScan:
    """Coalesces the checks: ``exposed(port)`` joins the next scan (in a worker thread)."""

    def __init__(self) -> None:
        self._next: asyncio.Future[dict[int, list[str]]] | None = None  # not begun: joinable
        self._running: asyncio.Task[None] | None = None

    async def exposed(self, port: int) -> list[str]:
        """The non-loopback addresses listening on ``port``, from a scan begun after this call."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._running is None:
                self._running = asyncio.ensure_future(self._scans())
        return list((await asyncio.shield(self._next)).get(port, ()))

    async def _scans(self) -> None:
        try:
            while self._next is not None:
                fut, self._next = self._next, None  # who asks from now on waits for the next scan
                try:
                    fut.set_result(await asyncio.to_thread(listeners))
                except Exception as exc:  # OSError and the like: every waiter hears it
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: a waiter may have gone
        finally:
            self._running = None
