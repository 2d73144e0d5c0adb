"""In-process harness: a real Balancer and frontend on loopback over a fake scheduler.

``FakeScheduler`` fakes only the scheduler: it records the launches the pool submits and the
cancels it sends, and the test plays the jobs (``job_started``/``job_ended``/``job_deadline``)
and the launchers (``register`` over the real control API, with real model servers from
``models/``). Everything above the backend is the production code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from balancer.app import Balancer
from balancer.backends.base import Backend, Launch
from balancer.config.load import BalancerConfig, parse_config
from balancer.http.server import FrontServer, HttpLimits
from balancer.observe.events import EventBus

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token"


class FakeScheduler(Backend):
    name = "fake"

    def __init__(self, cfg: BalancerConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        self.submitted: list[Launch] = []
        self.cancelled: list[str] = []
        self.closed = False

    async def submit(self, launches: list[Launch]) -> None:
        self.submitted += launches

    async def cancel(self, server_id: str) -> None:
        self.cancelled.append(server_id)

    async def close(self) -> None:
        self.closed = True


def in_loop(test: Callable[..., Any]) -> Callable[..., Any]:
    """Run an ``async def`` test in a fresh event loop (pytest's fixtures pass through)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(test(*args, **kwargs))

    return run


async def until(pred: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Wait on the event loop until ``pred()`` is truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or pred}")
        await asyncio.sleep(0.01)


@dataclass
class Harness:
    balancer: Balancer
    backend: FakeScheduler
    url: str
    http: aiohttp.ClientSession
    events: list[dict[str, Any]] = field(default_factory=list)
    control_url: str = ""  # the launchers' listener

    def _base(self, path: str) -> str:
        """The harness plays launchers over the control listener: their routes go there."""
        launcher = path == "/api/servers/register" or path.endswith(("/lease", "/exited"))
        return self.control_url if launcher and path.startswith("/api/servers/") else self.url

    def of(self, ev: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["ev"] == ev and all(e.get(k) == v for k, v in match.items())]

    async def event(self, ev: str, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        return (await until(lambda: self.of(ev, **match), timeout, f"{ev} {match}"))[0]

    async def post(self, path: str, doc: Any, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.post(self._base(path) + path, json=doc, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def get(self, path: str, token: str | None = TOKEN) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(self.url + path, headers=headers) as r:
            return await r.json(content_type=None)

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        """Any method; ``body`` bytes go as they are, anything else as JSON."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with self.http.request(method, self._base(path) + path, headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def evaluate(self, x: float, model: str = "forward") -> tuple[int, Any]:
        """What a client sends: an Evaluate call of ``model`` at ``[[x]]``, no token."""
        return await self.post("/Evaluate", {"name": model, "input": [[x]]}, token=None)

    async def register(self, sid: str, model_url: str) -> tuple[int, Any]:
        """Do what a launcher does once its model server answers."""
        return await self.post("/api/servers/register", {"server": sid, "url": model_url, "job": "fake"})


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    servers: list[dict[str, Any]],
    clock: Callable[[], float] = time.monotonic,
    setup: Callable[[Balancer], None] | None = None,
    **raw: Any,
) -> AsyncIterator[Harness]:
    """A started balancer (config from ``servers`` and the extra top-level ``raw`` tables); ``clock``
    is the pool's and scaler's (a test can move it forward); ``setup`` runs before it starts."""
    top = {"port": 0, "scale_interval_s": 0.05}
    cfg = parse_config({"balancer": top, "servers": servers, **raw}, tmp_path)
    backend = FakeScheduler(cfg, tmp_path)
    bus = EventBus()
    balancer = Balancer(cfg, bus, tmp_path, TOKEN, backend, clock=clock)
    harness_events: list[dict[str, Any]] = []
    bus.subscribe(harness_events.append)
    limits = HttpLimits(max_body=cfg.max_body_bytes)
    front = FrontServer(balancer.client_router(), limits, admit=balancer.gate)
    control = FrontServer(balancer.control_router(), limits)
    port = await front.listen("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    control_url = f"http://127.0.0.1:{await control.listen('127.0.0.1', 0)}"
    if setup is not None:
        setup(balancer)
    await balancer.start(url, control_url)
    async with aiohttp.ClientSession() as http:
        h = Harness(balancer, backend, url, http, harness_events, control_url)
        try:
            yield h
        finally:
            await front.stop_listening()
            await balancer.shutdown("test over")
            await front.close()
            await control.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def model_server(script: Path | None = None, **env: str) -> AsyncIterator[str]:
    """A real UM-Bridge model server (``models/testmodel.py`` unless ``script``) on a free loopback
    port; yields its URL."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script or ROOT / "models" / "testmodel.py"),
        env={**os.environ, "PORT": str(port), **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def answers() -> bool:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(url + "/Info") as r:
                        return r.status == 200
                return False

            deadline = time.monotonic() + 30
            while not await answers():
                assert proc.returncode is None and time.monotonic() < deadline, "model server did not start"
                await asyncio.sleep(0.05)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
