"""The hand-off of a freed slot to the oldest waiting call, when the server drains in between: the
dispatcher resolves the waiter's future at once, the waiter runs later (calls/path.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.fakes import model_server, running, until

SPEC = {"name": "t", "command": [sys.executable, "-c", "pass"], "models": ["forward"]}


def test_a_slot_handed_over_from_a_server_drained_meanwhile_is_not_used(tmp_path: Path):
    """Two busy servers (concurrency 1), a third call waits. The first server's call completes and
    its slot is handed to the waiter; in that same moment, before the waiter runs, the server drains
    (a reload removed its spec, the operator drained it). The waiter must not dispatch to it: it
    waits again, first in line, and the other server takes it."""

    async def main() -> None:
        spec = {**SPEC, "min_servers": 2, "max_servers": 2}
        async with model_server(TEST_DELAY="300") as slow, running(tmp_path, [spec]) as h:
            h.serve(slow)
            await until(lambda: len(h.of("server.ready")) == 2, what="two servers ready")
            a, b = (asyncio.ensure_future(h.evaluate(float(x))) for x in (1, 2))
            await until(lambda: len(h.of("call.dispatched")) == 2, what="both servers busy")
            first = h.of("call.dispatched")[0]["server"]
            pool = h.balancer.pool

            def drain_on_completion(e: dict) -> None:
                if e.get("server") == first and not h.of("server.draining"):
                    pool.drain(pool.servers[first], "drained by operator")

            h.balancer.bus.subscribe(drain_on_completion, only=frozenset({"call.completed"}))
            c = asyncio.ensure_future(h.evaluate(3.0))
            assert [await x for x in (a, b, c)] == [(200, {"output": [[2.0 * x]]}) for x in (1, 2, 3)]
            drained = h.of("server.draining")
            assert [e["server"] for e in drained] == [first]
            cut = h.events.index(drained[0])
            late = [e for e in h.events[cut:] if e["ev"] == "call.dispatched" and e["server"] == first]
            assert late == [], late

    asyncio.run(main())
