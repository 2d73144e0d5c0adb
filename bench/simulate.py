"""Scaling policies on the KTH SP2 trace: one UQ campaign started at 20 points of the year.

Each start replays the trace (FCFS + EASY, 100 CPUs) up to the campaign's start once, then runs the
same campaign under the demand-only, forecast-aware and oracle policies (``balancer.sim``). Starts
alternate weekdays and weekends, working hours and nights (site time), spread over the year.
Printed: each policy's mean and median of every metric, the makespans per start, the forecast-aware
policy against its targets, and how long the whole-year replay and the campaigns took.

Targets (issue 10) for the forecast-aware policy: idle server-seconds per useful one <= 0.1,
makespan within 10 % of the oracle and >= 20 % shorter than demand-only, no more than ``backlog``
pending allocations beyond what the forecast admits.

    python bench/simulate.py [--calls 20000] [--call-mean-s 120] [--max-servers 32] [--starts 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from balancer.capacity.swf import read_swf
from balancer.sim.campaign import lognormal
from balancer.sim.replay import Replay
from balancer.sim.report import METRICS, metrics, table
from balancer.sim.run import POLICIES, SimConfig, simulate

TRACE = Path(__file__).resolve().parents[2] / "shared/data/traces/KTH-SP2-1996-2.1-cln.swf.gz"
DAY = 86400.0


def starts_over_the_year(first_s: float, last_s: float, n: int, epoch: float, tz_s: float) -> list[float]:
    """``n`` starts from ``first_s`` to ``last_s``: even ones on a weekend, odd ones on a weekday;
    pairs alternate 10:00 and 22:00 site time."""
    out = []
    for i in range(n):
        t = first_s + (last_s - first_s) * i / max(1, n - 1)
        local = datetime.fromtimestamp(epoch + t + tz_s, timezone.utc)
        day = local.replace(hour=0, minute=0, second=0, microsecond=0)
        want_weekend = i % 2 == 0
        while (day.weekday() >= 5) != want_weekend:
            day += timedelta(days=1)
        hour = 10 if (i // 2) % 2 == 0 else 22
        out.append((day + timedelta(hours=hour)).timestamp() - tz_s - epoch)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--call-mean-s", type=float, default=120.0)
    ap.add_argument("--max-servers", type=int, default=32)
    ap.add_argument("--backlog", type=int, default=2)
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--forecaster", default="seasonal-naive-day")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not Path(args.trace).exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    trace = read_swf(args.trace)
    last = float(trace.jobs["submit"].max())
    starts = starts_over_the_year(14 * DAY, last - 10 * DAY, args.starts, trace.unix_start, trace.tz_offset_s)
    t = time.perf_counter()
    replay = Replay(trace, starts)
    t_replay = time.perf_counter() - t
    campaign = lognormal(args.calls, args.call_mean_s, seed=args.seed)
    cfg = SimConfig(max_servers=args.max_servers, backlog=args.backlog, forecaster=args.forecaster)
    per: dict[str, list[dict[str, float]]] = {p: [] for p in POLICIES}
    rows = []
    t = time.perf_counter()
    for s in starts:
        row = {}
        for p in POLICIES:
            r = simulate(replay, s, campaign, p, cfg)
            m = metrics(r)
            per[p].append(m)
            row[p] = m["makespan_h"]
        row["bound"] = per["oracle"][-1]["idle_bound_h"]
        rows.append((s, row))
    t_sim = time.perf_counter() - t
    print(
        f"KTH SP2 ({len(trace)} jobs, {trace.max_procs} CPUs), {len(starts)} campaign starts; campaign: "
        f"{args.calls} calls, lognormal mean {args.call_mean_s:g} s "
        f"({campaign.work_s / 3600:.0f} server-hours), "
        f"max {args.max_servers} servers of 1 CPU, time limit 4 h, backlog {args.backlog}, "
        f"forecaster {args.forecaster}\n"
    )
    cols = {}
    for p in POLICIES:
        for stat, fn in (("mean", np.mean), ("median", np.median)):
            cols[f"{p} {stat}"] = {k: _stat(fn, [m[k] for m in per[p]]) for k, _, _ in METRICS}
    print(table(cols))
    print("\nmakespan (h) per start (site time):")
    print(f"{'start':22s} {'demand':>8s} {'forecast':>9s} {'oracle':>8s} {'idle bound':>11s}")
    for s, row in rows:
        when = datetime.fromtimestamp(trace.unix_start + s + trace.tz_offset_s, timezone.utc)
        print(
            f"{when.strftime('%a %Y-%m-%d %H:%M'):22s} {row['demand']:8.2f} {row['forecast']:9.2f} "
            f"{row['oracle']:8.2f} {row['bound']:11.2f}"
        )
    f = per["forecast"]
    d = per["demand"]
    o = per["oracle"]
    idle = float(np.mean([m["idle_per_useful"] for m in f]))
    vs_oracle = float(np.mean([a["makespan_h"] / b["makespan_h"] for a, b in zip(f, o, strict=True)]))
    vs_demand = float(np.mean([1 - a["makespan_h"] / b["makespan_h"] for a, b in zip(f, d, strict=True)]))
    added = max(m["added_beyond_max"] for m in f)
    held = max(m["beyond_max"] for m in f)
    bound = float(np.mean([1 - m["idle_bound_h"] / b["makespan_h"] for m, b in zip(o, d, strict=True)]))
    print("\nforecast-aware policy against the targets:")
    _target("idle / useful server-seconds (mean)", f"{idle:.3f}", "<= 0.1", idle <= 0.1)
    _target("makespan / oracle's (mean)", f"{vs_oracle:.3f}", "<= 1.10", vs_oracle <= 1.1)
    _target("makespan shorter than demand-only (mean)", f"{vs_demand:.1%}", ">= 20 %", vs_demand >= 0.2)
    _target("  idle-capacity bound vs demand-only", f"{bound:.1%}", "(what idle CPUs alone allow)", None)
    _target(
        "pending submitted beyond admitted (max)", f"{added:.0f}", f"<= {args.backlog}", added <= args.backlog
    )
    _target("pending held beyond admitted (max)", f"{held:.0f}", f"<= {args.backlog}", held <= args.backlog)
    n = len(starts) * len(POLICIES)
    print(f"\ntimes: whole-year replay with {len(starts)} snapshots {t_replay:.1f} s; ", end="")
    print(f"{n} campaigns {t_sim:.1f} s ({t_sim / n:.2f} s each)")
    return 0


def _stat(fn, values: list[float]) -> float:
    """``fn`` of the finite values (NaN where a metric does not apply to the policy)."""
    v = [x for x in values if np.isfinite(x)]
    return float(fn(v)) if v else float("nan")


def _target(label: str, value: str, goal: str, good: bool | None) -> None:
    verdict = "" if good is None else ("met" if good else "MISSED")
    print(f"  {label:42s} {value:>8s}   {goal:8s} {verdict}")


if __name__ == "__main__":
    sys.exit(main())
