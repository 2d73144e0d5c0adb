"""Queued starts in the live pool (issue 20), in-process over the fake scheduler with a movable
clock: the start-up timeout counts from the job's start, a start queued too long or beyond what
admission allows now is withdrawn (its job cancelled, never a failed start), and a harvest start
reaches the backend as a preemptible launch."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from balancer.app import Balancer
from balancer.policy.types import ForecastView
from tests.fakes import Harness, in_loop, model_server, running, until

SPEC = {"name": "t", "command": [sys.executable], "models": ["forward"]}
NO_FORECAST = {"enabled": False, "collect": False}


class Clock:
    """The pool's and scaler's clock, ahead of the monotonic one by ``skew``."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


async def passes(h: Harness, n: int = 3) -> None:
    """Wait for ``n`` more scaling passes: what the scaler does with the state now has been done."""
    scaler = h.balancer.scaler
    target = scaler.passes + n
    await until(lambda: scaler.passes >= target, what=f"{n} scaling passes")


def stops(h: Harness, reason: str) -> list[str]:
    return [e["server"] for e in h.of("scale.decision", action="stop", reason=reason)]


@in_loop
async def test_the_start_up_timeout_counts_from_the_jobs_start_not_its_queue_wait(tmp_path: Path):
    clock = Clock()
    spec = {**SPEC, "min_servers": 1, "startup_timeout_s": 10.0}
    async with running(tmp_path, [spec], clock=clock, forecast=NO_FORECAST) as h:
        sid = (await until(lambda: h.backend.submitted, what="a start"))[0].server_id
        clock.skew += 600.0  # queued ten minutes: the job never started
        await passes(h)
        assert h.of("server.failed") == [] and h.backend.cancelled == []
        assert sid in h.balancer.pool.servers
        h.balancer.pool.job_started(sid, "7", "node1")  # the start-up timeout counts from here
        clock.skew += 6.0
        await passes(h)
        assert h.of("server.failed") == []
        clock.skew += 6.0  # 12 s after its job started, not ready: a failed start
        failed = await h.event("server.failed", server=sid)
        assert failed["reason"] == "startup timeout" and stops(h, "startup_timeout") == [sid]
        assert h.balancer.pool.specs["t"].failures == 1


@in_loop
async def test_registration_before_the_start_report_starts_the_clock_too(tmp_path: Path):
    async with (
        running(tmp_path, [{**SPEC, "min_servers": 1}], forecast=NO_FORECAST) as h,
        model_server() as m,
    ):
        sid = (await until(lambda: h.backend.submitted, what="a start"))[0].server_id
        assert h.balancer.pool.servers[sid].started_m is None  # queued
        await h.register(sid, m)  # the launcher is faster than the backend's next poll
        await h.event("server.ready", server=sid)
        assert h.balancer.pool.servers[sid].started_m is not None


@in_loop
async def test_a_start_queued_beyond_pending_timeout_is_cancelled_not_failed(tmp_path: Path):
    clock = Clock()
    spec = {**SPEC, "min_servers": 1, "pending_timeout_s": 300.0}
    async with running(tmp_path, [spec], clock=clock, forecast=NO_FORECAST) as h:
        h.end_on_stop()  # a cancelled job ends, as the scheduler's would
        first = (await until(lambda: h.backend.submitted, what="a start"))[0].server_id
        clock.skew += 301.0
        await h.event("server.stopped", server=first)
        assert stops(h, "pending timeout") == [first] and h.backend.cancelled[:1] == [first]
        assert h.of("server.failed") == [] and h.balancer.pool.specs["t"].failures == 0
        second = (await until(lambda: h.backend.submitted[1:], what="min_servers again"))[0].server_id
        assert second != first


def _forecast(b: Balancer, view: list[ForecastView]) -> None:
    b.scaler.forecast = lambda: view[0]  # the capacity service's view, as the test sets it


@in_loop
async def test_queued_starts_beyond_admission_are_withdrawn_when_the_capacity_goes(tmp_path: Path):
    view = [ForecastView(900.0, (10.0,))]  # 10 CPUs for us now
    spec = {**SPEC, "min_servers": 6, "max_servers": 8, "backlog": 1}
    setup: Any = lambda b: _forecast(b, view)  # noqa: E731
    forecast = {**NO_FORECAST, "policy": "forecast"}  # its admission rule (the default is demand)
    async with running(tmp_path, [spec], setup=setup, forecast=forecast) as h:
        h.end_on_stop()
        await until(lambda: len(h.backend.submitted) == 6, what="six starts at once, beyond the backlog")
        order = [launch.server_id for launch in h.backend.submitted]
        # The capacity is gone: min_pending (1) plus the backlog (1) stay queued, the newest 4 go.
        view[0] = ForecastView(900.0, (0.0,))
        await until(lambda: len(stops(h, "withdrawn beyond admission")) == 4, what="withdrawals")
        assert set(stops(h, "withdrawn beyond admission")) == set(order[2:])
        await until(lambda: set(h.backend.cancelled) == set(order[2:]), what="their jobs cancelled")
        await passes(h)
        assert len(h.backend.submitted) == 6  # nothing queued again in their place
        assert h.of("server.failed") == [] and h.balancer.pool.specs["t"].failures == 0
        assert set(h.balancer.pool.servers) == set(order[:2])


@in_loop
async def test_harvest_submits_preemptible_launches_and_journals_them(tmp_path: Path):
    forecast = {**NO_FORECAST, "policy": "harvest"}
    async with running(tmp_path, [{**SPEC, "min_servers": 2}], forecast=forecast) as h:
        launches = await until(lambda: h.backend.submitted[1:] and h.backend.submitted, what="two starts")
        assert [launch.preemptible for launch in launches] == [True, True]
        (d,) = h.of("scale.decision", action="start")
        assert (d["reason"], d["count"], d["preemptible"]) == ("min_servers", 2, True)
        assert all(s.preemptible for s in h.balancer.pool.servers.values())


@in_loop
async def test_hybrid_withdraws_harvested_starts_first_counting_the_floors_too(tmp_path: Path):
    view = [ForecastView(900.0, (10.0,))]  # 10 CPUs for us now
    spec = {**SPEC, "min_servers": 6, "max_servers": 8, "backlog": 2, "floor": 2}
    forecast = {**NO_FORECAST, "policy": "hybrid"}
    setup: Any = lambda b: _forecast(b, view)  # noqa: E731
    async with running(tmp_path, [spec], setup=setup, forecast=forecast) as h:
        h.end_on_stop()
        await until(lambda: len(h.backend.submitted) == 6, what="the floor's two and four harvested")
        launches = list(h.backend.submitted)
        normal = {x.server_id for x in launches if not x.preemptible}
        harvested = [x.server_id for x in launches if x.preemptible]
        assert len(normal) == 2 and len(harvested) == 4
        # The capacity is gone: 1 admitted + backlog 2 may stay queued, the floor's normal starts
        # included; the 3 to go are harvested ones, so the floor keeps its place in the queue.
        view[0] = ForecastView(900.0, (0.0,))
        await until(lambda: len(stops(h, "withdrawn beyond admission")) == 3, what="withdrawals")
        gone = set(stops(h, "withdrawn beyond admission"))
        assert gone < set(harvested) and not gone & normal
        await passes(h)
        assert len(h.backend.submitted) == 6 and len(stops(h, "withdrawn beyond admission")) == 3
        assert normal < set(h.balancer.pool.servers) and len(h.balancer.pool.servers) == 3
        assert h.of("server.failed") == []
