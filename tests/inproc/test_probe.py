"""The balancer's checks of a model server (control/probe.py) against a real HTTP server on loopback:
the ready check asks /Info and the sizes at once (not one after the other), only the sizes of the
models the server is to serve, and reports a failure readably."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from balancer.control.probe import Probe


class _Server:
    """/Info, /InputSizes, /OutputSizes; each answer waits until ``hold`` requests are in flight
    together (a check that asks one after the other never gets its first answer); with
    ``info_waits`` False /Info answers at once and only the sizes wait for each other."""

    def __init__(
        self, hold: int = 1, info_waits: bool = True, models: tuple[str, ...] = ("forward", "other")
    ) -> None:
        self.hold = hold
        self.info_waits = info_waits
        self.models = models
        self.inflight = 0
        self.most = 0
        self.asked: list[tuple[str, str]] = []
        self._all_in = asyncio.Event()

    async def _wait_for_company(self) -> None:
        self.inflight += 1
        self.most = max(self.most, self.inflight)
        if self.inflight >= self.hold:
            self._all_in.set()
        try:
            await asyncio.wait_for(self._all_in.wait(), 5)
        finally:
            self.inflight -= 1

    async def info(self, request: web.Request) -> web.Response:
        self.asked.append(("Info", ""))
        if self.info_waits:
            await self._wait_for_company()
        return web.json_response({"protocolVersion": 1.0, "models": list(self.models)})

    async def sizes(self, request: web.Request) -> web.Response:
        op = request.path.strip("/")
        name = (await request.json())["name"]
        self.asked.append((op, name))
        await self._wait_for_company()
        if name not in self.models:
            return web.json_response({"error": {"type": "ModelNotFound"}}, status=400)
        key = "inputSizes" if op == "InputSizes" else "outputSizes"
        return web.json_response({key: [1] if op == "InputSizes" else [2]})


@contextlib.asynccontextmanager
async def _serving(server: _Server) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/Info", server.info)
    app.router.add_post("/InputSizes", server.sizes)
    app.router.add_post("/OutputSizes", server.sizes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_ready_check_asks_info_and_the_configured_models_sizes_together() -> None:
    async def main() -> None:
        server = _Server(hold=3)  # /Info, InputSizes, OutputSizes in flight at once, or no answer
        async with _serving(server) as url:
            models, sizes = await Probe().ready_check(url, ["forward"])
        assert models == ["forward", "other"]
        assert sizes == {"forward": ([1], [2])}  # only the model it is to serve
        assert server.most == 3
        assert sorted(server.asked) == [("Info", ""), ("InputSizes", "forward"), ("OutputSizes", "forward")]

    _run(main())


def test_ready_check_without_configured_models_asks_each_listed_ones_sizes_together() -> None:
    async def main() -> None:
        server = _Server(hold=4, info_waits=False)  # after /Info: both models' sizes, all four at once
        async with _serving(server) as url:
            models, sizes = await Probe().ready_check(url, [])
        assert models == ["forward", "other"]
        assert sizes == {"forward": ([1], [2]), "other": ([1], [2])}
        assert server.most == 4

    _run(main())


def test_a_model_without_sizes_is_its_own_failure_and_info_failing_fails_the_check() -> None:
    async def main() -> None:
        server = _Server(hold=1)
        async with _serving(server) as url:
            models, sizes = await Probe().ready_check(url, ["missing"])
            assert models == ["forward", "other"]
            assert isinstance(sizes["missing"], ValueError) and "HTTP 400" in str(sizes["missing"])
            assert await Probe().alive(url)
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(OSError):
            await Probe().ready_check(dead, ["forward"])
        assert not await Probe().alive(dead)

    _run(main())
