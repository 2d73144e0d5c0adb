"""``balancer simulate``: a UQ campaign on a replayed cluster trace under each scaling policy.

``add_simulate_parser(subparsers)`` adds the subcommand to the balancer's CLI; ``main(argv)`` runs it
on its own (``python -m balancer.cli.simulate``). Bad input is one line ``balancer: error: ...`` and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import datetime, timezone
from typing import Any, NoReturn

import orjson

from balancer import units
from balancer.capacity.swf import SwfTrace, TraceError, read_swf
from balancer.sim import campaign as camp
from balancer.sim.cluster import OVERRUNS
from balancer.sim.replay import Replay
from balancer.sim.report import metrics, plot, table
from balancer.sim.run import ON_NOTICE, POLICIES, SimConfig, simulate

DAY_S = 86400.0


class UsageError(ValueError):
    """Input the simulator cannot use, phrased for the user."""


def add_simulate_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "simulate",
        help="replay a cluster trace and compare scaling policies",
        description=__doc__.split("\n")[0],
    )
    p.add_argument("--trace", required=True, help="SWF trace (.swf or .swf.gz)")
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--start",
        help="campaign start: an ISO date/time (UTC unless it says) or seconds from the trace's start",
    )
    when.add_argument(
        "--start-day",
        type=float,
        help="campaign start in days from the trace's start "
        "(default 14: two weeks of history to forecast from)",
    )
    p.add_argument("--calls", type=int, default=20000, help="calls in the campaign (default 20000)")
    p.add_argument(
        "--call-mean-s", type=float, default=120.0, help="mean compute time of a call (default 120)"
    )
    p.add_argument(
        "--call-sigma", type=float, default=0.5, help="lognormal sigma of compute times (default 0.5)"
    )
    p.add_argument(
        "--calls-from",
        metavar="JOURNAL",
        help="draw compute times from a balancer journal's evaluations instead (needs the analysis extra)",
    )
    p.add_argument("--arrival-rate", type=float, help="calls per second (default: all at the start)")
    p.add_argument("--max-servers", type=int, default=32)
    p.add_argument("--cpus", type=int, default=1, help="CPUs per server job (default 1)")
    p.add_argument("--backlog", type=int, default=2, help="starts in flight without a forecast (default 2)")
    p.add_argument(
        "--time-limit",
        default="4h",
        help="the spec's job time limit: 4h, 90m, 3600s or SLURM's D-HH:MM:SS (default 4h)",
    )
    p.add_argument("--startup-s", type=float, default=30.0, help="job start to server ready (default 30)")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, of " + ",".join(POLICIES))
    p.add_argument(
        "--forecaster",
        default=None,
        help="forecaster for the forecast, harvest and hybrid policies (default: seasonal-naive-day)",
    )
    p.add_argument(
        "--scheduler",
        default="easy",
        choices=("easy", "fairshare"),
        help="the replay's scheduler (default easy)",
    )
    p.add_argument("--grace-s", type=float, default=60.0, help="preemption grace time (default 60)")
    p.add_argument(
        "--overrun",
        default="cap",
        choices=OVERRUNS,
        help="trace jobs that ran past their request: killed at it (cap, the default: the replayed"
        " waits match the recorded ones) or run to their recorded end (extend)",
    )
    p.add_argument(
        "--on-notice",
        default="now",
        choices=ON_NOTICE,
        help="a preempted server: hands its call back and ends at once (now, the default, as the"
        " live launcher), finishes its call within the grace time (hold), or ends once idle (idle)",
    )
    p.add_argument("--floor", type=int, help="hybrid: normal-priority servers (default: max_servers // 4)")
    # A compressed slice (bench/live_replay.py writes one as SWF) runs at the live balancer's pace:
    p.add_argument("--idle-timeout-s", type=float, default=60.0, help="the spec's idle timeout (default 60)")
    p.add_argument(
        "--tick-s", type=float, default=30.0, help="seconds between scaling passes (default 30; live: 0.25)"
    )
    p.add_argument("--slot-s", type=float, default=900.0, help="the capacity series' time slot (default 900)")
    p.add_argument(
        "--cold-view",
        default="observe",
        choices=("observe", "none"),
        help="what harvest and hybrid see before a forecast is trained: the current observation"
        " (observe, the default) or nothing, as the live balancer (none)",
    )
    p.add_argument(
        "--one-node",
        action="store_true",
        help="the machine is one node: SLURM's backfill reserves it whole for the queue's head"
        " (the live replay's test cluster)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="PATH.png", help="write the plots here")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=simulate_main)
    return p


def simulate_main(args: argparse.Namespace) -> int:
    """Run the subcommand; every error the user can fix is one line and exit status 2."""
    try:
        return _run(args)
    except (UsageError, TraceError) as exc:
        print(f"balancer: error: {exc}", file=sys.stderr)
        return 2


def parse_duration(text: str) -> float:
    """``--time-limit`` in seconds ("4h", "90m", "3600", "04:00:00"; ``units.parse_duration``)."""
    try:
        return units.parse_duration(text)
    except ValueError:
        raise UsageError(f"--time-limit: expected e.g. 4h, 90m or 04:00:00 (> 0), got {text!r}") from None


def campaign_start(trace: SwfTrace, start: str | None, start_day: float | None) -> float:
    """Seconds from the trace's start at which the campaign begins."""
    if start is not None:
        try:
            return float(start)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(start)
        except ValueError:
            raise UsageError(f"--start: expected an ISO date/time or seconds, got {start!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp() - trace.unix_start
    return (14.0 if start_day is None else start_day) * DAY_S


def _check_numbers(args: argparse.Namespace) -> None:
    """The numeric options' ranges."""
    for name in ("calls", "max_servers", "cpus", "backlog"):
        if getattr(args, name) < (0 if name == "backlog" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be >= {0 if name == 'backlog' else 1}")
    if not args.call_mean_s > 0 or not args.call_sigma >= 0 or not args.startup_s >= 0:
        raise UsageError("--call-mean-s must be > 0, --call-sigma and --startup-s >= 0")
    if not args.grace_s >= 0 or (args.floor is not None and args.floor < 0):
        raise UsageError("--grace-s and --floor must be >= 0")
    if args.arrival_rate is not None and not args.arrival_rate > 0:
        raise UsageError("--arrival-rate must be > 0")
    if not (args.idle_timeout_s > 0 and args.tick_s > 0 and args.slot_s > 0):
        raise UsageError("--idle-timeout-s, --tick-s and --slot-s must be > 0")


def _run(args: argparse.Namespace) -> int:
    from balancer.capacity.forecasters import BASELINE, FORECASTERS

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        raise UsageError(f"--policies: unknown {', '.join(bad) or '(none)'} (known: {', '.join(POLICIES)})")
    forecaster = args.forecaster or BASELINE
    if forecaster not in FORECASTERS:
        raise UsageError(f"--forecaster: unknown {forecaster!r} (known: {', '.join(FORECASTERS)})")
    _check_numbers(args)
    time_limit = parse_duration(args.time_limit)
    trace = read_swf(args.trace)
    if args.cpus > trace.max_procs:
        raise UsageError(f"--cpus {args.cpus} exceeds the trace's machine ({trace.max_procs} CPUs)")
    start = campaign_start(trace, args.start, args.start_day)
    last = float(trace.jobs["submit"].max())
    if not 0 <= start < last:
        raise UsageError(f"the campaign start lies outside the trace (0 .. {last / DAY_S:.1f} days)")
    if args.calls_from:
        try:
            times = camp.journal_times(args.calls_from)
        except (OSError, ValueError, ImportError) as exc:
            raise UsageError(f"--calls-from: {exc}") from None
        try:
            c = camp.from_times(times, args.calls, args.arrival_rate, args.seed)
        except ValueError as exc:
            raise UsageError(f"--calls-from {args.calls_from}: {exc}") from None
    else:
        c = camp.lognormal(args.calls, args.call_mean_s, args.call_sigma, args.arrival_rate, args.seed)
    cfg = SimConfig(
        max_servers=args.max_servers,
        cpus=args.cpus,
        backlog=args.backlog,
        time_limit_s=time_limit,
        startup_delay_s=args.startup_s,
        forecaster=forecaster,
        floor=args.floor,
        on_notice=args.on_notice,
        idle_timeout_s=args.idle_timeout_s,
        tick_s=args.tick_s,
        step_s=args.slot_s,
        observe_cold=args.cold_view == "observe",
    )
    t_wall = time.perf_counter()
    replay = Replay(
        trace,
        [start],
        cfg.step_s,
        scheduler=args.scheduler,
        preempt_grace_s=args.grace_s,
        overrun=args.overrun,
        one_node=args.one_node,
    )
    results = [simulate(replay, start, c, p, cfg) for p in policies]
    wall = time.perf_counter() - t_wall
    cols = {r.policy: metrics(r, replay) for r in results}
    if args.plot:
        try:
            plot(results, args.plot, replay)
        except OSError as exc:
            raise UsageError(f"--plot: cannot write {args.plot}: {exc.strerror or exc}") from None
    when = datetime.fromtimestamp(trace.unix_start + start, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.json:
        out = {
            "trace": trace.path,
            "start_s": start,
            "start": when,
            "calls": len(c),
            "work_s": c.work_s,
            "forecaster": forecaster,
            "scheduler": args.scheduler,
            "overrun": replay.overrun,
            "overrun_cpu_h": replay.overrun_cpu_h,
            "on_notice": cfg.on_notice,
            "wall_s": wall,
            "policies": {
                p: {k: (v if math.isfinite(v) else None) for k, v in m.items()} for p, m in cols.items()
            },
        }
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        title = (
            f"{trace.path}: {len(c)} calls ({c.work_s / 3600:.0f} server-hours of work) from {when}, "
            f"max {cfg.max_servers} servers of {cfg.cpus} CPU, forecaster {forecaster}"
        )
        print(table(cols, title))
        print(
            f"the trace's jobs that ran past their request: {replay.overrun_cpu_h:,.0f} CPU-h"
            f" ({replay.overrun_jobs} jobs), replayed with overrun={replay.overrun!r};"
            f" scheduler {args.scheduler}"
        )
        print(f"simulated in {wall:.1f} s")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"balancer: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    """``balancer simulate`` on its own: what ``balancer/cli/main.py`` wires in as a subcommand."""
    parser = _Parser(prog="balancer")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_simulate_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
