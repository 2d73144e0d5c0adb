"""Hostile input at the HTTP edge, in-process (issue 21, items 2, 5, 6): header and body limits cut
a request off after about the limit's bytes (not after the client's last byte), client input is
echoed at a bounded length, and invalid Unicode or a handler's bug never give an unjournaled 500."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from balancer.http.connection import HttpProtocol
from balancer.http.messages import HttpLimits, Reply, Request, error_reply, json_reply
from balancer.http.router import Router
from balancer.http.server import FrontServer
from balancer.observe.journal import Journal, read_journal
from tests.fakes import running, until

SPEC = {"name": "t", "command": ["true"], "models": ["forward"]}
MiB = 1024 * 1024
READ_BUF = 256 * 1024  # the frontend's receive buffer (http.buffers): what one read can bring


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Bytes handed to the frontend's protocols while they still read (the parser saw them)."""
    seen = {"bytes": 0}
    orig = HttpProtocol.data_received

    def counting(self: HttpProtocol, data: memoryview) -> None:
        if not self._done_reading:
            seen["bytes"] += len(data)
        orig(self, data)

    monkeypatch.setattr(HttpProtocol, "data_received", counting)
    return seen


def _flood(port: int, head: bytes, filler: bytes, total: int) -> tuple[bytes, int]:
    """In a thread (blocking socket, so the event loop's CPU time is the server's alone): send
    ``head``, then ``filler`` until ``total`` bytes or the server closes; (its answer, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(30)
        s.sendall(head)
        try:
            while sent < total:
                s.sendall(filler)
                sent += len(filler)
        except OSError:
            pass  # the server answered and closed while we were still sending
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass  # reset: what arrived before it is what we keep
    return out, sent


async def _attack(port: int, head: bytes, filler: bytes, total: int) -> dict[str, Any]:
    """Run ``_flood`` and measure this process's event-loop thread (the balancer's) meanwhile."""
    proc = psutil.Process()
    rss0, cpu0 = proc.memory_info().rss, time.thread_time()
    out, sent = await asyncio.to_thread(_flood, port, head, filler, total)
    return {
        "out": out,
        "sent": sent,
        "cpu_s": time.thread_time() - cpu0,
        "rss_growth": proc.memory_info().rss - rss0,
    }


def _error(out: bytes) -> tuple[int, dict[str, Any]]:
    assert out, "no answer before the client gave up"
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)["error"]


# -- item 2: limits while parsing ---------------------------------------------------------------------
def test_an_endless_header_line_is_cut_off_after_about_the_limit_on_both_listeners(
    tmp_path: Path, delivered: dict[str, int]
) -> None:
    """One 64 MiB header line (before: buffered whole, its CPU cost growing faster than its size)."""
    head = b"GET /Info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
    figures = []

    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            lim = h.balancer.front.limits
            bound = lim.max_url + lim.max_header_bytes + 4096 + 2 * READ_BUF
            for url in (h.url, h.control_url):
                delivered["bytes"] = 0
                port = int(url.rsplit(":", 1)[1])
                m = await _attack(port, head, b"a" * 65536, 64 * MiB)
                status, err = _error(m["out"])
                assert status == 431 and err["type"] == "InvalidInput", m["out"][:300]
                assert len(m["out"]) < 1000  # the header is not echoed
                assert delivered["bytes"] <= bound, delivered
                assert m["cpu_s"] < 1.0 and m["rss_growth"] < 32 * MiB, m | {"out": None}
                figures.append((url, delivered["bytes"], m["sent"], m["cpu_s"], m["rss_growth"]))
            # The listener serves normally afterwards.
            async with h.http.get(h.url + "/Info") as r:
                assert r.status == 200

    asyncio.run(main())
    print("431 after (url, bytes parsed, bytes sent, cpu s, rss growth):", figures)


def test_many_header_lines_under_the_per_line_limit_still_get_431_early(delivered: dict[str, int]) -> None:
    """Small header lines, endlessly: the line count (100) cuts them off, not the client."""

    async def main() -> None:
        front = FrontServer(Router(), HttpLimits())
        port = await front.listen("127.0.0.1", 0)
        try:
            m = await _attack(port, b"GET / HTTP/1.1\r\n", b"X-A: b\r\n" * 4096, 16 * MiB)
            assert _error(m["out"])[0] == 431 and delivered["bytes"] <= 2 * READ_BUF
        finally:
            await front.close()

    asyncio.run(main())


def test_a_chunked_body_over_the_limit_gets_413_before_it_is_all_sent(delivered: dict[str, int]) -> None:
    """Before: the balancer drained a chunked body to its end and only then answered 413."""
    seen: list[Request] = []

    async def handler(req: Request) -> Reply:
        seen.append(req)
        return error_reply("InvalidInput", "too large", 413) if req.too_large else json_reply({})

    async def main() -> None:
        r = Router()
        r.add("POST", "/Evaluate", handler)
        front = FrontServer(r, HttpLimits(max_body=1 * MiB))
        port = await front.listen("127.0.0.1", 0)
        try:
            head = b"POST /Evaluate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"  # 64 KiB chunks
            m = await _attack(port, head, chunk, 64 * MiB)
            assert _error(m["out"])[0] == 413
            assert delivered["bytes"] <= 1 * MiB + 2 * READ_BUF, delivered
            assert [q.too_large for q in seen] == [True]  # through the handler: journaled
        finally:
            await front.close()

    asyncio.run(main())


# -- item 5: bounded echoes ---------------------------------------------------------------------------
async def _tab_snapshot(h: Any) -> bytes:
    """The first message of a new dashboard tab (its snapshot), raw."""
    async with h.http.get(h.url + "/dashboard/events") as r:
        async for line in r.content:
            if line.startswith(b"data: "):
                return bytes(line)
    raise AssertionError("no snapshot")


def test_a_huge_model_name_is_echoed_cut_in_the_answer_the_journal_and_the_dashboard(tmp_path: Path) -> None:
    """A 32 MiB name (before: a 32 MiB answer, 64 MiB of journal), then 25 names of 4 MiB with a tab
    open (before: +224 MB of balancer memory and a 31 MiB snapshot for a new tab)."""
    journal = Journal(tmp_path / "journal.jsonl")

    async def main() -> None:
        async with running(tmp_path, [SPEC], setup=lambda b: b.bus.subscribe(journal)) as h:
            body = orjson.dumps({"name": "m" * (32 * MiB), "input": [[1.0]]})
            async with h.http.post(h.url + "/Evaluate", data=body) as r:
                answer = await r.read()
            assert r.status == 400 and orjson.loads(answer)["error"]["type"] == "ModelNotFound"
            assert len(answer) < 4096 and ("m" * 200 + "...") in answer.decode()
            lines = (tmp_path / "journal.jsonl").read_bytes().splitlines()
            assert lines and max(len(x) for x in lines) < 4096, max(len(x) for x in lines)
            print(f"32 MiB name: answer {len(answer)} B, longest journal line {max(len(x) for x in lines)} B")

            tab = await h.http.get(h.url + "/dashboard/events")  # a tab stays open meanwhile
            try:
                await until(lambda: h.balancer.dashboard.feed.status()["tabs"] == 1, 5, "tab open")
                proc = psutil.Process()
                rss0 = proc.memory_info().rss
                for i in range(25):
                    body = orjson.dumps({"name": chr(97 + i) * (4 * MiB), "input": [[1.0]]})
                    async with h.http.post(h.url + "/Evaluate", data=body) as r:
                        assert r.status == 400 and len(await r.read()) < 4096
                del body
                growth = proc.memory_info().rss - rss0
                snapshot = await _tab_snapshot(h)
                print(f"rss growth, 25 names of 4 MiB: {growth / MiB:.1f} MiB; snapshot {len(snapshot)} B")
                assert growth < 48 * MiB and len(snapshot) < 256 * 1024
            finally:
                tab.close()

    asyncio.run(main())
    journal.close()


# -- item 6: invalid Unicode and 500s -----------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "\\ud800", "input": [[1.0]]}',  # an escaped lone surrogate
        b'{"name": "forward", "input": [[1.0]], "config": {"k": "\\udc00"}}',  # in the config
        b'{"name": "\xed\xa0\x80", "input": [[NaN]]}',  # its UTF-8-like bytes, with a NaN (stdlib path)
    ],
)
def test_a_lone_surrogate_gets_400_naming_it_and_a_journal_line(tmp_path: Path, body: bytes) -> None:
    """Before: 500 with no journal line (30,000 of 30,000)."""

    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            for op in ("Evaluate", "InputSizes"):
                async with h.http.post(h.url + "/" + op, data=body) as r:
                    status, answer = r.status, orjson.loads(await r.read())
                assert status == 400, answer
                assert answer["error"]["type"] == "InvalidInput" and "surrogate" in answer["error"]["message"]
                (failed,) = await until(lambda: h.of("call.failed", status=400), 5, "call.failed")
                assert "surrogate" in failed["reason"] and h.of("call.received", call=failed["call"])
                h.events.clear()

    asyncio.run(main())


def test_a_500_is_always_journaled_rate_limited(tmp_path: Path) -> None:
    """A handler's bug: its 500 (readable error JSON) and a ``balancer.error`` line, on either
    listener, one line for a flood with the count (the rest flushed at the stop)."""

    async def boom(req: Request) -> Reply:
        raise RuntimeError("bug \ud800 " + "x" * 10000)  # even with an unencodable, huge message

    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            h.balancer.front.router.add("GET", "/boom", boom)
            h.balancer.control_front.router.add("GET", "/boom", boom)
            for url in (h.url, h.control_url):
                async with h.http.get(url + "/boom") as r:
                    answer = await r.read()
                    assert r.status == 500 and len(answer) < 1000
                    assert orjson.loads(answer)["error"]["type"] == "InternalError"
            (err,) = await until(lambda: h.of("balancer.error", where="http"), 5, "balancer.error")
            assert "GET /boom" in err["error"] and err["count"] == 1 and len(err["error"]) < 1000
            for _ in range(20):
                async with h.http.get(h.url + "/boom") as r:
                    assert r.status == 500
            assert len(h.of("balancer.error", where="http")) == 1  # the flood waits for its interval
        assert sum(e["count"] for e in h.of("balancer.error", where="http")) == 22

    asyncio.run(main())


def test_the_journal_writes_a_line_with_a_lone_surrogate(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.jsonl")
    j({"ev": "x", "model": "a\ud800b", "list": ["\udc00"]})
    j.close()
    assert read_journal(tmp_path / "j.jsonl") == [{"ev": "x", "model": "a\\ud800b", "list": ["\\udc00"]}]
