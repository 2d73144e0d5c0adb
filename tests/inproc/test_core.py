"""The core in-process: pool state machine, scaler, control API and call path over a fake scheduler.

No balancer subprocess: the production Balancer and frontend run on the test's event loop, the
scheduler is faked (``tests/fakes.py``), model servers are real ``models/testmodel.py`` processes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from balancer.calls.dispatcher import Dispatcher
from balancer.config.parse import parse_config
from balancer.launcher.contract import ENV_SERVER_ID, ENV_TOKEN
from balancer.observe.events import EVENT_NAMES, EventBus
from balancer.policy.decide import decide
from balancer.pool.pool import Pool
from balancer.pool.states import TRANSITIONS, ServerState
from tests.fakes import TOKEN, FakeScheduler, model_server, running, until

S = ServerState
SPEC = {"name": "t", "command": [sys.executable, "-c", "pass"], "models": ["forward"]}


def spec(**kw):
    return {**SPEC, **kw}


def test_transitions_follow_the_table_and_keep_the_dispatcher_in_step(tmp_path: Path):
    async def main() -> None:
        cfg = parse_config({"servers": [spec()]}, tmp_path)
        events: list[dict] = []
        bus = EventBus()
        bus.subscribe(events.append)
        pool = Pool(cfg, bus, FakeScheduler(cfg, tmp_path), Dispatcher())
        s = pool.add_server("t", "demand")
        # Every move the table forbids changes nothing and emits nothing.
        for frm in S:
            for to in S:
                if to in TRANSITIONS[frm]:
                    continue
                s.state = frm
                n = len(events)
                assert not pool.transition(s, to, "x"), (frm, to)
                assert s.state is frm and len(events) == n
        s.state = S.REQUESTED
        pool.job_started(s.id, "7", "node1")
        assert s.state is S.STARTING and events[-1]["ev"] == "server.started"
        assert pool.register(s, "http://127.0.0.1:1/", {"port": 1})
        assert s.state is S.REGISTERED and s.url == "http://127.0.0.1:1"
        assert not pool.register(s, "http://127.0.0.1:2", {})  # only once
        assert pool.make_ready(s, ["forward"])
        assert s.serving and list(pool.dispatcher.by_model["forward"]) == [s]
        assert pool.transition(s, S.DRAINING, "time limit ahead")
        assert not s.serving and not pool.dispatcher.by_model["forward"]
        pool.job_ended(s.id, "job 7 COMPLETED", False)
        assert s.id not in pool.servers and events[-1]["ev"] == "server.failed"
        n = len(events)
        pool.job_ended(s.id, "late report", True)  # stale: ignored
        assert len(events) == n
        assert [e["ev"] for e in events] == [
            "server.requested",
            "server.started",
            "server.registered",
            "server.ready",
            "server.draining",
            "server.failed",
        ]
        assert {e["ev"] for e in events} <= EVENT_NAMES

    asyncio.run(main())


def test_a_start_that_dies_before_ready_is_a_failed_start_and_a_late_started_report_is_kept(tmp_path: Path):
    async def main() -> None:
        cfg = parse_config({"servers": [spec()]}, tmp_path)
        bus = EventBus()
        events: list[dict] = []
        bus.subscribe(events.append)
        pool = Pool(cfg, bus, FakeScheduler(cfg, tmp_path), Dispatcher())
        a, b = pool.add_server("t", "demand"), pool.add_server("t", "demand")
        pool.register(a, "http://127.0.0.1:1", {})  # the launcher beat the scheduler's poll
        pool.job_started(a.id, "8", "node1")
        assert a.state is S.REGISTERED and events[-1]["ev"] == "server.started"
        pool.job_ended(b.id, "sbatch rejected the job", True)
        rt = pool.specs["t"]
        assert (rt.failures, rt.last_failure) == (1, "sbatch rejected the job")
        pool.stop(a, "idle")
        pool.job_ended(a.id, "launcher exited", False)
        assert events[-1]["ev"] == "server.stopped" and rt.failures == 1  # a stop is no failure

    asyncio.run(main())


def test_control_api_auth_register_lease_and_exited(tmp_path: Path):
    async def main() -> None:
        async with running(tmp_path, [spec(min_servers=1, max_servers=1)]) as h, model_server() as model:
            launch = (await until(lambda: h.backend.submitted, what="a submit"))[0]
            sid = launch.server_id
            assert launch.env[ENV_SERVER_ID] == sid and launch.env[ENV_TOKEN] == TOKEN
            status, _ = await h.post("/api/servers/register", {"server": sid, "url": model}, token="wrong")
            assert status == 401 and h.of("auth.refused", path="/api/servers/register")
            assert (await h.register("s99", model)) == (404, {"stop": True, "reason": "unknown server"})
            assert (await h.post("/api/servers/register", {"url": model}))[0] == 400
            assert (await h.register(sid, model)) == (200, {"lease_s": 30.0})
            await h.event("server.ready", server=sid)
            assert (await h.register(sid, model))[0] == 410
            assert await h.post(f"/api/servers/{sid}/lease", {"wait": 0.05}) == (200, {"stop": False})
            # A long poll answers as soon as the pool stops the server, not after its wait.
            t0 = time.monotonic()
            poll = asyncio.ensure_future(h.post(f"/api/servers/{sid}/lease", {"wait": 10}))
            await asyncio.sleep(0.1)
            h.balancer.pool.stop(h.balancer.pool.servers[sid], "idle")
            assert await poll == (200, {"stop": True}) and time.monotonic() - t0 < 5
            assert await h.post(f"/api/servers/{sid}/exited", {"code": 0, "why": "signal SIGTERM"}) == (
                200,
                {"ok": True},
            )
            stopped = await h.event("server.stopped", server=sid)
            assert stopped["reason"] == "model server exited with code 0 after signal SIGTERM"

    asyncio.run(main())


def test_calls_queue_as_demand_and_are_served_once_a_server_registers(tmp_path: Path):
    async def main() -> None:
        async with running(tmp_path, [spec(max_servers=2)]) as h, model_server() as model:
            call = asyncio.ensure_future(h.evaluate(3.0))
            launch = (await until(lambda: h.backend.submitted, what="a demand start"))[0]
            assert h.of("scale.decision", action="start", reason="demand")
            await h.register(launch.server_id, model)
            assert await call == (200, {"output": [[6.0]]})
            done = h.of("call.completed")[-1]
            assert done["server"] == launch.server_id and done["status"] == 200
            assert len(h.backend.submitted) == 1  # one waiting call, one server

    asyncio.run(main())


def test_failed_starts_back_off_then_hold_the_spec_and_fail_the_waiting_call(tmp_path: Path):
    async def main() -> None:
        async with running(tmp_path, [spec(max_start_failures=2)]) as h:
            call = asyncio.ensure_future(h.evaluate(1.0))
            pool = h.balancer.pool
            first = (await until(lambda: h.backend.submitted, what="first start"))[0]
            pool.job_ended(first.server_id, "exit 1", True)
            second = (await until(lambda: h.backend.submitted[1:], what="second start after back-off"))[0]
            gap = h.of("server.requested", server=second.server_id)[0]["m"] - h.of("server.failed")[0]["m"]
            assert gap >= 1.0  # start_backoff_s(1)
            pool.job_ended(second.server_id, "exit 1", True)
            held = await h.event("spec.held", spec="t")
            assert held["failures"] == 2
            status, body = await call
            assert status == 503 and "failed to start 2 times" in body["error"]["message"]
            assert (await h.get("/api/status"))["held"] == {"t": "server 't' failed to start 2 times: exit 1"}
            assert len(h.backend.submitted) == 2

    asyncio.run(main())


def test_a_failing_scaler_pass_is_journaled_once_shown_in_status_and_recovers(tmp_path: Path):
    async def main() -> None:
        broken = [True]

        def flaky(limits, observed, now):
            if broken[0]:
                raise RuntimeError("boom")
            return decide(limits, observed, now)

        async with running(tmp_path, [spec(min_servers=1)]) as h:
            h.balancer.scaler.policy = flaky
            err = await h.event("balancer.error")
            assert (err["where"], err["error"]) == ("scaler", "RuntimeError: boom")
            await until(lambda: h.balancer.scaler.errors >= 3, what="several failing passes")
            scaler = (await h.get("/api/status"))["scaler"]
            assert scaler["ok"] is False and scaler["error"] == "RuntimeError: boom"
            assert len(h.of("balancer.error")) == 1  # the same error is not journaled every pass
            broken[0] = False
            await until(lambda: h.backend.submitted, what="min_servers start after recovery")
            assert (await h.get("/api/status"))["scaler"]["ok"] is True

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_a_server_drains_before_its_time_limit_is_replaced_and_loses_no_call(tmp_path: Path):
    async def main() -> None:
        async with (
            running(tmp_path, [spec(min_servers=1, max_servers=1)], backend={"time_limit_margin_s": 30}) as h,
            model_server(TEST_DELAY="400") as slow,
            model_server() as fresh,
        ):
            s1 = (await until(lambda: h.backend.submitted, what="min_servers start"))[0].server_id
            await h.register(s1, slow)
            await h.event("server.ready", server=s1)
            call = asyncio.ensure_future(h.evaluate(1.0))
            await h.event("call.dispatched", server=s1)
            h.balancer.pool.job_deadline(s1, time.time() + 29)  # inside the 30 s margin
            await h.event("server.draining", server=s1)
            s2 = (await until(lambda: h.backend.submitted[1:], what="the replacement"))[0].server_id
            assert h.of("server.requested", server=s2)[0]["reason"] == "replace"
            assert await call == (200, {"output": [[2.0]]})  # the draining server finished its call
            stopping = await h.event("server.stopping", server=s1)
            assert stopping["reason"] == "time limit ahead"
            await h.register(s2, fresh)
            assert await h.evaluate(2.0) == (
                200,
                {"output": [[4.0]]},
            )
            assert h.of("call.completed")[-1]["server"] == s2
            assert not h.of("call.failed") and len(h.of("server.requested")) == 2

    asyncio.run(main())


def test_refused_authentications_are_journaled_with_a_count_per_interval(tmp_path: Path, monkeypatch):
    from balancer.control import api as control

    monkeypatch.setattr(control, "AUTH_LOG_S", 0.5)

    async def main() -> None:
        async with running(tmp_path, [spec()]) as h:
            for _ in range(50):
                assert (await h.post("/api/servers/s1/lease", {"wait": 0}, token="wrong"))[0] == 401
            await until(lambda: sum(e["count"] for e in h.of("auth.refused")) == 50, what="all counted")
            assert 1 <= len(h.of("auth.refused")) <= 10  # not 50 lines

    asyncio.run(main())
