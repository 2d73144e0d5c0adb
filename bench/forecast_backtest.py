"""Forecaster backtests on the KTH SP2 and LANL CM-5 traces, side by side (the README's table).

Rolling origins a week apart (40 by default), 15-min grid, 48 h horizon: per forecaster the mean
absolute error in idle processors, the share of actuals inside its 80 % interval and the mean fit
time per origin, the baselines (seasonal-naive over a day and a week, the historic mean, the last
value) marked beside the models, and which one the automatic choice takes (never one that loses to
a baseline). statsforecast's models take part where installed. The traces are read from
../shared/data/traces beside the repository and never copied into it.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from balancer.capacity.backtest import BacktestResult, backtest, format_table, load_history, parse_duration
from balancer.capacity.forecasters import FORECASTERS

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
SITES = {"KTH SP2": "KTH-SP2-1996-2.1-cln.swf.gz", "LANL CM-5": "LANL-CM5-1994-4.1-cln.swf.gz"}


def run_site(
    path: Path, names: list[str], grid_s: float, horizon_s: float, origins: int
) -> list[BacktestResult]:
    series = load_history(str(path), grid_s)
    return backtest(series, names, series.slots_per(horizon_s), origins)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", default="15m")
    ap.add_argument("--horizon", default="48h")
    ap.add_argument("--origins", type=int, default=40)
    ap.add_argument("--models", default=",".join(FORECASTERS))
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n]
    grid_s, horizon_s = parse_duration(args.grid), parse_duration(args.horizon)
    missing = [f for f in SITES.values() if not (TRACES / f).is_file()]
    if missing:
        print(f"traces not found in {TRACES}: {', '.join(missing)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(SITES)) as pool:  # one trace per core
        futures = {
            label: pool.submit(run_site, TRACES / f, names, grid_s, horizon_s, args.origins)
            for label, f in SITES.items()
        }
        results = {label: fut.result() for label, fut in futures.items()}
    print(
        f"grid {args.grid}, horizon {args.horizon}, {args.origins} weekly origins; MAE in idle processors "
        f"(KTH of 100, LANL of 1,024); cov80: share of actuals inside the 80% interval; fit s: per origin;\n"
        f"(baseline): a naive forecast the automatic choice must beat (else it takes the best of them)"
    )
    print(format_table(results))
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
