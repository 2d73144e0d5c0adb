"""Health checks of model servers: ``GET /Info`` with a timeout, off the per-call path.

Used when a launcher registers a server (is it really a UM-Bridge server, which models?) and when
a call to a server breaks (is the server gone, or was it a stale keep-alive connection?). aiohttp
is imported with the first check, not with the balancer: a run that never probes never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson

from balancer.launcher.contract import unix_path

if TYPE_CHECKING:
    import aiohttp


class Probe:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    @contextlib.asynccontextmanager
    async def _at(self, url: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
        """A session that reaches ``url`` and the base URL to use with it. A server on a Unix socket
        (``http+unix://``) gets a session of its own for this check: checks are rare (registration,
        a broken call), and no session outlives the server it was made for."""
        sock = unix_path(url)
        if sock is None:
            yield self._http(), url
            return
        import aiohttp

        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=sock),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        ) as session:
            yield session, "http://localhost"

    async def models(self, url: str, timeout: float = 10.0) -> list[str]:
        """The model names a server's /Info lists; raises on any failure (with a readable message)."""
        async with self._at(url) as (http, base), http.get(base + "/Info", timeout=_timeout(timeout)) as r:
            info = orjson.loads(await r.read())
        models = info["models"]
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError("'models' is not a list of names")
        return models

    async def sizes(self, url: str, model: str, timeout: float = 10.0) -> tuple[list[int], list[int]]:
        """A server's input and output sizes of ``model`` for the empty config."""
        out = []
        async with self._at(url) as (http, base):
            for op, key in (("InputSizes", "inputSizes"), ("OutputSizes", "outputSizes")):
                t = _timeout(timeout)
                async with http.post(base + "/" + op, data=orjson.dumps({"name": model}), timeout=t) as r:
                    out.append(list(orjson.loads(await r.read())[key]))
        return out[0], out[1]

    async def alive(self, url: str, timeout: float = 2.0) -> bool:
        """Whether /Info still answers 200 (after a broken call: stale connection or dead server)."""
        import aiohttp

        try:
            t = _timeout(timeout)
            async with self._at(url) as (http, base), http.get(base + "/Info", timeout=t) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _timeout(total: float) -> aiohttp.ClientTimeout:
    import aiohttp

    return aiohttp.ClientTimeout(total=total)


def exposed_addresses(port: int) -> list[str]:
    """Non-loopback addresses on which this machine listens on TCP ``port`` (from /proc/net/tcp
    and tcp6, no traffic sent): a model server meant for the balancer alone that binds 0.0.0.0
    can be reached by anyone on the network."""
    out = []
    for name, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            with open(name) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 4 or cols[3] != "0A":  # LISTEN
                continue
            addr, _, hexport = cols[1].partition(":")
            if int(hexport, 16) != port or len(addr) != width:
                continue
            ip = _ip(addr)
            if not ip.is_loopback:
                out.append(str(ip))
    return out


def _ip(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hexaddr)
    # The kernel prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)
