"""A preempted server in the pool: no new calls, stopped at once, its calls in flight re-queued
without being charged an attempt, journaled once, never a failed start; and the launchers'
``preempted`` report that leads there. The real scheduler's preemption: cluster/test_preempt_slurm."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp

from balancer.calls.dispatcher import Dispatcher
from balancer.config.parse import parse_config
from balancer.observe.events import EVENT_NAMES, EventBus
from balancer.policy.types import Phase
from balancer.pool.pool import Pool
from balancer.pool.states import ServerState
from tests.fakes import ROOT, TOKEN, FakeScheduler, _answers, free_port, model_server, running, until

S = ServerState
SPEC = {"name": "t", "command": [sys.executable, "-c", "pass"], "models": ["forward"]}


def test_a_preempted_server_stops_at_once_and_is_no_failed_start(tmp_path: Path):
    async def main() -> None:
        cfg = parse_config({"servers": [SPEC]}, tmp_path)
        events: list[dict] = []
        bus = EventBus()
        bus.subscribe(events.append)
        pool = Pool(cfg, bus, FakeScheduler(cfg, tmp_path), Dispatcher())
        s = pool.add_server("t", "demand")
        pool.job_started(s.id, "7", "node1")
        pool.register(s, "http://127.0.0.1:1", {})
        pool.make_ready(s, ["forward"])
        s.outstanding = 1  # a call in flight: it goes back to the queue when the server stops
        pool.job_preempted(s.id, "its launcher got SIGTERM")
        assert s.preempted and s.state is S.STOPPING and s.phase is Phase.STOPPING and not s.serving
        assert not pool.dispatcher.by_model["forward"]
        pre = [e for e in events if e["ev"] == "server.preempted"]
        assert [(e["server"], e["spec"], e["job"], e["host"]) for e in pre] == [(s.id, "t", "7", "node1")]
        assert events[-1]["ev"] == "server.stopping" and events[-1]["reason"].startswith("preempted")
        pool.job_preempted(s.id, "job 7 PREEMPTED")  # the scheduler's report after the launcher's
        assert [x["ev"] for x in events].count("server.preempted") == 1 and pool.preempted_total == 1
        pool.job_ended(s.id, "job 7 PREEMPTED", False)
        assert events[-1]["ev"] == "server.stopped"
        # Preempted before it was ready (the job's state, no launcher report): no failed start either.
        b = pool.add_server("t", "demand")
        pool.job_started(b.id, "8", "node1")
        pool.job_preempted(b.id, "job 8 PREEMPTED")
        assert b.state is S.STOPPING
        pool.job_ended(b.id, "job 8 PREEMPTED", False)
        rt = pool.specs["t"]
        assert events[-1]["ev"] == "server.stopped" and rt.failures == 0 and not rt.held
        assert pool.preempted_total == 2 and not any(x["ev"] == "server.failed" for x in events)
        assert {x["ev"] for x in events} <= EVENT_NAMES
        pool.cancel_tasks()

    asyncio.run(main())


def test_a_call_in_flight_on_a_preempted_server_is_answered_elsewhere_uncharged(tmp_path: Path):
    """max_attempts = 1: were the broken call charged, the client would get a 503."""

    async def main() -> None:
        spec = {**SPEC, "min_servers": 1, "max_servers": 2, "max_attempts": 1}
        port = free_port()
        slow_proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "models" / "testmodel.py"),
            env={**os.environ, "PORT": str(port), "TEST_DELAY": "60000"},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        slow = f"http://127.0.0.1:{port}"
        async with running(tmp_path, [spec]) as h, model_server() as quick:
            first = (await until(lambda: h.backend.submitted, what="a submit"))[0].server_id
            await _answers(slow, lambda: slow_proc.returncode is None)
            await h.register(first, slow)
            await h.event("server.ready", server=first)
            call = asyncio.ensure_future(h.evaluate(3.0))
            await h.event("call.dispatched", server=first)
            second = h.balancer.pool.add_server("t", "demand")
            await h.register(second.id, quick)
            await h.event("server.ready", server=second.id)
            h.end_on_stop()
            h.balancer.pool.job_preempted(first, "job 1 PREEMPTED")
            # The launcher ends its model server on the stop: its connection breaks mid-call.
            slow_proc.kill()
            await slow_proc.wait()
            assert await asyncio.wait_for(call, 30) == (200, {"output": [[6.0]]})
            requeued = await h.event("call.requeued", server=first)
            assert requeued["attempt"] == 1
            assert (await h.event("call.dispatched", attempt=2))["server"] == second.id
            assert not h.of("server.failed") and not h.of("call.failed")

    asyncio.run(main())


def test_the_launchers_preempted_report(tmp_path: Path):
    async def main() -> None:
        async with (
            running(tmp_path, [{**SPEC, "min_servers": 1, "max_servers": 1}]) as h,
            model_server() as model,
        ):
            sid = (await until(lambda: h.backend.submitted, what="a submit"))[0].server_id
            await h.register(sid, model)
            await h.event("server.ready", server=sid)
            url = f"{h.control_url}/api/servers/{sid}/preempted"

            async def report(token: str) -> tuple[int, dict]:
                headers = {"Authorization": f"Bearer {token}"}
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(url, json={"signal": "SIGTERM"}, headers=headers) as r,
                ):
                    return r.status, await r.json(content_type=None)

            assert (await report("wrong"))[0] == 401 and not h.of("server.preempted")
            # No call in flight: stop now (the launcher ends its server, the job gives its CPUs back).
            assert await report(TOKEN) == (200, {"stop": True})
            e = await h.event("server.preempted", server=sid)
            assert e["spec"] == "t" and "SIGTERM" in e["reason"]
            # ``now``: its calls went elsewhere, so the launcher ends the model at once, no graceful
            # wait for calls in flight while the preempting job waits for the CPUs.
            lease = await h.post(f"/api/servers/{sid}/lease", {"wait": 0})
            assert lease == (200, {"stop": True, "now": True})
            assert (await h.get("/api/status"))["preempted"] == 1
            await h.post(f"/api/servers/{sid}/exited", {"code": 0, "why": "preempted"})
            assert (await h.event("server.stopped", server=sid))["reason"].startswith("model server exited")
            assert not h.of("server.failed") and h.balancer.pool.specs["t"].failures == 0

    asyncio.run(main())
