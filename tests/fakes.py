"""In-process harness: a real Balancer and frontend on loopback over a fake scheduler.

``FakeScheduler`` fakes only the scheduler: it records the launches the pool submits and the
cancels it sends, and the test plays the jobs (``job_started``/``job_ended``/``job_deadline``)
and the launchers (``register`` over the real control API, with real model servers from
``models/``). Everything above the backend is the production code.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from balancer.app import Balancer
from balancer.backends.base import Backend, Launch
from balancer.config.parse import parse_config
from balancer.config.schema import BalancerConfig
from balancer.pool.states import ServerState
from balancer.runner import Runner

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token"


class FakeScheduler(Backend):
    name = "fake"

    def __init__(self, cfg: BalancerConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        self.submitted: list[Launch] = []
        self.cancelled: list[str] = []
        self.closed = False
        self.on_submit: Callable[[list[Launch]], None] | None = None  # Harness.serve plays launchers
        self.on_cancel: Callable[[str], None] | None = None

    async def submit(self, launches: list[Launch]) -> None:
        self.submitted += launches
        if self.on_submit is not None:
            self.on_submit(launches)

    async def cancel(self, server_id: str) -> None:
        self.cancelled.append(server_id)
        if self.on_cancel is not None:
            self.on_cancel(server_id)

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
    _ending: bool = False
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

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

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a launcher's report in the background (kept referenced until it is done)."""
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def serve(self, urls: str | dict[str, str]) -> None:
        """Play every launcher from now on: each start the pool submits registers at once with the
        model server at ``urls`` (one URL, or one per spec name), as if its job had started; one
        told to stop reports its exit, as its launcher would, and a cancelled one its job ended.
        For tests about the call path and the pool's decisions rather than about starting servers."""

        def url_of(launch: Launch) -> str:
            return urls if isinstance(urls, str) else urls[launch.spec.name]

        def start(launches: list[Launch]) -> None:
            for launch in launches:
                self._spawn(self.register(launch.server_id, url_of(launch)))

        start(self.backend.submitted)
        self.backend.on_submit = start
        self.end_on_stop()

    def end_on_stop(self) -> None:
        """From now on a server told to stop reports its exit at once, as its launcher would, and a
        cancelled job ends: what ``running`` does at shutdown, so that no test waits out the grace
        a real launcher would get (the pool's cancel after ``LEASE_STOP_GRACE_S``)."""
        if self._ending:
            return
        self._ending = True

        def exited(server_id: str) -> None:
            self._spawn(self.post(f"/api/servers/{server_id}/exited", {"code": 0, "why": "signal SIGTERM"}))

        def cancelled(server_id: str) -> None:
            self.balancer.pool.job_ended(server_id, "cancelled", False)

        self.backend.on_cancel = cancelled
        self.balancer.bus.subscribe(lambda e: exited(e["server"]), only=frozenset({"server.stopping"}))
        for s in list(self.balancer.pool.servers.values()):  # told to stop before now
            if s.state is ServerState.STOPPING:
                exited(s.id)


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
    runner = Runner(cfg, FakeScheduler, run_dir=tmp_path, token=TOKEN, journal=False, clock=clock)
    balancer = await runner.open()
    harness_events: list[dict[str, Any]] = []
    runner.bus.subscribe(harness_events.append)
    if setup is not None:
        setup(balancer)
    await runner.start()
    backend = balancer.backend
    assert isinstance(backend, FakeScheduler)
    async with aiohttp.ClientSession() as http:
        h = Harness(balancer, backend, runner.url, http, harness_events, runner.control_url)
        try:
            yield h
        finally:
            h.end_on_stop()
            await runner.stop("test over")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _answers(url: str, alive: Callable[[], bool]) -> None:
    """Wait until the model server at ``url`` answers ``/Info``; fail if it dies or takes 30 s."""
    async with aiohttp.ClientSession() as http:

        async def answers() -> bool:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url + "/Info") as r:
                    return r.status == 200
            return False

        deadline = time.monotonic() + 30
        while not await answers():
            assert alive() and time.monotonic() < deadline, "model server did not start"
            await asyncio.sleep(0.05)


# The plain test model (no script, no variables) is stateless and answers at once: one process
# serves every test that asks for it, instead of a Python start (about a second) per test.
_SHARED: list[tuple[subprocess.Popen[bytes], str]] = []


def _stop_shared() -> None:
    for proc, _ in _SHARED:
        proc.kill()
        proc.wait()


atexit.register(_stop_shared)


def _start_shared() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "models" / "testmodel.py")],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a test's Ctrl-C is not its business; atexit ends it
    )
    return proc, f"http://127.0.0.1:{port}"


async def _shared_test_model() -> str:
    if _SHARED and _SHARED[0][0].poll() is None:
        return _SHARED[0][1]
    _stop_shared()
    _SHARED[:] = [_start_shared()]
    proc, url = _SHARED[0]
    await _answers(url, lambda: proc.poll() is None)
    return url


@contextlib.asynccontextmanager
async def model_server(script: Path | None = None, **env: str) -> AsyncIterator[str]:
    """A real UM-Bridge model server (``models/testmodel.py`` unless ``script``) on a free loopback
    port; yields its URL. The plain test model is shared by the tests (it keeps no state)."""
    if script is None and not env:
        yield await _shared_test_model()
        return
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
        await _answers(url, lambda: proc.returncode is None)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@contextlib.contextmanager
def in_thread(make: Callable[[], contextlib.AbstractAsyncContextManager[Any]]) -> Iterator[Any]:
    """Enter the async context ``make()`` on an event loop of its own thread and yield what it
    yields: one in-process balancer that several plain (synchronous) tests share, e.g. a module
    fixture, talked to over HTTP. Its ``events`` list may be read from the test's thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="harness-loop", daemon=True)
    thread.start()
    entered: concurrent.futures.Future[Any] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def hold() -> None:
        try:
            async with make() as value:
                entered.set_result(value)
                await stop.wait()
        except BaseException as exc:
            if not entered.done():
                entered.set_exception(exc)
            raise

    run = asyncio.run_coroutine_threadsafe(hold(), loop)
    try:
        yield entered.result(60)
    finally:
        loop.call_soon_threadsafe(stop.set)
        try:
            run.result(60)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


class Run:
    """A served harness seen the way tests/system sees a balancer process (``BalancerProc``): its URLs
    and its journal, read from any thread."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.url = h.url
        self.control_url = h.control_url

    def token(self) -> str:
        return TOKEN

    def events(self, ev: str | None = None) -> list[dict[str, Any]]:
        return list(self.h.events) if ev is None else self.h.of(ev)

    def find(self, ev: str, **match: Any) -> dict[str, Any] | None:
        return next(iter(self.h.of(ev, **match)), None)


@contextlib.asynccontextmanager
async def served(
    tmp: Path, specs: list[dict[str, Any]], scripts: dict[str, Path] | None = None, **kw: Any
) -> AsyncIterator[Run]:
    """A balancer whose starts all register at once with one real model server per spec
    (``testmodel.py`` unless ``scripts`` names another); ``kw``: keys of the [balancer] table and
    ``env`` for the model servers."""
    env = kw.pop("env", {})
    async with contextlib.AsyncExitStack() as stack:
        urls = {
            s["name"]: await stack.enter_async_context(model_server((scripts or {}).get(s["name"]), **env))
            for s in specs
        }
        top = {"port": 0, "scale_interval_s": 0.05, **kw}
        h = await stack.enter_async_context(running(tmp, specs, balancer=top))
        h.serve(urls)
        yield Run(h)


def serve_in_thread(
    tmp: Path, specs: list[dict[str, Any]], **kw: Any
) -> contextlib.AbstractContextManager[Run]:
    """``served`` on a loop thread of its own: the test body stays plain synchronous code."""
    return in_thread(lambda: served(tmp, specs, **kw))
