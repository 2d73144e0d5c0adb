"""The pool grows with demand and shrinks back when idle, in-process: a real Balancer over the fake
scheduler (``Harness.serve`` plays the launchers), a real model server, and a movable clock, so
that an idle timeout passes when the test says so rather than after a wait."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.fakes import model_server, running, until
from tests.helpers import test_model_spec


def test_idle_servers_stop_down_to_min(tmp_path: Path):
    skew = [0.0]  # the pool's and scaler's clock runs ahead by this much

    def clock() -> float:
        return time.monotonic() + skew[0]

    # 12 calls at 100 ms on 6 client connections: longer than a (here instant) start, so demand grows
    # the pool.
    spec = test_model_spec(models=["forward"], min_servers=1, max_servers=3, idle_timeout_s=0.5)

    async def main() -> None:
        async with model_server(TEST_DELAY="100") as m, running(tmp_path, [spec], clock=clock) as h:
            h.serve(m)
            gate = asyncio.Semaphore(6)

            async def call() -> tuple[int, object]:
                async with gate:
                    return await h.evaluate(1.0)

            answers = await asyncio.gather(*(call() for _ in range(12)))
            assert all(a == (200, {"output": [[2.0]]}) for a in answers)
            ready = len(h.of("server.ready"))
            assert ready >= 2  # demand grew the pool
            skew[0] += 1.0  # every server has now been idle for longer than idle_timeout_s
            await until(lambda: len(h.of("server.stopped")) == ready - 1, what="idle servers stopped")
            assert all(e["reason"] == "idle" for e in h.of("scale.decision") if e["action"] == "stop")
            assert await h.evaluate(1.0) == (200, {"output": [[2.0]]})  # the min_servers one still serves

    asyncio.run(main())
