"""Health checks of model servers: ``GET /Info`` and the sizes, with a timeout, off the per-call path.

Used when a launcher registers a server (is it really a UM-Bridge server, which models, which
sizes?) and when a call to a server breaks (is the server gone, or was it a stale keep-alive
connection?). Each check is one short connection through the launcher's own small client
(``launcher.client``): checks are rare, a fresh connection is what a broken call's check should
test, and aiohttp's import alone held the event loop ~0.1 s at the first registration of a run.
The ready check asks ``/Info`` and the sizes together: one round trip, not three.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from balancer.launcher.client import request

Sizes = tuple[list[int], list[int]]


class Probe:
    async def models(self, url: str, timeout: float = 10.0) -> list[str]:
        """The model names a server's /Info lists; raises on any failure (with a readable message)."""
        info = _answer(await request("GET", url + "/Info", timeout), "/Info")
        models = info.get("models")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError("'models' is not a list of names")
        return models

    async def sizes(self, url: str, model: str, timeout: float = 10.0) -> Sizes:
        """A server's input and output sizes of ``model`` for the empty config (both asked at once)."""
        ins, outs = await asyncio.gather(
            self._sizes(url, "InputSizes", "inputSizes", model, timeout),
            self._sizes(url, "OutputSizes", "outputSizes", model, timeout),
        )
        return ins, outs

    async def _sizes(self, url: str, op: str, key: str, model: str, timeout: float) -> list[int]:
        doc = _answer(await request("POST", f"{url}/{op}", timeout, {"name": model}), f"/{op}")
        sizes = doc.get(key)
        if not isinstance(sizes, list):
            raise ValueError(f"/{op} has no list {key!r}")
        return list(sizes)

    async def ready_check(
        self, url: str, wanted: Sequence[str], timeout: float = 10.0
    ) -> tuple[list[str], dict[str, Sizes | Exception]]:
        """/Info's models, and the sizes of each model the server is to serve: the configured ones
        (``wanted``) are asked together with /Info, else those /Info lists, together after it.
        Raises what /Info raises; a model whose sizes failed has the exception as its value."""
        asked = {m: asyncio.ensure_future(self.sizes(url, m, timeout)) for m in wanted}
        try:
            models = await self.models(url, timeout)
        except BaseException:
            await _settle(asked.values())
            raise
        if not wanted:
            asked = {m: asyncio.ensure_future(self.sizes(url, m, timeout)) for m in models}
        try:
            got = await asyncio.gather(*asked.values(), return_exceptions=True)
        except BaseException:
            await _settle(asked.values())
            raise
        out: dict[str, Sizes | Exception] = {}
        for m, r in zip(asked, got, strict=True):
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # a cancellation, not an answer
            out[m] = r
        return models, out

    async def alive(self, url: str, timeout: float = 2.0) -> bool:
        """Whether /Info still answers 200 (after a broken call: stale connection or dead server)."""
        try:
            status, _ = await request("GET", url + "/Info", timeout, read_body=False)
        except (asyncio.TimeoutError, OSError):
            return False
        return status == 200

    async def close(self) -> None:
        """Nothing is held between checks (each is its own connection)."""


def _answer(reply: tuple[int, Any], what: str) -> dict[str, Any]:
    status, doc = reply
    if status != 200:
        raise ValueError(f"{what} answered HTTP {status}")
    if not isinstance(doc, dict):
        raise ValueError(f"{what} did not answer a JSON object")
    return doc


async def _settle(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel and reap requests whose answers are no longer wanted (no "never retrieved" warnings)."""
    pending = list(tasks)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
