"""The call path's fast way through (calls/path.py ``evaluate_fast``): no task per call, queued calls
handed their slot by callback, and the same behaviour as the coroutine path where it matters: order,
retries, rejections, the journal."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson

from tests.fakes import model_server, running, until

SPEC = {"name": "t", "command": [sys.executable, "-c", "pass"], "models": ["forward"]}


def test_queued_calls_go_out_in_arrival_order_without_a_task_each(tmp_path: Path):
    """One server, one slot, 30 calls at once: every call is answered, the waiting ones queue and are
    dispatched in the order they arrived (FIFO), and no call made a task of its own once warm."""

    async def main() -> None:
        spec = {**SPEC, "min_servers": 1, "max_servers": 1}
        async with model_server(TEST_DELAY="20") as slow, running(tmp_path, [spec]) as h:
            h.serve(slow)
            assert await h.evaluate(0.5) == (200, {"output": [[1.0]]})  # warms flags and sizes
            calls = h.balancer.calls
            spawned: list[object] = []
            real_spawn = calls._spawn
            calls._spawn = lambda coro: (spawned.append(coro), real_spawn(coro))  # type: ignore[method-assign]
            answers = await asyncio.gather(*(h.evaluate(float(i)) for i in range(30)))
            assert answers == [(200, {"output": [[2.0 * i]]}) for i in range(30)]
            assert spawned == []  # each call went out from a callback: the frontend's or the hand-off's
            queued = {e["call"] for e in h.of("call.queued")}
            assert len(queued) >= 20  # most of them waited for the one slot
            received = [e["call"] for e in h.of("call.received") if e["call"] in queued]
            dispatched = [e["call"] for e in h.of("call.dispatched") if e["call"] in queued]
            assert dispatched == received  # first come, first served
            # In the journal's order a call completes before the next one is dispatched to its
            # server: the slot is handed over (and the next call sent) in the release that follows.
            busy = 0
            for e in h.events:
                busy += (e["ev"] == "call.dispatched") - (e["ev"] == "call.completed")
                assert busy <= 1, e
            done = h.of("call.completed")[-1]
            assert done["op"] == "Evaluate" and done["model"] == "forward"
            assert done["makespan_s"] >= done["service_s"] > 0 and done["queue_s"] >= 0

    asyncio.run(main())


def test_a_fast_call_whose_connection_breaks_is_retried(tmp_path: Path):
    """The connection of a call in flight (sent by callback, no task) breaks: the call is retried,
    answered, and the journal says so (requeued, then dispatched as attempt 2)."""

    async def main() -> None:
        spec = {**SPEC, "min_servers": 1, "max_servers": 1}
        async with model_server(TEST_DELAY="300") as slow, running(tmp_path, [spec]) as h:
            h.serve(slow)
            assert await h.evaluate(1.0) == (200, {"output": [[2.0]]})  # warm: the next one is fast
            call = asyncio.ensure_future(h.evaluate(3.0))
            received = await until(lambda: h.of("call.received")[1:], what="the second call")
            cid = received[0]["call"]
            first = await h.event("call.dispatched", call=cid)
            server = h.balancer.pool.servers[first["server"]]
            assert server.upstream is not None
            server.upstream.close()  # aborts the busy connection, as a vanished peer would break it
            assert await asyncio.wait_for(call, 30) == (200, {"output": [[6.0]]})
            assert [e["attempt"] for e in h.of("call.dispatched", call=cid)] == [1, 2]
            assert len(h.of("call.requeued", call=cid)) == 1
            assert h.of("call.completed", call=cid)[0]["status"] == 200

    asyncio.run(main())


def test_pipelined_rejections_are_answered_in_order_without_recursion(tmp_path: Path):
    """2,000 bad calls pipelined on one connection (each rejected at once by the fast path) and one
    good one: 2,001 answers in order on the same connection."""

    async def main() -> None:
        spec = {**SPEC, "min_servers": 1, "max_servers": 1}
        async with model_server() as m, running(tmp_path, [spec]) as h:
            h.serve(m)
            assert await h.evaluate(1.0) == (200, {"output": [[2.0]]})
            host, port = h.url.removeprefix("http://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            bad = orjson.dumps({"name": "forward", "input": [[1.0, 2.0]]})  # wrong size: 400
            good = orjson.dumps({"name": "forward", "input": [[4.0]]})
            head = b"POST /Evaluate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
            writer.write(b"".join(head % len(bad) + bad for _ in range(2000)) + head % len(good) + good)
            await writer.drain()
            statuses = []
            for _ in range(2001):
                line = await asyncio.wait_for(reader.readline(), 30)
                statuses.append(int(line.split()[1]))
                length = 0
                while (hl := await reader.readline()) != b"\r\n":
                    if hl.lower().startswith(b"content-length:"):
                        length = int(hl.split(b":")[1])
                body = await reader.readexactly(length)
            assert statuses == [400] * 2000 + [200]
            assert orjson.loads(body) == {"output": [[8.0]]}
            writer.close()

    asyncio.run(main())
