"""The HTTP frontend in-process, over raw sockets: answers in request order, a malformed request's
400 only after the answers it follows, 413 at once from an oversized Content-Length."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from balancer.frontend import FrontServer, Reply, Request, Router, error_reply, json_reply
from tests.fakes import running

BODY = b'{"name": "forward", "input": [[1.0]]}'
GOOD = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


async def slow(req: Request) -> Reply:
    if req.too_large:
        return error_reply("InvalidInput", "too large", 413)
    await asyncio.sleep(0.3)  # a call in flight
    return json_reply({"n": len(req.body)})


async def with_front(test: Callable[[int], Awaitable[None]], max_body: int = 1024) -> None:
    r = Router()
    r.add("POST", "/slow", slow)
    front = FrontServer(r, max_body)
    port = await front.listen("127.0.0.1", 0)
    try:
        await test(port)
    finally:
        await front.close()


async def exchange(port: int, *sends: bytes, gap: float = 0.0) -> tuple[bytes, float]:
    """Send the pieces (``gap`` s apart), read until the server closes; (bytes, seconds taken)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for piece in sends:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(gap)
    out = await asyncio.wait_for(reader.read(), 10)  # EOF: the server closed
    writer.close()
    return out, time.monotonic() - t0


def statuses(out: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", out)


def test_a_malformed_request_never_costs_the_answers_before_it():
    async def main(port: int) -> None:
        # Pipelined in one packet: two good requests, then garbage.
        out, _ = await exchange(port, GOOD + GOOD + b"HELLO WORLD\r\n\r\n")
        assert statuses(out) == [b"200", b"200", b"400"] and out.count(b'{"n":37}') == 2
        # Garbage sent while the first request is in flight.
        out, _ = await exchange(port, GOOD, b"GARBAGE\r\n\r\n", gap=0.1)
        assert statuses(out) == [b"200", b"400"] and b'"InvalidInput"' in out

    asyncio.run(with_front(main))


def test_an_oversized_content_length_is_answered_at_once():
    huge = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"

    async def main(port: int) -> None:
        # No body follows the header: the answer must not wait for it.
        out, took = await exchange(port, huge)
        assert statuses(out) == [b"413"] and took < 5
        # After a good request on the same connection: its answer first.
        out, _ = await exchange(port, GOOD + huge + b"x" * 5000)
        assert statuses(out) == [b"200", b"413"]

    asyncio.run(with_front(main))


def test_the_balancer_journals_an_early_413(tmp_path: Path):
    spec = {"name": "t", "command": ["true"], "models": ["forward"]}

    async def main() -> None:
        async with running(tmp_path, [spec]) as h:  # max_body_mb 64
            port = int(h.url.rsplit(":", 1)[1])
            head = b"POST /Evaluate HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
            out, took = await exchange(port, head)
            assert statuses(out) == [b"413"] and took < 5
            (failed,) = h.of("call.failed")
            assert failed["status"] == 413 and h.of("call.received", call=failed["call"])

    asyncio.run(main())
