"""Scale: 10,000 ready servers and 1,000,000 calls queued at once in one balancer.

The production Balancer (pool, dispatcher, call path, control API, scaler, journal) runs in this
process over a fake scheduler. 10,000 fake UM-Bridge servers listen on loopback ports in two
helper processes (asyncio + llhttp, an Evaluate answers after ``--service-ms`` +-50 %: a model's
compute time). The scaler requests the servers (min_servers), each is registered through the
control API, checked by the balancer's own ready check and becomes ready. Calls enter the call
path in-process, as the frontend hands them over (``Calls.evaluate_fast`` with a callback for the
answer; 1M client sockets do not fit a 2-core test machine, and the frontend's per-connection cost
is what ``bench/haproxy.py`` measures).

1. Per-call CPU with 1 server registered, then with all of them (``--cpu-calls`` calls, 64 at a
   time, same driver): no step of the call path may grow with the number of servers.
2. ``--calls`` Evaluate calls at once: dispatch latency for queued calls (the dispatcher hands a
   freed slot to the oldest waiter -> that call's request is written to the server's socket)
   p50/p99; every scaler pass while the queue drains (its time with the servers and the queue
   full); the process's peak RSS.
Targets (issue 23): dispatch p99 < 1 ms, scaler pass max < 10 ms, RSS < 2 GB, CPU per call with
10,000 servers within noise of that with 1.

    python bench/scale.py [--servers 10000] [--calls 1000000] [--service-ms 50] [--cpu-calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INFO = b'{"protocolVersion": 1.0, "models": ["forward", "instant"]}'
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
            self.instant = False

        def on_body(self, body: bytes) -> None:
            self.instant = b'"instant"' in body  # the CPU phases' model: no compute time

        def on_message_complete(self) -> None:
            body = ANSWERS.get(self.url, b"{}")
            msg = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                len(body),
                body,
            )
            if self.url == b"/Evaluate" and not self.instant:
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
        handed[server.upstream] = time.perf_counter()  # a callback waiter writes inside ``hand``
        hand(self, server)
        if server.outstanding <= before:  # no waiter got this slot (concurrency 1: one call per server)
            handed.pop(server.upstream, None)

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

    request_nowait = upstream._Conn.request_nowait

    def timed_request_nowait(self, head, body, callback):  # type: ignore[no-untyped-def]
        request_nowait(self, head, body, callback)  # the fast path's: no task between hand-off and write
        t = handed.pop(self.owner, None)
        if t is not None:
            latencies.append(time.perf_counter() - t)

    upstream._Conn.request_nowait = timed_request_nowait  # type: ignore[method-assign]
    dispatcher.Dispatcher._hand = timed_hand  # type: ignore[method-assign]
    upstream.Upstream.post = timed_post  # type: ignore[method-assign]
    upstream._Conn.request = timed_request  # type: ignore[method-assign]


def rss_mb() -> float:
    """Peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def scaler_passes(b: object, going: Callable[[], bool]) -> tuple[list[float], list[float], list[float]]:
    """One scaler pass every 0.25 s while ``going()``: wall and CPU times of each pass, and apart the
    wall times of passes during which Python's cyclic GC ran a full collection."""
    passes: list[float] = []
    cpu: list[float] = []  # the same passes' CPU time (the main thread's: no time preempted by others)
    gc_passes: list[float] = []
    full_gcs = [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start" and info.get("generation") == 2:
            full_gcs[0] += 1

    gc.callbacks.append(on_gc)
    while going():
        before = full_gcs[0]
        t, c = time.perf_counter(), time.thread_time()
        b.scaler.run_once()  # type: ignore[attr-defined]
        took = time.perf_counter() - t
        if full_gcs[0] > before:
            gc_passes.append(took)
        else:
            passes.append(took)
            cpu.append(time.thread_time() - c)
        await asyncio.sleep(0.25)
    gc.callbacks.remove(on_gc)
    return passes, cpu, gc_passes


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
        "models": ["forward", "instant"],
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

    async def register(pairs: list[tuple[object, int]]) -> None:
        sem = asyncio.Semaphore(64)  # as launchers do: many at once, not all 10,000 in one instant

        async def one(launch: object, port: int) -> None:
            doc = f'{{"server": "{launch.server_id}", "url": "http://127.0.0.1:{port}"}}'.encode()  # type: ignore[attr-defined]
            req = Request(b"POST", b"/api/servers/register", auth, doc, True, False, "127.0.0.1")
            async with sem:
                status, _, _ = await b.control.register(req)
            assert status == 200, status

        await asyncio.gather(*(one(la, po) for la, po in pairs))

    pairs = list(zip(backend.submitted, ports, strict=True))
    members = b.pool.dispatcher.by_model
    await register(pairs[:1])
    await b.pool.wait_for(lambda: len(members.get("forward", ())) == 1, 60)
    body = b'{"name": "forward", "input": [[1.0]], "config": {}}'
    instant = b'{"name": "instant", "input": [[1.0]], "config": {}}'
    statuses: dict[int, int] = {}

    def done(reply: tuple[int, bytes, bytes]) -> None:
        statuses[reply[0]] = statuses.get(reply[0], 0) + 1

    def enter(body: bytes = body, done: Callable[[tuple[int, bytes, bytes]], None] = done) -> None:
        req = Request(b"POST", b"/Evaluate", {}, body, True, False, "127.0.0.1")
        if not b.calls.evaluate_fast(req, "Evaluate", done):
            fut = asyncio.ensure_future(b.calls.evaluate(req, "Evaluate"))
            fut.add_done_callback(lambda f: done(f.result()))

    enter()  # warms the metadata cache (flags, sizes), as a client's first call does
    enter(instant)
    await until(lambda: sum(statuses.values()) == 2, 60, "the first calls")

    async def cpu_per_call(calls: int) -> float:
        """Process CPU per call (this process: the balancer and the in-process driver) for
        ``calls`` calls of the instant model, one at a time: the fast path's every step."""
        loop = asyncio.get_running_loop()
        c0 = time.process_time()
        for _ in range(calls):
            fut: asyncio.Future[None] = loop.create_future()
            enter(instant, lambda r, fut=fut: (done(r), fut.set_result(None)))  # type: ignore[misc]
            await asyncio.wait_for(fut, 60)
        return (time.process_time() - c0) / calls

    await cpu_per_call(args.cpu_calls // 4)  # settle, as below
    one_cpu = await cpu_per_call(args.cpu_calls)
    await register(pairs[1:])
    await b.pool.wait_for(lambda: len(members.get("forward", ())) == n, 600)
    print(f"{n} servers registered and ready in {time.perf_counter() - t0:.1f} s; RSS {rss_mb():.0f} MB")
    await cpu_per_call(args.cpu_calls // 4)  # settle: the last ready checks, the first connections
    all_cpu = [await cpu_per_call(args.cpu_calls) for _ in range(2)]
    print(
        f"CPU per call, {args.cpu_calls} calls one at a time: {one_cpu * 1e6:.1f} us with 1 server; "
        f"{all_cpu[0] * 1e6:.1f} and {all_cpu[1] * 1e6:.1f} us with {n} (ratios "
        f"{all_cpu[0] / one_cpu:.2f}, {all_cpu[1] / one_cpu:.2f})  (target: within noise)"
    )
    latencies.clear()
    statuses.clear()
    t0 = time.perf_counter()
    for i in range(args.calls):
        enter()
        if i % 10_000 == 9_999:
            await asyncio.sleep(0)  # the event loop runs meanwhile, as with real clients
    await until(lambda: b.calls.inflight + sum(statuses.values()) >= args.calls, 600, "every call in")
    print(
        f"{args.calls} calls entered, {b.pool.dispatcher.waiting('forward')} queued; "
        f"RSS {rss_now_mb():.0f} MB (peak {rss_mb():.0f} MB)"
    )
    passes, cpu, gc_passes = await scaler_passes(b, lambda: sum(statuses.values()) < args.calls)
    wall = time.perf_counter() - t0
    assert statuses == {200: args.calls}, statuses
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
    cpu.sort()
    p99 = passes[int(len(passes) * 0.99)] * ms
    print(
        f"scaler pass with {n} servers and the queue full, {len(passes)} passes: median "
        f"{statistics.median(passes) * ms:.2f} ms, p99 {p99:.2f} ms, max {passes[-1] * ms:.2f} ms wall; "
        f"CPU median {statistics.median(cpu) * ms:.2f} ms, max {cpu[-1] * ms:.2f} ms  (target max < 10 ms)"
    )
    if gc_passes:
        print(
            f"  and {len(gc_passes)} passes during which Python's cyclic GC ran a full collection of "
            f"the heap: {', '.join(f'{x * ms:.1f}' for x in sorted(gc_passes))} ms"
        )
    print(f"balancer peak RSS {rss_mb():.0f} MB  (target < 2 GB)")
    await runner.stop("bench over")
    for p in fakes:
        p.kill()
        await p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--service-ms", type=float, default=50.0, help="fake model compute time (+-50%%)")
    ap.add_argument("--cpu-calls", type=int, default=20_000, help="calls per CPU-per-call phase")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
