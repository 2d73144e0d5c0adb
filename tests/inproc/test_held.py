"""A held spec (its starts kept failing) is never held forever and never keeps a call waiting:
it retries with a growing back-off and recovers, the operator can resume it, and calls queued
for it end with a 503 naming the reason as soon as no server can come."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from balancer.policy.rules import hold_retry_s
from tests.fakes import model_server, running, until

SPEC = {"name": "t", "command": [sys.executable], "models": ["forward"], "max_start_failures": 1}


def test_a_held_spec_retries_after_its_back_off_and_recovers(tmp_path: Path):
    skew = [0.0]  # the pool's and scaler's clock runs ahead by this much

    def clock() -> float:
        return time.monotonic() + skew[0]

    async def main() -> None:
        async with running(tmp_path, [SPEC], clock=clock) as h, model_server() as m:
            pool = h.balancer.pool
            call = asyncio.ensure_future(h.evaluate(1.0))
            first = (await until(lambda: h.backend.submitted, what="a start"))[0].server_id
            pool.job_ended(first, "killed from outside", True)
            await h.event("spec.held", spec="t")
            status, body = await call
            assert status == 503 and "killed from outside" in body["error"]["message"]
            assert (await h.evaluate(1.0))[0] == 503  # held: new calls fail at once
            wait = hold_retry_s(1)  # 8 s after the first failure
            skew[0] += wait - 1.5
            await asyncio.sleep(0.3)
            assert len(h.backend.submitted) == 1  # not yet
            skew[0] += 2.0
            retry = (await until(lambda: h.backend.submitted[1:], what="the retry"))[0].server_id
            assert h.of("server.requested", server=retry)[0]["reason"] == "retry"
            await h.register(retry, m)
            resumed = await h.event("spec.resumed", spec="t")
            assert resumed["reason"] == "a start succeeded"
            assert await h.evaluate(2.0) == (200, {"output": [[4.0]]})

    asyncio.run(main())


def test_the_operator_resumes_a_held_spec_at_once(tmp_path: Path):
    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h, model_server() as m:
            call = asyncio.ensure_future(h.evaluate(1.0))
            first = (await until(lambda: h.backend.submitted, what="a start"))[0].server_id
            h.balancer.pool.job_ended(first, "exit 1", True)
            await h.event("spec.held", spec="t")
            assert (await call)[0] == 503
            assert (await h.post("/api/specs/t/resume", {}, token="wrong"))[0] == 401
            assert (await h.post("/api/specs/nope/resume", {}))[0] == 404
            status, doc = await h.post("/api/specs/t/resume", {})
            assert (status, doc["resumed"]) == (200, True)
            assert (await h.event("spec.resumed", spec="t"))["reason"] == "operator"
            call = asyncio.ensure_future(h.evaluate(3.0))
            second = (await until(lambda: h.backend.submitted[1:], what="a start after resume"))[0].server_id
            await h.register(second, m)
            assert await call == (200, {"output": [[6.0]]})

    asyncio.run(main())


def test_calls_queued_for_a_held_spec_end_when_its_last_server_dies(tmp_path: Path):
    spec = {**SPEC, "min_servers": 1, "max_servers": 2}

    async def main() -> None:
        async with running(tmp_path, [spec]) as h, model_server(TEST_DELAY="2000") as m:
            pool = h.balancer.pool
            s1 = (await until(lambda: h.backend.submitted, what="min_servers start"))[0].server_id
            await h.register(s1, m)
            await h.event("server.ready", server=s1)
            busy = asyncio.ensure_future(h.evaluate(1.0))
            await h.event("call.dispatched", server=s1)
            queued = asyncio.ensure_future(h.evaluate(2.0))
            s2 = (await until(lambda: h.backend.submitted[1:], what="a demand start"))[0].server_id
            pool.job_ended(s2, "exit 1", True)
            await h.event("spec.held", spec="t")
            assert not queued.done()  # s1 still serves: the queued call keeps its place
            t0 = time.monotonic()
            pool.job_ended(s1, "node failure", True)
            status, body = await asyncio.wait_for(queued, 5)
            assert status == 503 and "failed to start 1 times" in body["error"]["message"]
            assert time.monotonic() - t0 < 5
            await busy

    asyncio.run(main())
