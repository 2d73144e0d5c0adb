"""The dashboard in-process: its files and its event stream (the page in headless Chromium:
browser/test_dashboard_chromium)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from balancer.http.messages import HttpLimits, Stream, StreamOut
from balancer.http.router import Router
from balancer.http.server import FrontServer
from balancer.observe.events import Ev
from balancer.ops.feed import MAX_BACKLOG, Tab
from balancer.ops.views import cost, host_name
from tests.fakes import running, until

SPEC = {"name": "t", "command": ["true"], "models": ["forward"]}


async def _messages(resp: aiohttp.ClientResponse) -> Any:
    """The JSON messages of an event stream, one by one (comments and ``retry`` skipped)."""
    async for line in resp.content:
        if line.startswith(b"data: "):
            yield json.loads(line[6:])


def test_page_and_files_are_served_from_memory_with_a_strict_policy(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            async with h.http.get(h.url + "/dashboard") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
                assert r.headers["Cache-Control"] == "no-cache"
                page = await r.text()
            # Everything the page loads is ours, from this origin: nothing from a CDN.
            assert "http://" not in page and "https://" not in page
            for name, ctype in (
                ("dashboard.js", "text/javascript"),
                ("dashboard.css", "text/css"),
                ("vendor/uPlot.iife.min.js", "text/javascript"),
                ("vendor/uPlot.min.css", "text/css"),
                ("favicon.svg", "image/svg+xml"),
            ):
                async with h.http.get(f"{h.url}/dashboard/{name}") as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith(ctype), name
                    assert "Content-Security-Policy" in r.headers
            for bad in ("nope.js", "../app.py", "..%2Fapp.py"):
                async with h.http.get(f"{h.url}/dashboard/{bad}") as r:
                    assert r.status == 404, bad

    asyncio.run(main())


def test_feed_subscribes_only_while_a_tab_is_open_and_coalesces_calls_into_ticks(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            bus, feed = h.balancer.bus, h.balancer.dashboard.feed
            idle_subs = len(bus._subs)
            assert not feed.status()["subscribed"]
            tabs = [await h.http.get(h.url + "/dashboard/events") for _ in range(2)]
            try:
                assert tabs[0].headers["Content-Type"] == "text/event-stream"
                streams = [_messages(t) for t in tabs]
                first = [await s.__anext__() for s in streams]
                assert [m["type"] for m in first] == ["snapshot", "snapshot"]
                assert {"servers", "queues", "decisions", "failures", "timeline", "forecast"} <= set(first[0])
                # Two tabs, one subscriber.
                assert len(bus._subs) == idle_subs + 1 and feed.status()["tabs"] == 2
                # 50 answered calls become per-second counts and a latency, not 50 messages.
                for call in range(1, 51):
                    bus.emit(Ev.CALL_RECEIVED, call=call, op="Evaluate", model="forward", bytes=10)
                    bus.emit(Ev.CALL_COMPLETED, call=call, server="s1", status=200, bytes=10, service_s=0.002)
                bus.emit(Ev.CALL_RECEIVED, call=51, op="Evaluate", model="forward", bytes=10)
                bus.emit(Ev.CALL_FAILED, call=51, status=503, reason="ServiceUnavailable: test")
                seen, failed, ticks = 0, 0, 0
                while seen < 50 or not failed:
                    m = await asyncio.wait_for(streams[0].__anext__(), 5)
                    assert m["type"] == "tick"
                    ticks += 1
                    seen += m["point"][1]
                    failed += m["point"][2]
                    assert m["window"]["p50"] is None or m["window"]["p50"] < 0.1
                assert (seen, failed) == (50, 1) and ticks <= 3
            finally:
                for t in tabs:
                    t.close()
            await until(lambda: feed.status()["tabs"] == 0, 5, "tabs gone")
            assert len(bus._subs) == idle_subs and not feed.status()["subscribed"]
            assert feed._timer is None and not feed._open
            # A tab left open does not hold up the shutdown (the harness shuts down now).
            await h.http.get(h.url + "/dashboard/events")
            await until(lambda: feed.status()["tabs"] == 1, 5, "tab open")

    asyncio.run(main())


def test_a_stream_answer_owns_its_connection_until_the_peer_leaves() -> None:
    """Frontend: no Content-Length, Connection: close, pipelined requests after it dropped, and
    ``closed`` called once when the peer goes; FrontServer.close ends open streams at once."""

    class Ticks(Stream):
        def __init__(self) -> None:
            self.out: StreamOut | None = None
            self.closes = 0

        def open(self, out: StreamOut) -> None:
            self.out = out
            out.write(b"data: 1\n\n")

        def closed(self) -> None:
            self.closes += 1

    async def main() -> None:
        streams: list[Ticks] = []

        async def handler(request: Any) -> Stream:
            streams.append(Ticks())
            return streams[-1]

        r = Router()
        r.add("GET", "/s", handler)
        front = FrontServer(r, HttpLimits())
        port = await front.listen("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\nGET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length" not in head.lower()
        assert b"Content-Type: text/event-stream" in head and b"Connection: close" in head
        assert await reader.readuntil(b"\n\n") == b"data: 1\n\n"
        assert len(streams) == 1  # the pipelined second request was dropped
        assert streams[0].out is not None and streams[0].out.write(b"data: 2\n\n")
        assert await reader.readuntil(b"\n\n") == b"data: 2\n\n"
        writer.close()
        await until(lambda: streams[0].closes == 1, 5, "closed() after the peer left")
        assert not streams[0].out.write(b"data: 3\n\n") and not front.conns
        # Shutdown with a stream open: closed at once, closed() called.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"data: 1\n\n")
        await front.stop_listening()
        await front.close()
        assert await reader.read() == b""
        await until(lambda: streams[1].closes == 1, 5, "closed() at shutdown")
        writer.close()

    asyncio.run(main())


def test_a_tab_that_reads_too_slowly_is_closed() -> None:
    class Out:
        def __init__(self) -> None:
            self.backlog, self.closed, self.data = 0, False, b""

        def write(self, data: bytes) -> bool:
            self.data += data
            return True

        def buffered(self) -> int:
            return self.backlog

        def close(self) -> None:
            self.closed = True

    class NoFeed:
        def join(self, tab: Tab) -> None: ...
        def leave(self, tab: Tab) -> None: ...

    tab = Tab(NoFeed())  # type: ignore[arg-type]
    out = Out()
    tab.open(out)  # type: ignore[arg-type]
    tab.send(b"data: 1\n\n")
    assert out.data.endswith(b"data: 1\n\n") and not out.closed
    out.backlog = MAX_BACKLOG + 1
    tab.send(b"data: 2\n\n")
    assert out.closed and b"data: 2" not in out.data


def test_the_page_counts_failed_calls_cost_and_badges_and_status_names_the_stores(tmp_path: Path) -> None:
    """A tab's figures that the pool alone forgets: failed calls (not failure lines), the hours of
    servers gone, each spec's badges; ``/api/status`` names the profile and history stores."""

    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            bus, pool = h.balancer.bus, h.balancer.pool
            async with h.http.get(h.url + "/dashboard/events") as tab:
                stream = _messages(tab)
                snap = await stream.__anext__()
                badges = {"held": False, "held_reason": None, "paused": False, "removed": False}
                assert snap["specs"]["t"] == {
                    **badges,
                    "models": ["forward"],
                    "max": 4,
                    "cpus": 1,
                    "workload": None,
                }
                assert snap["totals"]["failed_calls"] == 0 and snap["totals"]["cost"]["server_h"] == 0
                for call in range(3):  # three failed calls in one second: one line, three calls
                    bus.emit(Ev.CALL_RECEIVED, call=call, op="Evaluate", model="forward", bytes=10)
                    bus.emit(Ev.CALL_FAILED, call=call, status=503, reason="ServiceUnavailable: test")
                pool.specs["t"].paused = True
                lines: list[Any] = []
                while True:
                    m = await asyncio.wait_for(stream.__anext__(), 5)
                    lines += [e for e in m["events"] if e["kind"] == "failure"]
                    if m["totals"]["failed_calls"] == 3 and lines:
                        break
                assert [f["what"] for f in lines] == ["3 call(s) failed"]
                assert m["specs"]["t"]["paused"] is True
            # Cost: the servers gone ran 2 h of spec t (1 CPU each); a live server adds its own time.
            pool.gone_s["t"] = 7200.0
            assert cost(pool, pool.clock()) == {
                "server_h": 2.0,
                "core_h": 2.0,
                "specs": {"t": {"server_h": 2.0, "core_h": 2.0}},
            }
            stores = (await h.get("/api/status"))["stores"]
            assert stores["profiles"].endswith("profiles.sqlite")
            assert stores["history"].endswith("capacity.sqlite")

    asyncio.run(main())


def test_loopback_hosts_read_as_one_name() -> None:
    assert [host_name(h) for h in ("localhost", "127.0.0.1", "::1", "node12", None)] == [
        "localhost", "localhost", "localhost", "node12", None
    ]  # fmt: skip
