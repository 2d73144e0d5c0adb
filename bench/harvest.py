"""Scaling policies (demand, forecast, harvest, hybrid) on real cluster traces, paired, with
bootstrap intervals against demand-only, the targets of issue 20 and the Pareto plot.

For each trace (KTH SP2, LANL CM-5 from ``../shared/data/traces/``; a missing one is skipped with a
line saying so) the trace is replayed once without us (FCFS + EASY, or fair-share; ``--scheduler``),
with a snapshot at each of ``--starts`` campaign starts spread over the trace (weekdays and weekends,
10:00 and 22:00 site time). From each snapshot, for each of ``--seeds`` campaigns, every policy runs
the same campaign on the same snapshot (``balancer.sim``), so differences are paired.

Sizing, so that capacity and not ``max_servers`` binds: a server job takes the trace's smallest
allocation (KTH: 1 CPU, LANL: 32, its partition size); ``max_servers`` is the whole machine in such
jobs; the campaign is ``--hours`` hours of work at the trace's median idle CPUs, in calls of
``--call-mean-s`` (lognormal, sigma 0.5).

Printed per trace also: the CPU-hours of jobs past their request and the overrun mode used, with its
evidence (mean wait recorded, replayed, and replayed under the other mode). Printed per trace: per
policy the mean of every yardstick (``balancer.sim.yardsticks``) and, for
the others, the mean difference to demand-only with its 95 % paired bootstrap interval; the targets
with met/MISSED; the Pareto front; how long the replay and the campaigns took.

    python bench/harvest.py [--starts 30] [--seeds 3] [--hours 12] [--call-mean-s 120] [--scheduler easy]
        [--grace-s 60] [--overrun cap|extend] [--on-notice now|hold|idle]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from balancer.capacity.swf import SwfTrace, read_swf
from balancer.config.schema import POLICIES
from balancer.sim.campaign import lognormal
from balancer.sim.replay import Replay
from balancer.sim.report import METRICS, paired_table, pareto
from balancer.sim.run import SimConfig, simulate
from balancer.sim.stats import bootstrap_mean, paired
from balancer.sim.yardsticks import figures, replay_idle

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared/data/traces"
DEFAULT_TRACES = ("KTH-SP2-1996-2.1-cln.swf.gz", "LANL-CM5-1994-4.1-cln.swf.gz")
DAY = 86400.0


def starts_over(first_s: float, last_s: float, n: int, epoch: float, tz_s: float) -> list[float]:
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


def trace_name(trace: SwfTrace) -> str:
    return Path(str(trace.path)).name.split(".swf")[0]


def mean_waits(trace: SwfTrace, replay: Replay) -> tuple[float, float, float]:
    """Mean wait (h) of the trace's jobs as recorded, as replayed, and as replayed under the other
    overrun mode (a whole-trace replay without snapshots): the evidence for the overrun mode."""
    j = trace.jobs
    ok = np.minimum(trace.procs, trace.max_procs) > 0
    rec = j["wait"][ok]
    recorded = float(rec[rec >= 0].mean()) / 3600.0
    replayed = float((replay.start - replay.submit).mean()) / 3600.0
    other = "extend" if replay.overrun == "cap" else "cap"
    o = Replay(trace, [], replay.step_s, replay.scheduler, replay.preempt_grace_s, other)
    return recorded, replayed, float((o.start - o.submit).mean()) / 3600.0


def make_replay(trace: SwfTrace, starts: list[float], args: argparse.Namespace) -> Replay:
    """The replay without us, with the scheduler options given (overrun: the replay's default)."""
    kw = {} if args.overrun is None else {"overrun": args.overrun}
    return Replay(trace, starts, 900.0, args.scheduler, args.grace_s, **kw)


def run_trace(path: Path, args: argparse.Namespace) -> dict[str, dict[str, np.ndarray]] | None:
    if not path.exists():
        print(f"\n== {path.name}: trace not found at {path}, skipped ==")
        return None
    trace = read_swf(str(path))
    name = trace_name(trace)
    procs = np.minimum(trace.procs, trace.max_procs)
    cpus = int(procs[procs > 0].min())
    max_servers = trace.max_procs // cpus
    last = float(trace.jobs["submit"].max())
    starts = starts_over(14 * DAY, last - 10 * DAY, args.starts, trace.unix_start, trace.tz_offset_s)
    t = time.perf_counter()
    replay = make_replay(trace, starts, args)
    t_replay = time.perf_counter() - t
    idle = replay_idle(replay)
    med_idle = float(np.median(idle))
    calls = max(10, round(args.hours * 3600.0 * (med_idle / cpus) / args.call_mean_s))
    policies = [p for p in args.policies.split(",") if p]
    cfg = SimConfig(
        max_servers=max_servers,
        cpus=cpus,
        backlog=args.backlog,
        forecaster=args.forecaster,
        time_limit_s=args.time_limit_h * 3600.0,
        on_notice=args.on_notice,
    )
    cells = {p: {k: np.full((len(starts), args.seeds), np.nan) for k, _, _ in METRICS} for p in policies}
    extra = {p: {"makespan_vs_demand": np.full((len(starts), args.seeds), np.nan)} for p in policies}
    t = time.perf_counter()
    for i, s in enumerate(starts):
        for j in range(args.seeds):
            camp = lognormal(calls, args.call_mean_s, seed=1000 * j + 7)
            for p in policies:
                f = figures(simulate(replay, s, camp, p, cfg), replay)
                for k, _, _ in METRICS:
                    cells[p][k][i, j] = f.get(k, math.nan)
    t_sim = time.perf_counter() - t
    if "demand" in cells:
        for p in policies:
            extra[p]["makespan_vs_demand"] = cells[p]["makespan_h"] / cells["demand"]["makespan_h"]
    work_h = calls * args.call_mean_s / 3600.0
    sched = replay.scheduler
    print(
        f"\n== {name}: {len(trace)} jobs, {trace.max_procs} CPUs, {len(starts)} starts x {args.seeds} seeds,"
        f" paired; scheduler {sched}, preemption grace {args.grace_s:g} s =="
    )
    print(
        f"sizing: server job = {cpus} CPU(s) (the trace's smallest allocation), max_servers = {max_servers}"
        f" (the whole machine: capacity binds, not max_servers); campaign = {calls} calls of lognormal mean"
        f" {args.call_mean_s:g} s = {work_h:.0f} server-h ({work_h * cpus:.0f} CPU-h), i.e. {args.hours:g} h"
        f" at the median idle capacity ({med_idle:.0f} CPUs; mean {idle.mean():.0f}); backlog {args.backlog},"
        f" time limit {args.time_limit_h:g} h, forecaster {args.forecaster}"
    )
    mode = {"extend": "run to their recorded end", "cap": "killed at their request"}[replay.overrun]
    over = replay.overrun_cpu_h
    total = float((np.maximum(trace.jobs["run"], 0) * np.maximum(procs, 0)).sum()) / 3600
    print(
        f"jobs that ran past their request: {over:,.0f} CPU-h of the trace's {total:,.0f}"
        f" ({over / total:.1%}, {replay.overrun_jobs} jobs); replayed: {mode}"
    )
    recorded, replayed, other = mean_waits(trace, replay)
    alt = "extend" if replay.overrun == "cap" else "cap"
    if abs(replayed - other) <= 0.05 * max(replayed, other):
        verdict = "the two modes replay the same waits here"
    else:
        closer = replay.overrun if abs(replayed - recorded) < abs(other - recorded) else alt
        verdict = f"{closer!r} matches the recorded waits better"
    print(
        f"overrun {replay.overrun!r} ({'the default' if args.overrun is None else '--overrun'}): mean wait"
        f" recorded {recorded:.2f} h, replayed {replayed:.2f} h ({alt}: {other:.2f} h): {verdict}"
    )
    print("per policy: mean over every (start, seed); others: (mean difference to demand [95 % bootstrap])")
    print(paired_table(cells))
    targets(cells, extra, cfg)
    n = len(starts) * args.seeds * len(policies)
    print(
        f"times: whole-trace replay with {len(starts)} snapshots {t_replay:.1f} s; {n} campaigns"
        f" {t_sim:.1f} s ({t_sim / n:.2f} s each)"
    )
    return cells


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _line(label: str, value: str, goal: str, ok: bool | None) -> None:
    print(f"  {label:58s} {value:>26s}  {goal:12s} {'' if ok is None else _verdict(ok)}")


def targets(
    cells: dict[str, dict[str, np.ndarray]], extra: dict[str, dict[str, np.ndarray]], cfg: SimConfig
) -> None:
    print("targets:")
    if "harvest" in cells:
        h = cells["harvest"]
        m, lo, hi = bootstrap_mean(h["harm_per_cpu_h"])
        _line(
            "harvest: others' extra CPU-wait per campaign CPU-h (hi)",
            f"{m:.4f} [{lo:.4f}, {hi:.4f}]",
            "<= 0.05",
            hi <= 0.05,
        )
        med = float(np.nanmedian(np.nanmean(h["harm_per_cpu_h"], axis=1)))
        g, glo, ghi = bootstrap_mean(h["harm_grace_per_cpu_h"])
        _line("  its median over starts", f"{med:.4f}", "", None)
        _line(
            "  its direct part (jobs delayed <= the grace time)", f"{g:.4f} [{glo:.4f}, {ghi:.4f}]", "", None
        )
        m, lo, hi = bootstrap_mean(h["harvest_fraction"])
        _line("harvest: harvest fraction (mean)", f"{m:.3f} [{lo:.3f}, {hi:.3f}]", ">= 0.95", m >= 0.95)
        m, lo, hi = bootstrap_mean(h["makespan_H"])
        _line("harvest: makespan / H (mean)", f"{m:.3f} [{lo:.3f}, {hi:.3f}]", "<= 1.10", m <= 1.10)
    if "hybrid" in cells and "demand" in cells:
        d, lo, hi = paired(cells["hybrid"]["harm_per_cpu_h"], cells["demand"]["harm_per_cpu_h"])
        _line("hybrid: harm - demand's (interval below 0)", f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]", "< 0", hi < 0)
        m, lo, hi = bootstrap_mean(extra["hybrid"]["makespan_vs_demand"])
        _line("hybrid: makespan / demand's (mean)", f"{m:.3f} [{lo:.3f}, {hi:.3f}]", "<= 1.10", m <= 1.10)
    for p, c in cells.items():
        beyond = float(np.nanmax(c["beyond_admission_max"]))
        _line(
            f"{p}: pending beyond admission (max)",
            f"{beyond:.0f}",
            f"<= {cfg.backlog}",
            beyond <= cfg.backlog,
        )
        held = float(np.nanmax(c["held_max"]))
        serving = float(np.nanmax(c["serving_max"]))
        ok = held <= cfg.max_servers and serving <= cfg.max_servers
        _line(
            f"{p}: servers holding CPUs / calls in service (max)",
            f"{held:.0f} / {serving:.0f}",
            f"<= {cfg.max_servers}",
            ok,
        )
        w = c["waste"]
        m, lo, hi = bootstrap_mean(w)
        parts = ", ".join(
            f"{k[6:]} {np.nanmean(c[k]):.3f}" for k in ("waste_idle", "waste_startup", "waste_killed")
        )
        _line(
            f"{p}: waste per useful CPU-s (mean; {parts})",
            f"{m:.3f} [{lo:.3f}, {hi:.3f}]",
            "<= 0.1",
            m <= 0.1,
        )
        miss = float(np.nansum(c["calls_missing"])) if "calls_missing" in c else 0.0
        if miss:
            _line(f"{p}: calls not done exactly once", f"{miss:.0f}", "0", False)
    means = {
        p: (bootstrap_mean(c["harm_per_cpu_h"])[0], bootstrap_mean(c["makespan_H"])[0])
        for p, c in cells.items()
    }
    front = [
        p
        for p, (x, y) in means.items()
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for q, (x2, y2) in means.items() if q != p)
    ]
    print(f"  Pareto front (harm per CPU-h vs makespan / H, means): {', '.join(front)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default=",".join(str(TRACES / t) for t in DEFAULT_TRACES))
    ap.add_argument("--starts", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--hours", type=float, default=12.0, help="campaign work in hours at the median idle CPUs"
    )
    ap.add_argument("--call-mean-s", type=float, default=120.0)
    ap.add_argument("--backlog", type=int, default=2)
    ap.add_argument("--time-limit-h", type=float, default=4.0)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--forecaster", default="seasonal-naive-day")
    ap.add_argument("--scheduler", default="easy", choices=("easy", "fairshare"))
    ap.add_argument("--grace-s", type=float, default=60.0, help="preemption grace time (s)")
    ap.add_argument(
        "--overrun",
        choices=("cap", "extend"),
        default=None,
        help="trace jobs past their request: killed at it (cap) or run to their recorded end (extend);"
        " default: the replay's (cap), checked per trace against the recorded waits",
    )
    ap.add_argument(
        "--on-notice",
        choices=("now", "hold", "idle"),
        default="now",
        help="a preempted server: hands its call back and ends at once (now, the default: what the live"
        " launcher does on the unrequested SIGTERM), holds its CPUs to the end of the grace time (hold),"
        " or ends its job once it has no call (idle)",
    )
    ap.add_argument("--plot", default=str(ROOT / "docs/harvest_pareto.png"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    panels = {}
    for p in args.traces.split(","):
        cells = run_trace(Path(p), args)
        if cells is not None:
            panels[Path(p).name.split(".swf")[0]] = cells
    if panels and args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        pareto(panels, args.plot)
        print(f"\nPareto plot: {args.plot}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
