"""Scale: 2,000 ready servers and 100,000 calls queued at once in one balancer.

The production Balancer (pool, dispatcher, call path, control API, scaler, journal) runs in this
process over a fake scheduler. 2,000 fake UM-Bridge servers listen on loopback ports in two helper
processes (asyncio + llhttp, an Evaluate answers after ``--service-ms`` +-50 %: a model's compute
time). The scaler requests the 2,000 servers (min_servers), each is registered through the
control API, checked by the balancer's own /Info probe and becomes ready. Then 100,000 Evaluate
calls enter the call path at once, after one call that warms the metadata cache (in-process:
the frontend's per-connection cost is what ``bench/overhead.py`` measures; 100k client sockets
do not fit a 2-core test machine).

Printed: dispatch latency at the balancer for queued calls (the dispatcher hands a freed slot to
the oldest waiter -> that call's request is written to the server's socket) p50/p99; the time of
one scaler pass with 2,000 servers and the queue full; the balancer process's peak RSS.
Targets: dispatch p99 < 1 ms, scaler pass < 5 ms, RSS < 500 MB.

    python bench/scale.py [--servers 2000] [--calls 100000] [--service-ms 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INFO = b'{"protocolVersion": 1.0, "models": ["forward"]}'
ANSWERS = {
    b"/Info": INFO,
    b"/InputSizes": b'{"inputSizes": [1]}',
    b"/OutputSizes": b'{"outputSizes": [1]}',
    b"/ModelInfo": b'{"support": {"Evaluate": true}}',
    b"/Evaluate": b'{"output": [[0.0]]}',
}


# -- fake UM-Bridge servers (helper process) ---------------------------------------------------------
def serve_fakes(ports: list[int], service_s: float) -> None:
    import httptools

    class Fake(asyncio.Protocol):
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.t = transport
            self.p = httptools.HttpRequestParser(self)
            self.url = b""

        def data_received(self, data: bytes) -> None:
            self.p.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_message_complete(self) -> None:
            body = ANSWERS.get(self.url, b"{}")
            msg = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                len(body),
                body,
            )
            if self.url == b"/Evaluate":
                delay = service_s * random.uniform(0.5, 1.5)
                asyncio.get_running_loop().call_later(delay, self._write, msg)
            else:
                self._write(msg)

        def _write(self, msg: bytes) -> None:
            if not self.t.is_closing():
                self.t.write(msg)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for p in ports:
            await loop.create_server(Fake, "127.0.0.1", p, backlog=64)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def free_ports(n: int) -> list[int]:
    import socket

    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


async def start_fakes(ports: list[int], procs: int, service_s: float) -> list[asyncio.subprocess.Process]:
    out = []
    for i in range(procs):
        part = ports[i::procs]
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from bench.scale import serve_fakes; "
        code += f"serve_fakes({part!r}, {service_s!r})"
        p = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
        assert p.stdout is not None
        assert (await p.stdout.readline()).strip() == b"ready", "fake servers did not start"
        out.append(p)
    return out


# -- instrumentation ------------------------------------------------------------------------------------
_current = contextvars.ContextVar("upstream", default=None)


def instrument(handed: dict[object, float], latencies: list[float]) -> None:
    """Time from the dispatcher's hand-off of a slot to the write of that call's request."""
    from balancer.calls import dispatcher
    from balancer.http import upstream

    hand = dispatcher.Dispatcher._hand

    def timed_hand(self, server):  # type: ignore[no-untyped-def]
        before = server.outstanding
        hand(self, server)
        if server.outstanding > before:  # a waiter got this slot (concurrency 1: one call per server)
            handed[server.upstream] = time.perf_counter()

    post = upstream.Upstream.post

    async def timed_post(self, path, body):  # type: ignore[no-untyped-def]
        token = _current.set(self)
        try:
            return await post(self, path, body)
        finally:
            _current.reset(token)

    request = upstream._Conn.request

    def timed_request(self, head, body):  # type: ignore[no-untyped-def]
        fut = request(self, head, body)
        t = handed.pop(_current.get(), None)
        if t is not None:
            latencies.append(time.perf_counter() - t)
        return fut

    dispatcher.Dispatcher._hand = timed_hand  # type: ignore[method-assign]
    upstream.Upstream.post = timed_post  # type: ignore[method-assign]
    upstream._Conn.request = timed_request  # type: ignore[method-assign]


def rss_mb() -> float:
    """Peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def run(args: argparse.Namespace) -> None:
    from balancer.config.parse import parse_config
    from balancer.http.messages import Request
    from balancer.runner import Runner
    from tests.fakes import FakeScheduler, until

    handed: dict[object, float] = {}
    latencies: list[float] = []
    instrument(handed, latencies)
    n = args.servers
    ports = free_ports(n)
    fakes = await start_fakes(ports, 2, args.service_ms / 1000)
    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    spec = {
        "name": "fake",
        "command": ["true"],
        "models": ["forward"],
        "min_servers": n,
        "max_servers": n,
        "backlog": n,
        "idle_timeout_s": 3600.0,
        "startup_timeout_s": 600.0,
    }
    cfg = parse_config({"balancer": {"port": 0}, "servers": [spec]}, tmp)
    runner = Runner(cfg, FakeScheduler, run_dir=tmp, token="t")  # journal: tmp/journal.jsonl
    b = await runner.open()
    backend = b.backend
    assert isinstance(backend, FakeScheduler)
    await runner.start()
    print(f"baseline RSS {rss_mb():.0f} MB")
    t0 = time.perf_counter()
    await b.pool.wait_for(lambda: len(backend.submitted) >= n, 60)
    auth = {b"authorization": b"Bearer t"}
    for launch, port in zip(backend.submitted, ports, strict=True):
        doc = f'{{"server": "{launch.server_id}", "url": "http://127.0.0.1:{port}"}}'.encode()
        req = Request(b"POST", b"/api/servers/register", auth, doc, True, False, "127.0.0.1")
        status, _, _ = await b.control.register(req)
        assert status == 200, status
    await b.pool.wait_for(lambda: len(b.pool.dispatcher.by_model.get("forward", ())) == n, 120)
    print(f"{n} servers registered and ready in {time.perf_counter() - t0:.1f} s; RSS {rss_mb():.0f} MB")

    body = b'{"name": "forward", "input": [[1.0]], "config": {}}'

    async def call() -> int:
        req = Request(b"POST", b"/Evaluate", {}, body, True, False, "127.0.0.1")
        status, _, _ = await b.calls.evaluate(req, "Evaluate")
        return status

    assert await call() == 200  # warms the metadata cache (sizes), as a client's first call does
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(call()) for _ in range(args.calls)]
    finished = [0]
    for x in tasks:
        x.add_done_callback(lambda _: finished.__setitem__(0, finished[0] + 1))
    await until(lambda: b.calls.inflight + finished[0] >= args.calls, 120, "every call in the call path")
    print(
        f"{args.calls} calls entered, {b.pool.dispatcher.waiting('forward')} queued; "
        f"RSS {rss_now_mb():.0f} MB (peak {rss_mb():.0f} MB)"
    )
    passes = []
    while finished[0] < len(tasks):
        t = time.perf_counter()
        b.scaler.run_once()
        passes.append(time.perf_counter() - t)
        await asyncio.sleep(0.25)
    wall = time.perf_counter() - t0
    statuses = [x.result() for x in tasks]
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    latencies.sort()
    passes.sort()
    ms = 1000
    p50, p99 = latencies[len(latencies) // 2] * ms, latencies[int(len(latencies) * 0.99)] * ms
    print(f"{args.calls} calls answered in {wall:.1f} s ({args.calls / wall:.0f} calls/s), all 200")
    print(
        f"dispatch latency (hand-off -> request written), {len(latencies)} queued calls: "
        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms"
        f"  (target p99 < 1 ms)"
    )
    print(
        f"scaler pass with {n} servers and the queue full, {len(passes)} passes: "
        f"median {statistics.median(passes) * ms:.2f} ms, max {passes[-1] * ms:.2f} ms  (target < 5 ms)"
    )
    print(f"balancer peak RSS {rss_mb():.0f} MB  (target < 500 MB)")
    await runner.stop("bench over")
    for p in fakes:
        p.kill()
        await p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", type=int, default=2000)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--service-ms", type=float, default=500.0, help="fake model compute time (+-50%%)")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
