"""The HTTP frontend in-process, over raw sockets: answers in request order, a malformed request's
400 only after the answers it follows, 413 at once from an oversized Content-Length."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from balancer.http.messages import HttpLimits, Reply, Request, error_reply, json_reply
from balancer.http.router import Router
from balancer.http.server import FrontServer
from tests.fakes import running

BODY = b'{"name": "forward", "input": [[1.0]]}'
GOOD = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


async def slow(req: Request) -> Reply:
    if req.too_large:
        return error_reply("InvalidInput", "too large", 413)
    await asyncio.sleep(0.3)  # a call in flight
    return json_reply({"n": len(req.body)})


async def with_front(test: Callable[[int], Awaitable[None]], limits: HttpLimits | None = None) -> None:
    r = Router()
    r.add("POST", "/slow", slow)
    front = FrontServer(r, limits or HttpLimits(max_body=1024))
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
        try:
            writer.write(piece)
            await writer.drain()
        except ConnectionError:
            break  # the server answered and closed while we were still sending
        await asyncio.sleep(gap)
    try:
        out = await asyncio.wait_for(reader.read(), 10)  # EOF: the server closed
    except ConnectionError:
        out = bytes(reader._buffer)  # what arrived before our late writes broke the connection
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
            head = b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999999\r\n\r\n"
            out, took = await exchange(port, head)
            assert statuses(out) == [b"413"] and took < 5
            (failed,) = h.of("call.failed")
            assert failed["status"] == 413 and h.of("call.received", call=failed["call"])

    asyncio.run(main())


# -- bounds on what one client can make the frontend hold -------------------------------------------
def test_url_and_header_limits_answer_414_and_431_without_echoing():
    async def main(port: int) -> None:
        out, _ = await exchange(port, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert statuses(out) == [b"414"] and len(out) < 500
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(150))
        out, _ = await exchange(port, b"GET /slow HTTP/1.1\r\n" + many + b"\r\n")
        assert statuses(out) == [b"431"]
        out, _ = await exchange(port, b"GET /slow HTTP/1.1\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n")
        assert statuses(out) == [b"431"] and len(out) < 500
        out, _ = await exchange(port, b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert statuses(out) == [b"404"] and len(out) < 600  # the path is not echoed back in full

    asyncio.run(with_front(main))


def test_open_connections_are_capped():
    async def main(port: int) -> None:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        out, _ = await exchange(port, GOOD)  # the fourth
        assert statuses(out) == [b"503"] and b"too many open connections" in out
        held[0][1].close()
        await held[0][1].wait_closed()
        for _ in range(100):  # the server notices the close on its next loop pass
            out, _ = await exchange(port, GOOD.replace(b"Host: x", b"Host: x\r\nConnection: close"))
            if statuses(out) == [b"200"]:
                break
        assert statuses(out) == [b"200"]
        for _, w in held[1:]:
            w.close()

    asyncio.run(with_front(main, limits=HttpLimits(max_body=1024, max_connections=3)))


def test_idle_connections_close_and_dripping_requests_are_cut_but_steady_uploads_are_not():
    lim = HttpLimits(max_body=1 << 20, idle_timeout_s=0.6, rate_grace_s=0.6, min_rate=1000)
    body = b'{"pad": "' + b"x" * 3980 + b'"}'
    head = b"POST /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def main(port: int) -> None:
        # 4,000 bytes at ~4,000 B/s: longer than the idle timeout, never cut off.
        pieces = [head] + [body[i : i + 400] for i in range(0, len(body), 400)]
        out, took = await exchange(port, *pieces, gap=0.1)
        assert statuses(out) == [b"200"] and took > 0.9
        # 10 bytes every 0.2 s (50 B/s): cut off with 408 once the grace is over.
        drip = [head[i : i + 10] for i in range(0, len(head), 10)]
        out, took = await exchange(port, *drip, gap=0.2)
        assert statuses(out) == [b"408"] and took < 10
        # An idle keep-alive connection closes after the idle timeout.
        out, took = await exchange(port)
        assert out == b"" and 0.5 < took < 5

    asyncio.run(with_front(main, limits=lim))
