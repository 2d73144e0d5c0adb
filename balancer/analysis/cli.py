"""``analyze`` and ``plot`` subcommands, registered on the balancer CLI by ``add_subcommands``.

Imports of pandas and matplotlib happen inside the commands, so registering the subcommands costs
nothing and the balancer runs without the ``analysis`` extras installed. Bad input prints one line
("error: ...") and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from balancer.analysis.errors import AnalysisError

EXIT_OK = 0
EXIT_OUTPUT = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130

_EXTRAS_HINT = "the analysis needs pandas, matplotlib and tqdm: pip install 'umbridge-balancer[analysis]'"

_RUN_HELP = (
    "a balancer journal (or run directory), a HyperQueue journal export (hq journal export) "
    "or sacct --json output; the format is detected from the content"
)


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn bad input, missing extras and Ctrl-C into one line and an exit status."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except AnalysisError as exc:
            _err(str(exc))
            return EXIT_INPUT
        except ImportError as exc:
            _err(f"{_EXTRAS_HINT} ({exc.name or exc})")
            return EXIT_INPUT
        except KeyboardInterrupt:
            _err("interrupted")
            return EXIT_INTERRUPTED

    run.__doc__ = fn.__doc__
    return run


def _load(paths: Sequence[str], progress: bool | None) -> list[Any]:
    """Load every run, printing each run's warnings (skipped lines, unknown events) to stderr."""
    from balancer.analysis.load import load_run

    runs = []
    for p in paths:
        run = load_run(p, progress=progress)
        for w in run.warnings:
            print(f"warning: {w}", file=sys.stderr)
        runs.append(run)
    return runs


@_guarded
def cmd_analyze(args: argparse.Namespace) -> int:
    """Print the side-by-side summary; optionally write it (and the per-call table) as CSV."""
    import orjson

    from balancer.analysis.summary import format_table, to_json, write_csv

    runs = _load(args.runs, args.progress)
    summaries = [r.summary() for r in runs]
    if args.json:
        sys.stdout.write(orjson.dumps(to_json(runs, summaries), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_table(runs, summaries))
        from balancer.analysis.workload import format_workload, workload_rows

        for r in runs:  # the workload classes a balancer journaled, per spec
            block = format_workload(r.name, workload_rows(r.path)) if r.fmt == "journal" else ""
            if block:
                print(block)
    try:
        if args.csv:
            write_csv(args.csv, runs, summaries)
        if args.calls_csv:
            import pandas as pd

            from balancer.analysis.summary import unique_names

            frames = [r.calls.assign(run=n) for n, r in zip(unique_names(runs), runs, strict=True)]
            pd.concat(frames, ignore_index=True).to_csv(args.calls_csv, index=False)
    except OSError as exc:
        _err(f"cannot write {exc.filename}: {exc.strerror}")
        return EXIT_OUTPUT
    return EXIT_OK


@_guarded
def cmd_plot(args: argparse.Namespace) -> int:
    """Write the plots of the runs (PNG, SVG, PDF) into the output directory and list them."""
    formats = [f.strip().lower() for arg in args.format or ["png"] for f in arg.split(",") if f.strip()]
    labels = args.label or None
    if labels and len(labels) != len(args.runs):  # before loading: a typo costs no long load
        raise AnalysisError(f"{len(labels)} --label given for {len(args.runs)} run(s): give one per run")
    from balancer.analysis.plots import FORMATS, make_figures, save_figures

    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise AnalysisError(f"--format {','.join(bad)}: expected png, svg or pdf")
    runs = _load(args.runs, args.progress)
    try:
        paths = save_figures(make_figures(runs, labels), args.output, dpi=args.dpi, formats=formats)
    except OSError as exc:
        _err(f"cannot write plots to {args.output}: {exc.strerror or exc}")
        return EXIT_OUTPUT
    for p in paths:
        print(p)
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _progress_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_const",
        const=True,
        default=None,
        help="always show a progress bar while loading (default: on a terminal, for long loads)",
    )
    g.add_argument(
        "--no-progress", dest="progress", action="store_const", const=False, help="never show a progress bar"
    )


def add_subcommands(subparsers: Any) -> None:
    """Register ``analyze`` and ``plot`` on an argparse subparsers object; each sets ``func(args) -> int``."""
    a = subparsers.add_parser(
        "analyze",
        help="timing summary of one or more runs, side by side",
        description="Per-run timing summary (makespan, lag, SLR, throughput, server start-up and "
        "utilisation) with the runs as columns. Metrics a format does not have show as '-'.",
    )
    a.add_argument("runs", nargs="+", metavar="RUN", help=_RUN_HELP)
    a.add_argument("--csv", metavar="FILE", help="also write the summary table as CSV (raw numbers)")
    a.add_argument("--calls-csv", metavar="FILE", help="also write the per-call table of all runs as CSV")
    a.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    _progress_flags(a)
    a.set_defaults(func=cmd_analyze)

    p = subparsers.add_parser(
        "plot",
        help="plots of one or more runs (PNG, SVG, PDF)",
        description="Makespan and lag distributions, a server timeline per run, queue length and live "
        "servers over time, and server utilisation, as PNG, SVG or PDF files.",
        epilog="example: balancer plot RUN_A RUN_B --label a --label b --format pdf -o figs",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help=_RUN_HELP)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for the plot files")
    p.add_argument(
        "--format",
        action="append",
        metavar="FMT",
        help="png, svg or pdf; repeat or separate by commas for several (default: png)",
    )
    p.add_argument("--dpi", type=_positive_int, default=110, help="resolution of PNGs (default: 110)")
    p.add_argument(
        "--label",
        action="append",
        metavar="TEXT",
        help="the run's name in legends and titles, one per RUN in order (default: the run's name)",
    )
    _progress_flags(p)
    p.set_defaults(func=cmd_plot)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m balancer.analysis``."""
    parser = argparse.ArgumentParser(
        prog="python -m balancer.analysis", description="Timing analysis of runs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{analyze,plot}")
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))
