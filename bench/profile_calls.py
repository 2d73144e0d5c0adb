"""Where the balancer's CPU goes per call: cProfile of the data path at 1 and 64 calls in flight.

One balancer (``bench/_load.py``'s start-up: one trivial test-model server, concurrency 64) per
calls-in-flight figure, so each profile is its own. The balancer runs under a small wrapper that
installs cProfile without enabling it: SIGUSR1 enables it, SIGUSR2 disables it and writes the profile,
so start-up and shutdown are not in it. (``python -m cProfile -o OUT -m balancer.cli serve`` works
too: SIGINT ends ``serve`` with exit code 0 and cProfile writes OUT, but start-up then dominates.)
Each run first drives an unprofiled phase (the CPU per call from /proc, and warm caches), then the
same load profiled; the load generator is ``bench/_load.py``'s (its own process, keep-alive).

Printed per phase: calls served, CPU per call (process and main thread, unprofiled and profiled: the
ratio is cProfile's inflation), the share of the profile's busy time (all but the wait in
``epoll.poll``; the default timer is wall-clock, so busy time also holds time the process was
preempted; ``--timer cpu`` uses the thread's CPU clock at a higher cost per event) per group of
modules, and the top functions by tottime and by cumtime (idle wait taken out). C functions
(builtins) count to the modules of the Python functions that called them (split by cProfile's
per-caller times), except the socket calls ("kernel: socket I/O") and JSON's C code, which are
groups of their own. llhttp's ``feed_data`` is a Cython function that cProfile does not see: its
time is in the self time of the ``data_received`` that calls it, and is measured apart at the end
(a microbenchmark of the same request and answer). "fn calls/call" counts coroutine resumes too.
"est. us/call" spreads the unprofiled CPU per call over the groups by their profiled shares;
cProfile's cost per Python call is the same whatever the function does, so groups of many small
calls are over-weighted and C-heavy groups (socket I/O, llhttp) under-weighted: read it as an upper
bound for the Python-heavy groups.

    python bench/profile_calls.py [--seconds 5] [--inflight 1,64] [--top 25] [--timer wall|cpu]
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _load import balancer, cpu_split, run_load  # noqa: E402  (next to this file)

# ``balancer.cli`` under a cProfile switched by signals (the balancer itself handles INT, TERM, HUP).
PROFILED_CLI = [
    sys.executable,
    "-c",
    "import cProfile, os, runpy, signal, time\n"
    "out = os.environ['BENCH_PROFILE_OUT']\n"
    "timer = {'cpu': time.thread_time}.get(os.environ.get('BENCH_PROFILE_TIMER', 'wall'))\n"
    "prof = cProfile.Profile(timer) if timer else cProfile.Profile()\n"
    "def on(sig, frame):\n"
    "    prof.enable()\n"
    "def off(sig, frame):\n"
    "    prof.disable()\n"
    "    prof.dump_stats(out + '.tmp')\n"
    "    os.replace(out + '.tmp', out)\n"
    "signal.signal(signal.SIGUSR1, on)\n"
    "signal.signal(signal.SIGUSR2, off)\n"
    "runpy.run_module('balancer.cli', run_name='__main__', alter_sys=True)\n",
]

IDLE = ("~", 0, "<method 'poll' of 'select.epoll' objects>")
STDLIB = Path(os.__file__).resolve().parent
US = 1e6


def thread_cpu(pid: int) -> tuple[float, float]:
    """(whole process, main thread) user+sys CPU seconds, from /proc."""
    tck = os.sysconf("SC_CLK_TCK")

    def of(stat: Path) -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tck

    return of(Path(f"/proc/{pid}/stat")), of(Path(f"/proc/{pid}/task/{pid}/stat"))


def llhttp_cost(rounds: int = 20000) -> tuple[float, float]:
    """Microseconds llhttp (``httptools``, no callbacks set) takes to parse one bench request and one
    model answer, outside any profiler: ``feed_data`` is a Cython function, which cProfile does not
    see, so the parse counts to the self time of the ``data_received`` that calls it."""
    import httptools
    from _load import BODY

    req = (
        b"POST /Evaluate HTTP/1.1\r\nHost: 127.0.0.1:40000\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\nUser-Agent: Python/3.11 aiohttp/3.14\r\n"
        b"Content-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n" % len(BODY) + BODY
    )
    answer = b'{"output": [[1.0]]}'
    resp = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\nDate: Sat, 05 Dec 2026 01:00:00 GMT\r\n"
        b"Server: Python/3.11 aiohttp/3.14\r\n\r\n" % len(answer) + answer
    )
    out = []
    for cls, data in ((httptools.HttpRequestParser, req), (httptools.HttpResponseParser, resp)):
        parser = cls(object())
        t = time.perf_counter()
        for _ in range(rounds):
            parser.feed_data(data)
        out.append((time.perf_counter() - t) / rounds * US)
    return out[0], out[1]


def group(func: tuple[str, int, str]) -> str | None:
    """The group of a function; None for a builtin that counts to its caller's group."""
    file, _, name = func
    if file == "~":
        if func == IDLE:
            return "idle (epoll wait)"
        if "socket" in name:
            return "kernel: socket I/O"
        if "_json" in name or "json." in name:
            return "json (C: orjson or _json)"
        return None
    path = Path(file).resolve()
    if "site-packages" in path.parts:
        return "pkg " + path.parts[path.parts.index("site-packages") + 1].removesuffix(".py")
    for base in (ROOT, STDLIB):
        if path.is_relative_to(base):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    return "other " + path.name


def short(func: tuple[str, int, str]) -> str:
    file, line, name = func
    if file == "~":
        return name
    return f"{Path(file).name}:{line}({name})"


def attribute(stats: dict) -> tuple[dict[tuple[str, int, str], str], dict[str, list[float]]]:
    """Each function's label (a builtin with no group of its own: "C, " and its main caller's group),
    and per group [self time, function calls]: a builtin's time is split over its callers' groups by
    cProfile's per-caller figures (each caller edge holds the callee's time from that caller)."""
    labels: dict[tuple[str, int, str], str] = {}
    by_group: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for func, (_cc, nc, tt, _ct, callers) in stats.items():
        if func == IDLE:
            continue
        g = group(func)
        if g is not None:
            labels[func] = g
            by_group[g][0] += tt
            by_group[g][1] += nc
            continue
        edges = [(group(c) or "builtins", e) for c, e in callers.items()] or [("builtins", (0, nc, tt, 0))]
        labels[func] = "C, " + max(edges, key=lambda ge: ge[1][2])[0]
        for eg, (_ecc, enc, ett, _ect) in edges:
            by_group[eg][0] += ett
            by_group[eg][1] += enc
    return labels, by_group


def idle_within(stats: dict) -> dict[tuple[str, int, str], float]:
    """For each function, the part of its cumtime spent waiting in epoll.poll (spread up the callers
    in proportion to each caller edge's cumtime), so cumtime can be shown without the idle wait."""
    idle: dict[tuple[str, int, str], float] = defaultdict(float)
    if IDLE not in stats:
        return idle
    idle[IDLE] = stats[IDLE][2]
    todo, seen = [IDLE], {IDLE}
    while todo:
        f = todo.pop()
        ct = stats[f][3]
        for caller, edge in stats[f][4].items():
            if caller in stats and ct > 0 and caller not in seen:
                idle[caller] += idle[f] * edge[3] / ct
                seen.add(caller)
                todo.append(caller)
    return idle


def phase(inflight: int, args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out = tmp / f"balancer-{inflight}.prof"
    os.environ["BENCH_PROFILE_OUT"] = str(out)
    os.environ["BENCH_PROFILE_TIMER"] = args.timer
    t_start = time.monotonic()
    with balancer(ROOT, args.concurrency, python=PROFILED_CLI, prefix="bench-profile-") as (proc, _, via):
        p0, m0 = thread_cpu(proc.pid)
        k0 = cpu_split(proc.pid)[1]
        plain = run_load(via, inflight, args.seconds)
        p1, m1 = thread_cpu(proc.pid)
        k1 = cpu_split(proc.pid)[1]
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        p2, m2 = thread_cpu(proc.pid)
        prof = run_load(via, inflight, args.seconds)
        p3, m3 = thread_cpu(proc.pid)
        proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not out.exists():
            raise SystemExit("bench: the profile was not written")
    wall = time.monotonic() - t_start
    # calls served: the load generator's timed calls plus its warm-up (one per connection)
    n_plain, n_prof = plain["calls"] + inflight, prof["calls"] + inflight
    cpu_plain, cpu_prof = (p1 - p0) / n_plain, (p3 - p2) / n_prof

    print(
        f"\n=== {inflight} in flight: one balancer, {args.seconds:g} s unprofiled, "
        f"then {args.seconds:g} s profiled"
    )
    print(
        f"calls served: {n_plain} unprofiled ({plain['rate']:.0f}/s, p50 {plain['p50'] * 1e3:.3f} ms), "
        f"{n_prof} profiled ({prof['rate']:.0f}/s, p50 {prof['p50'] * 1e3:.3f} ms)"
    )
    print(
        f"CPU per call (/proc, user+sys): unprofiled {cpu_plain * US:.0f} us "
        f"(main thread {(m1 - m0) / n_plain * US:.0f} us, kernel {(k1 - k0) / (p1 - p0):.0%}), "
        f"profiled {cpu_prof * US:.0f} us "
        f"(main thread {(m3 - m2) / n_prof * US:.0f} us): cProfile inflation x{cpu_prof / cpu_plain:.2f}"
    )
    report(pstats.Stats(str(out)).stats, n_prof, cpu_plain, m3 - m2, args)  # type: ignore[attr-defined]
    print(f"\n(profile: {out}; this phase's wall time {wall:.1f} s)")


def report(st: dict, n: int, cpu_plain: float, main_cpu: float, args: argparse.Namespace) -> None:
    """The group table and the top functions of one profile of ``n`` served calls."""
    total = sum(v[2] for v in st.values())
    idle = st[IDLE][2] if IDLE in st else 0.0
    busy = total - idle
    ncalls = sum(v[1] for v in st.values())
    labels, by_group = attribute(st)
    idle_in = idle_within(st)
    print(
        f"profile ({args.timer} timer): {total:.2f} s in all, {idle:.2f} s idle in epoll.poll, "
        f"busy {busy:.2f} s "
        f"= {busy / n * US:.0f} us per call (main-thread CPU over the window: {main_cpu:.2f} s); "
        f"{ncalls / n:.0f} function calls and coroutine resumes per served call"
    )
    head = "group (self time, with the C calls it makes)"
    print(f"\n{head:<46} {'share':>6} {'us/call':>8} {'est. us/call':>12} {'fn calls/call':>13}")
    for g, (tt, nc) in sorted(by_group.items(), key=lambda kv: -kv[1][0]):
        if tt / busy >= 0.0005:
            share = tt / busy
            print(
                f"{g:<46} {share:>6.1%} {tt / n * US:>8.1f} {share * cpu_plain * US:>12.1f} {nc / n:>13.1f}"
            )
    print(f"{'all (busy)':<46} {1:>6.1%} {busy / n * US:>8.1f} {cpu_plain * US:>12.1f} {ncalls / n:>13.1f}")
    print("(groups under 0.05% left out; est. us/call: the share of the unprofiled CPU per call)")

    rows = [
        (func, nc, tt, ct - idle_in.get(func, 0.0))
        for func, (_cc, nc, tt, ct, _callers) in st.items()
        if func != IDLE
    ]
    for title, key in (("tottime", 2), ("cumtime", 3)):
        rows.sort(key=lambda r: -r[key])
        print(
            f"\ntop {args.top} by {title} (us per served call, share of busy time; cumtime without idle wait)"
        )
        print(
            f"{'group':<28} {'function':<70} {'calls/call':>10} "
            f"{'tot us':>7} {'tot %':>6} {'cum us':>7} {'cum %':>6}"
        )
        for func, nc, tt, ct in rows[: args.top]:
            print(
                f"{labels[func][:28]:<28} {short(func)[:70]:<70} {nc / n:>10.2f} {tt / n * US:>7.1f} "
                f"{tt / busy:>6.1%} {ct / n * US:>7.1f} {ct / busy:>6.1%}"
            )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0, help="each phase, unprofiled and profiled")
    ap.add_argument("--inflight", default="1,64", help="calls in flight, one balancer run each")
    ap.add_argument("--concurrency", type=int, default=64, help="balancer's per-server concurrency cap")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--timer", choices=("wall", "cpu"), default="wall", help="cProfile's clock")
    args = ap.parse_args()
    t0 = time.monotonic()
    print(
        f"balancer data-path profile (cProfile), one trivial umbridge server (concurrency cap "
        f"{args.concurrency}), {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    for inflight in (int(x) for x in args.inflight.split(",")):
        phase(inflight, args)
    req_us, resp_us = llhttp_cost()
    print(
        f"\nllhttp alone (httptools, no callbacks, unprofiled, in this process): "
        f"{req_us:.2f} us per request, {resp_us:.2f} us per answer; a call is parsed twice "
        f"(the client's request, the model's answer), "
        f"inside the self time of connection.py/upstream.py data_received"
    )
    print(f"\ntotal wall time {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
