"""Balancer overhead: the same trivial model server, called directly and through the balancer.

Prints added latency (p50, p99) at 1 call in flight, balancer CPU time per call (from /proc), and
throughput ratios (balancer / direct) at 1 and 64 calls in flight. The load generator is a
separate process with keep-alive connections (raw aiohttp), so its CPU is not the balancer's.
Targets (2-core machine): added p50 <= 0.3 ms, balancer CPU <= 100 us per call, throughput at 64
in flight >= 50% of direct.

    python bench/overhead.py [--seconds 3] [--concurrency 64] [--compare REV [--rounds 2]]

``--compare REV`` runs the balancer of an earlier revision too (from a temporary git worktree),
alternating with this one, so a before/after comparison shares one run's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = b'{"name": "forward", "input": [[1.0]], "config": {}}'


async def loadgen(url: str, inflight: int, seconds: float) -> dict:
    import aiohttp

    lat: list[float] = []
    stop = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def worker() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                async with http.post(url + "/Evaluate", data=BODY) as r:
                    await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t)

        # warm-up: open the connections
        await asyncio.gather(*(http.post(url + "/Evaluate", data=BODY) for _ in range(inflight)))
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        wall = time.monotonic() - t0
    lat.sort()
    return {
        "calls": len(lat),
        "rate": len(lat) / wall,
        "p50": lat[len(lat) // 2],
        "p99": lat[int(len(lat) * 0.99)],
    }


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def run_load(url: str, inflight: int, seconds: float) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--loadgen", url, "--inflight", str(inflight), "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def measure(root: Path, args: argparse.Namespace) -> dict[int, tuple[dict, dict, float, float]]:
    """One balancer (the package under ``root``) in front of one trivial server: direct vs via."""
    from balancer.observe.journal import read_journal

    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    cfg = tmp / "bench.toml"
    cfg.write_text(
        f'[balancer]\nport = 0\nrun_dir = "{tmp}/run"\n'
        f'[[servers]]\nname = "trivial"\ncommand = ["{sys.executable}", "{ROOT}/models/testmodel.py"]\n'
        f'models = ["forward"]\nmin_servers = 1\nmax_servers = 1\nconcurrency = {args.concurrency}\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "balancer.cli", "serve", "--config", str(cfg)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.DEVNULL,
    )
    journal = tmp / "run" / "journal.jsonl"
    try:
        deadline = time.monotonic() + 60
        direct = via = None
        while time.monotonic() < deadline and not (direct and via):
            time.sleep(0.1)
            if journal.exists():
                for e in read_journal(journal):
                    if e["ev"] == "balancer.started":
                        via = e["url"]
                    if e["ev"] == "server.registered":
                        direct = e["url"]
        if not (direct and via):
            raise SystemExit("bench: balancer or server did not come up")
        time.sleep(0.5)  # server.ready follows registration
        if args.dashboard:  # a dashboard tab stays open through the runs: its feed is on the bus
            threading.Thread(target=_watch, args=(via,), daemon=True).start()
            time.sleep(1.5)
        rows = {}
        for inflight in (1, 64):
            d = run_load(direct, inflight, args.seconds)
            u0, s0 = cpu_split(proc.pid)
            b = run_load(via, inflight, args.seconds)
            u1, s1 = cpu_split(proc.pid)
            rows[inflight] = (d, b, (u1 - u0 + s1 - s0) / b["calls"], (s1 - s0) / b["calls"])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    return rows


def _watch(url: str) -> None:
    """Read the dashboard's event stream (what an open tab does) until the process ends."""
    import urllib.request

    with urllib.request.urlopen(url + "/dashboard/events") as stream:
        while stream.readline():
            pass


def print_rows(label: str, rows: dict[int, tuple[dict, dict, float, float]]) -> None:
    for inflight, (d, b, cpu, sys_cpu) in rows.items():
        print(
            f"{label:>8} {inflight:>9} {d['rate']:>9.0f} {b['rate']:>9.0f} {b['rate'] / d['rate']:>6.2f} "
            f"{d['p50'] * 1e3:>9.3f}ms {b['p50'] * 1e3:>7.3f}ms {(b['p50'] - d['p50']) * 1e3:>8.3f}ms "
            f"{(b['p99'] - d['p99']) * 1e3:>8.3f}ms {cpu * 1e6:>7.0f}us {sys_cpu * 1e6:>7.0f}us"
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    # 64: the balancer may pass all 64 calls on, as the direct client does; the umbridge server
    # queues them internally either way.
    ap.add_argument("--concurrency", type=int, default=64, help="balancer's per-server concurrency cap")
    ap.add_argument("--compare", metavar="REV", help="also run the balancer of git revision REV, alternating")
    ap.add_argument("--rounds", type=int, default=2, help="with --compare: alternating rounds of each")
    ap.add_argument("--dashboard", action="store_true", help="keep a dashboard tab's event stream open")
    ap.add_argument("--loadgen")
    ap.add_argument("--inflight", type=int, default=1)
    args = ap.parse_args()
    if args.loadgen:
        print(json.dumps(asyncio.run(loadgen(args.loadgen, args.inflight, args.seconds))))
        return 0
    roots = {"now": ROOT}
    worktree = None
    git: list[str] = []
    if args.compare:
        worktree = Path(tempfile.mkdtemp(prefix="bench-before-")) / "tree"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "-q", "--detach", str(worktree), args.compare], check=True)
        roots = {args.compare[:8]: worktree, "now": ROOT}
    results: list[tuple[str, dict]] = []
    try:
        for _ in range(args.rounds if args.compare else 1):
            for label, root in roots.items():  # alternating, so noise hits both alike
                results.append((label, measure(root, args)))
    finally:
        if worktree is not None:
            subprocess.run([*git, "remove", "--force", str(worktree)], check=False)
    print(
        f"balancer overhead, one trivial umbridge server (concurrency cap {args.concurrency}), "
        f"{args.seconds:g} s per phase, {os.cpu_count()} CPUs"
    )
    print(
        f"{'balancer':>8} {'in flight':>9} {'direct/s':>9} {'via/s':>9} {'ratio':>6} {'direct p50':>11} "
        f"{'via p50':>9} {'added p50':>10} {'added p99':>10} {'CPU/call':>9} {'(kernel)':>9}"
    )
    for label, rows in results:
        print_rows(label, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
