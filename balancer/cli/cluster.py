"""``balancer capacity collect|import|show``: fill and inspect the capacity history by hand.

``collect`` samples the cluster as a running balancer would (``--once`` or every ``--interval`` s),
``import`` rebuilds history from an SWF trace or ``sacct --json`` records, ``show`` summarises a
history. Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np

from balancer.capacity.collect import CollectError, Collector
from balancer.capacity.history import History, default_history_path
from balancer.capacity.sample import CapacitySample
from balancer.capacity.swf import TraceError
from balancer.capacity.traces import detect_format, load_series
from balancer.cli.apiclient import fig

EXIT_USAGE = 2


class _Usage(Exception):
    """A problem with the user's input, printed as one line."""


def add_capacity_parser(sub: Any) -> None:
    """Register ``capacity`` and its subcommands on the ``balancer`` parser's subparsers."""
    p = sub.add_parser("capacity", help="the cluster's idle capacity: collect, import and show history")
    csub = p.add_subparsers(dest="capacity_command", required=True, parser_class=type(p))
    q = csub.add_parser("collect", help="sample the cluster's capacity into the history")
    q.add_argument("--scheduler", choices=("local", "slurm", "hyperqueue"), default="local")
    q.add_argument("--history", type=Path, help=f"SQLite history (default {default_history_path()})")
    q.add_argument(
        "--partition", action="append", default=[], help="SLURM partition (repeatable; default all)"
    )
    q.add_argument("--server-dir", help="HyperQueue server directory (default $HQ_SERVER_DIR)")
    q.add_argument(
        "--cpus", type=int, help="SLURM: expected wait of a job of this many CPUs (sbatch --test-only)"
    )
    q.add_argument("--time-limit", help="SLURM: ... and this time limit (e.g. 01:00:00)")
    when = q.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="one sample, then exit (the default)")
    when.add_argument("--interval", type=_positive, help="sample every S seconds until interrupted")
    q.add_argument("--count", type=int, help="with --interval: stop after N samples")
    q.set_defaults(func=_main, action="collect")
    q = csub.add_parser("import", help="rebuild history from an SWF trace or sacct --json records")
    q.add_argument("file", type=Path)
    q.add_argument("--history", type=Path, help=f"SQLite history (default {default_history_path()})")
    q.add_argument(
        "--cpus", type=_positive, help="the cluster's CPUs (sacct JSON does not say; SWF: override)"
    )
    q.add_argument("--grid", type=_positive, default=900.0, help="slot length in seconds (default 900)")
    q.add_argument("--partition", default="", help="store under this partition name")
    q.set_defaults(func=_main, action="import")
    q = csub.add_parser("show", help="summarise a history")
    q.add_argument("--history", type=Path, help=f"SQLite history (default {default_history_path()})")
    q.add_argument("--grid", type=_positive, default=900.0, help="slot length in seconds (default 900)")
    q.set_defaults(func=_main, action="show")


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _main(args: argparse.Namespace) -> int:
    try:
        return {"collect": _collect, "import": _import, "show": _show}[args.action](args)
    except (_Usage, TraceError, CollectError) as exc:
        print(f"balancer capacity {args.action}: {exc}", file=sys.stderr)
    except sqlite3.Error as exc:
        print(f"balancer capacity {args.action}: history {args.history}: {exc}", file=sys.stderr)
    except OSError as exc:
        print(
            f"balancer capacity {args.action}: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr
        )
    return EXIT_USAGE


def _history(args: argparse.Namespace, must_exist: bool = False) -> History:
    path = args.history = args.history or default_history_path()
    if must_exist and not path.is_file():
        raise _Usage(f"no history at {path}")
    if path.is_file() and detect_format(path) != "history":
        raise _Usage(f"{path} is not a capacity history (SQLite)")
    return History(path)


# -- collect -----------------------------------------------------------------------------------------
def _collector(args: argparse.Namespace) -> Collector:
    if args.scheduler == "slurm":
        from balancer.capacity.collect_slurm import ProbeJob, SlurmCollector

        if args.cpus is not None and args.cpus < 1:
            raise _Usage(f"--cpus must be >= 1, got {args.cpus}")
        test_job = ProbeJob(args.cpus or 1, args.time_limit) if args.cpus or args.time_limit else None
        return SlurmCollector(partitions=args.partition, test_job=test_job)
    if args.scheduler == "hyperqueue":
        import shutil

        from balancer.capacity.collect_hq import HqCollector

        server_dir = args.server_dir or os.environ.get("HQ_SERVER_DIR")
        hq = shutil.which("hq")
        if hq is None:
            raise _Usage("hyperqueue: listing workers needs the hq binary, which is not on PATH")
        if not server_dir:
            raise _Usage("hyperqueue: give --server-dir or set HQ_SERVER_DIR")
        return HqCollector(server_dir, hq)
    from balancer.capacity.collect_local import LocalCollector

    return LocalCollector()


def _line(s: CapacitySample) -> str:
    when = datetime.datetime.fromtimestamp(s.t).isoformat(timespec="seconds")
    out = f"{when} {s.source} {s.partition or '-'} idle {fig(s.idle_cpus)}/{fig(s.total_cpus)} CPUs"
    if s.total_gpus:
        out += f", {fig(s.idle_gpus or 0)}/{fig(s.total_gpus)} GPUs"
    if s.pending_jobs is not None:
        out += f", {s.pending_jobs} pending ({fig(s.pending_cpus or 0)} CPUs)"
    if s.expected_wait_s is not None:
        out += f", expected wait {s.expected_wait_s:.0f} s"
    if s.load is not None:
        out += f", load {s.load:.2f}, memory {100 * (s.mem_used_frac or 0):.0f} %"
    return out


def _collect(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise _Usage(f"--count must be >= 1, got {args.count}")
    collector = _collector(args)
    with _history(args) as hist:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_collect_loop(collector, hist, args.interval, args.count if args.interval else 1))
    return 0


async def _collect_loop(
    collector: Collector, hist: History, interval: float | None, count: int | None
) -> None:
    loop = asyncio.get_running_loop()
    n = 0
    while count is None or n < count:
        started = loop.time()
        samples = await collector.sample()
        await asyncio.to_thread(hist.add, samples)
        for s in samples:
            print(_line(s), flush=True)
        n += 1
        if interval is not None and (count is None or n < count):
            await asyncio.sleep(max(0.0, started + interval - loop.time()))


# -- import / show -------------------------------------------------------------------------------------
def _import(args: argparse.Namespace) -> int:
    fmt = detect_format(args.file)
    if fmt == "history":
        raise _Usage(f"{args.file} is already a capacity history; point --history at it")
    series = load_series(args.file, args.grid, args.cpus)
    with _history(args) as hist:
        n = hist.import_series(series, fmt, args.partition)
    print(f"imported {n} slots of {fig(args.grid)} s ({fmt}, {fig(series.total)} CPUs) into {args.history}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _history(args, must_exist=True) as hist:
        span = hist.span()
        if span is None:
            raise _Usage(f"{args.history} holds no samples")
        rows = hist.sources()
        series = hist.series(args.grid)
    assert series is not None
    iso = [datetime.datetime.fromtimestamp(t).isoformat(timespec="minutes") for t in span]
    days = (span[1] - span[0]) / 86400
    print(
        f"history {args.history}: {sum(r[2] for r in rows)} samples, {iso[0]} .. {iso[1]} ({days:.1f} days)"
    )
    for source, part, n in rows:
        print(f"  {source:<10} {part or '-':<12} {n} samples")
    seen = np.isfinite(series.values)
    if seen.any():
        vals = series.values[seen]
        print(
            f"grid {fig(args.grid)} s: {int(seen.sum())} of {len(seen)} slots observed; idle CPUs mean "
            f"{vals.mean():.1f}, min {fig(vals.min())}, max {fig(vals.max())} of {fig(series.total)}"
        )
    return 0
