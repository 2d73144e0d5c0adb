"""Rolling-origin backtests of the forecasters on a site's own history, and the choice among them.

At each origin a forecaster is fitted on the history before it and predicts the next ``horizon``
slots, which are compared with what happened. Every forecaster sees the same origins, so the
figures are comparable; nothing here draws a random number and the extras are seeded, so the
same history gives the same errors on every run. A model is chosen only when it strictly beats
every baseline (seasonal-naive over a day and a week, the historic mean, the last value): a
forecast worse than "tomorrow repeats today", "as usual" or "as now" would steer the pool wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from balancer.capacity.forecasters import BASELINE, BASELINES, FORECASTERS, make
from balancer.capacity.series import DAY_S, Series
from balancer.units import parse_duration

DEFAULT_MIN_TRAIN_S = 28 * DAY_S  # history before the first origin: four weeks of weekly pattern


@dataclass(frozen=True)
class BacktestResult:
    """One forecaster's errors over all origins. ``mae`` is None when it failed (``error`` says
    why); ``coverage`` is the share of actuals inside its interval, None without one."""

    name: str
    mae: float | None
    coverage: float | None
    origins: int
    points: int
    fit_s: float  # mean seconds per origin, fit and predict
    error: str | None = None


def origin_slots(n: int, horizon: int, count: int, every: int, min_train: int) -> list[int]:
    """Up to ``count`` origins, ``every`` slots apart, the last one ``horizon`` slots before the
    end, none with less than ``min_train`` slots of history before it; ascending."""
    last = n - horizon
    out = [last - i * every for i in range(count) if last - i * every >= max(1, min_train)]
    return sorted(out)


def backtest(
    series: Series,
    names: Sequence[str],
    horizon: int,
    origins: int = 40,
    every: int | None = None,
    max_train: int | None = None,
    min_train: int | None = None,
) -> list[BacktestResult]:
    """Backtest each named forecaster on ``series`` (see ``origin_slots``; ``every`` defaults to
    one week, ``min_train`` to four weeks, ``max_train`` caps each fit's history). Actuals that are
    missing (NaN) are skipped. ``ValueError`` when the series leaves room for no origin."""
    if horizon < 1 or origins < 1:
        raise ValueError("horizon and origins must be at least 1")
    every = every or series.slots_per(7 * DAY_S)
    min_train = series.slots_per(DEFAULT_MIN_TRAIN_S) if min_train is None else min_train
    slots = origin_slots(len(series.values), horizon, origins, every, min_train)
    slots = [o for o in slots if np.isfinite(series.values[o : o + horizon]).any()]
    if not slots:
        span = len(series.values) * series.step_s / DAY_S
        need = (min_train + horizon) * series.step_s / DAY_S
        raise ValueError(
            f"the history spans {span:.1f} d; a backtest needs at least {need:.1f} d "
            "(the minimum training history plus the horizon)"
        )
    return [_one(series, name, horizon, slots, max_train) for name in names]


def _one(series: Series, name: str, horizon: int, slots: list[int], max_train: int | None) -> BacktestResult:
    abs_err: list[np.ndarray] = []
    inside: list[np.ndarray] = []
    has_interval = True
    spent = 0.0
    for o in slots:
        lo_slot = 0 if max_train is None else max(0, o - max_train)
        train = Series(
            series.start + lo_slot * series.step_s, series.step_s, series.values[lo_slot:o], series.total
        )
        model = make(name)
        t0 = time.perf_counter()
        try:
            model.fit(train)
            p = model.predict(horizon)
        except ValueError as exc:  # too little history: the model's own words
            return BacktestResult(name, None, None, 0, 0, 0.0, error=str(exc))
        except Exception as exc:  # an optional library failing on this data fails this model only
            return BacktestResult(name, None, None, 0, 0, 0.0, error=f"{type(exc).__name__}: {exc}")
        spent += time.perf_counter() - t0
        actual = series.values[o : o + horizon]
        ok = np.isfinite(actual)
        abs_err.append(np.abs(np.asarray(p.mean)[ok] - actual[ok]))
        if p.lo is None or p.hi is None:
            has_interval = False
        else:
            a = actual[ok]
            inside.append((np.asarray(p.lo)[ok] <= a) & (a <= np.asarray(p.hi)[ok]))
    err = np.concatenate(abs_err)
    coverage = float(np.concatenate(inside).mean()) if has_interval and inside else None
    return BacktestResult(name, float(err.mean()), coverage, len(slots), len(err), spent / len(slots))


def choose(results: Sequence[BacktestResult], baselines: Sequence[str] = BASELINES) -> str:
    """The forecaster with the lowest MAE if it strictly beats every baseline that was backtested;
    else the best baseline. Nothing chosen ever has a higher error than any baseline. With no
    baseline backtested (or all failed), ``BASELINE``: nothing beat a baseline provably."""
    ok = [(r.mae, r.name) for r in results if r.mae is not None and math.isfinite(r.mae)]
    bases = [(mae, name) for mae, name in ok if name in baselines]
    if not bases:
        return BASELINE
    best_base = min(bases)  # lowest MAE, ties by name
    models = [(mae, name) for mae, name in ok if name not in baselines]
    if models and min(models)[0] < best_base[0]:
        return min(models)[1]
    return best_base[1]


def best_baseline(results: Sequence[BacktestResult]) -> BacktestResult | None:
    """The baseline with the lowest MAE (the bar a model had to clear), or None."""
    bases = [r for r in results if r.name in BASELINES and r.mae is not None and math.isfinite(r.mae)]
    return min(bases, key=lambda r: (r.mae, r.name)) if bases else None


def format_table(results_by_series: dict[str, Sequence[BacktestResult]]) -> str:
    """Plain-text table, one row per forecaster, MAE / coverage / fit time per series side by side."""
    names: list[str] = []
    for rs in results_by_series.values():
        names += [r.name for r in rs if r.name not in names]
    head = ["model"]
    for label in results_by_series:
        head += [f"{label} MAE" if len(results_by_series) > 1 else "MAE", "cov80", "fit s"]
    rows = [head]
    for name in names:
        row = [f"{name} (baseline)" if name in BASELINES else name]
        for rs in results_by_series.values():
            r = next((x for x in rs if x.name == name), None)
            if r is None or r.mae is None:
                row += ["failed" if r is not None else "-", "", ""]
            else:
                cov = "-" if r.coverage is None else f"{r.coverage:.2f}"
                row += [f"{r.mae:.2f}", cov, f"{r.fit_s:.3f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for label, rs in results_by_series.items():
        n = next((r.origins for r in rs if r.mae is not None), 0)
        b = best_baseline(rs)
        bar = f"best baseline {b.name} (MAE {b.mae:.2f}); " if b is not None and b.mae is not None else ""
        lines.append(f"{label}: {n} origins; {bar}chosen: {choose(rs)}")
        lines += [f"  {r.name} failed: {r.error}" for r in rs if r.error]
    return "\n".join(lines)


def load_history(path: str, step_s: float) -> Series:
    """Idle CPUs on the grid from a capacity history, an SWF trace or sacct JSON."""
    try:
        from balancer.capacity.traces import load_series
    except ImportError:  # an older tree: SWF traces only
        from balancer.capacity.swf import read_swf
        from balancer.capacity.traces import swf_idle

        return swf_idle(read_swf(path), step_s)
    return load_series(path, step_s)


def add_backtest_parser(forecast_subparsers: Any) -> argparse.ArgumentParser:
    """``balancer forecast backtest HISTORY|TRACE ...`` under the ``forecast`` subcommand."""
    p = forecast_subparsers.add_parser(
        "backtest",
        help="rolling-origin backtests of the forecasters on a history or trace",
        description="Fit each forecaster at weekly origins and print its mean absolute error, the "
        "coverage of its 80% interval and its fit time, side by side; the baselines (seasonal-naive, "
        "historic mean, last value) are marked, and the choice never loses to any of them.",
    )
    p.add_argument("path", metavar="HISTORY|TRACE", help="capacity history (SQLite), SWF trace or sacct JSON")
    p.add_argument("--grid", default="15m", help="grid step (default 15m; 900 = seconds)")
    p.add_argument("--horizon", default="48h", help="forecast horizon (default 48h)")
    p.add_argument("--origins", default="40", help="number of origins (default 40)")
    p.add_argument("--every", default="7d", help="time between origins (default 7d)")
    p.add_argument("--min-train", default="28d", help="history before the first origin (default 28d)")
    p.add_argument("--train", default=None, help="cap each fit's history (default: all before the origin)")
    p.add_argument("--models", default=None, help=f"comma-separated (default all: {','.join(FORECASTERS)})")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=backtest_main)
    return p


def backtest_main(args: argparse.Namespace) -> int:
    """Run the ``backtest`` subcommand; a user error is one line on stderr and exit code 2."""
    try:
        step = parse_duration(args.grid)
        horizon_s, every_s = parse_duration(args.horizon), parse_duration(args.every)
        min_train_s = parse_duration(args.min_train)
        train_s = parse_duration(args.train) if args.train else None
        if not re.fullmatch(r"\d+", args.origins.strip()) or int(args.origins) < 1:
            raise ValueError(f"--origins must be a positive integer, got {args.origins!r}")
        names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else list(FORECASTERS)
        if not names:
            raise ValueError("--models names no forecaster")
        for n in names:
            make(n)  # a KeyError names the known ones or the extra to install
        if not Path(args.path).is_file():
            raise ValueError(f"{args.path}: no such file")
        series = load_history(args.path, step)
        grid = series.slots_per
        results = backtest(
            series,
            names,
            grid(horizon_s),
            int(args.origins),
            grid(every_s),
            grid(train_s) if train_s else None,
            grid(min_train_s),
        )
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    label = Path(args.path).name
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(args.path),
                    "grid_s": step,
                    "horizon_s": horizon_s,
                    "baseline": BASELINE,
                    "baselines": [n for n in BASELINES if n in names],
                    "chosen": choose(results),
                    "results": [_finite(asdict(r)) for r in results],
                },
                indent=2,
            )
        )
    else:
        print(format_table({label: results}))
    return 0


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinity as null: JSON has neither."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def _fail(message: str) -> int:
    print(f"balancer: error: {message.splitlines()[0] if message else 'backtest failed'}", file=sys.stderr)
    return 2


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"balancer: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """``python -m balancer.capacity.backtest`` = ``balancer forecast backtest``."""
    parser = _OneLineParser(prog="balancer forecast")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    add_backtest_parser(sub)
    args = parser.parse_args(["backtest", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
