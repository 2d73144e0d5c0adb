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
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _load import balancer, cpu_split, run_load  # noqa: E402  (next to this file)


def measure(root: Path, args: argparse.Namespace) -> dict[int, tuple[dict, dict, float, float]]:
    """One balancer (the package under ``root``) in front of one trivial server: direct vs via."""
    with balancer(root, args.concurrency) as (proc, direct, via):
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
    args = ap.parse_args()
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
