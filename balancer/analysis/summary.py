"""Summary metrics per run and the side-by-side table (runs as columns, metrics as rows).

Latency statistics are over successful model evaluations only; metadata calls (Info, ModelInfo,
sizes), failures and unfinished calls are counted in their own rows so they cannot skew the
percentiles. Whole-run time spans the first call received to the last call finished, the definition
that reproduces the ISC 2025 figures (first job-created to last job-completed).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # a Run is summarized here; Run.summary() calls summarize, so no import at run time
    from balancer.analysis.model import Run

#: Metadata operations, answered from the balancer's cache after the first time.
METADATA_OPS = frozenset({"Info", "ModelInfo", "InputSizes", "OutputSizes"})

#: (key, label, kind). ``kind`` picks the formatting: int, s (seconds), rate, ratio, pct, str.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("format", "format", "str"),
    ("evaluations", "evaluations (calls)", "int"),
    ("metadata_calls", "metadata calls", "int"),
    ("failed_calls", "failed calls", "int"),
    ("unfinished_calls", "unfinished calls", "int"),
    ("retried_calls", "calls dispatched again", "int"),
    ("whole_run_s", "whole run [s]", "s"),
    ("throughput_per_s", "throughput [evaluations/s]", "rate"),
    ("makespan_p50_s", "makespan p50 [s]", "s"),
    ("makespan_p90_s", "makespan p90 [s]", "s"),
    ("makespan_p99_s", "makespan p99 [s]", "s"),
    ("queue_wait_p50_s", "queue wait p50 [s]", "s"),
    ("compute_p50_s", "compute p50 [s]", "s"),
    ("lag_p50_s", "lag p50 [s]", "s"),
    ("lag_p90_s", "lag p90 [s]", "s"),
    ("slr_p50", "SLR p50", "ratio"),
    ("server_starts", "server starts", "int"),
    ("servers_preempted", "servers preempted", "int"),
    ("startup_p50_s", "start-up p50 [s]", "s"),
    ("utilisation", "utilisation", "pct"),
    ("idle_server_s", "idle server-seconds [s]", "s"),
    ("capacity_samples", "capacity samples", "int"),
    ("idle_cpus_mean", "idle CPUs, mean observed", "ratio"),
    ("forecast_mae_cpus", "forecast error, MAE [CPUs]", "ratio"),
    ("forecast_bias_cpus", "forecast bias, mean [CPUs]", "ratio"),
)

_FORMAT_NAMES = {"journal": "journal", "hq": "hq-export", "sacct": "sacct"}


def _q(values: Any, q: float) -> float | None:
    """Quantile (linear interpolation, so p50 is the usual median) of the finite values; None if none."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(np.quantile(arr, q)) if arr.size else None


def _num(x: Any) -> float | None:
    """A finite float or None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(run: Run) -> dict[str, Any]:
    """The summary of one run as ``{metric key: value}``; None where the metric is unavailable."""
    c = run.calls
    ev = c[c["evaluation"].astype(bool)]
    ok = ev[ev["outcome"] == "ok"]
    s = run.servers
    first, last = c["received"].min(), c["completed"].max()
    whole = _num(last - first) if len(c) else None
    n_ok = len(ok)

    busy = s["busy"].sum(min_count=1) if len(s) else np.nan
    if run.aggregate_busy is not None:
        busy = run.aggregate_busy
    lifetime = s["lifetime"].sum(min_count=1) if len(s) else np.nan
    util = busy / lifetime if (lifetime and lifetime > 0) else np.nan

    out: dict[str, Any] = {
        "format": _FORMAT_NAMES.get(run.fmt, run.fmt),
        "evaluations": len(ev),
        "metadata_calls": int(c["op"].isin(METADATA_OPS).sum()),
        "failed_calls": int((c["outcome"] == "failed").sum()),
        "unfinished_calls": int((c["outcome"] == "unfinished").sum()),
        "retried_calls": int((c["attempts"] > 1).sum()),
        "whole_run_s": whole,
        "throughput_per_s": (n_ok / whole) if whole else None,
        "makespan_p50_s": _q(ok["makespan"], 0.5),
        "makespan_p90_s": _q(ok["makespan"], 0.9),
        "makespan_p99_s": _q(ok["makespan"], 0.99),
        "queue_wait_p50_s": _q(ok["queue_wait"], 0.5),
        "compute_p50_s": _q(ok["compute"], 0.5),
        "lag_p50_s": _q(ok["lag"], 0.5),
        "lag_p90_s": _q(ok["lag"], 0.9),
        "slr_p50": _q(ok["slr"], 0.5),
        "server_starts": len(s),
        "servers_preempted": int((s["end_reason"] == "preempted").sum()) if "end_reason" in s else 0,
        "startup_p50_s": _q(s["startup"], 0.5),
        "utilisation": _num(util),
        "idle_server_s": _num(lifetime - busy),
    }
    out.update(_forecast_error(run))
    for key in run.unavailable:
        out[key] = None
    return out


def _forecast_error(run: Run) -> dict[str, Any]:
    """Forecast error over the run: each capacity sample against what the forecast in use predicted
    for that moment (predicted - observed, so a positive bias means the forecast was too hopeful)."""
    cap = run.capacity
    if cap is None or not len(cap):
        return {"capacity_samples": None, "idle_cpus_mean": None, "forecast_mae_cpus": None,
                "forecast_bias_cpus": None}  # fmt: skip
    both = cap[np.isfinite(cap["predicted"]) & np.isfinite(cap["idle"])]
    err = both["predicted"] - both["idle"]
    return {
        "capacity_samples": len(cap),
        "idle_cpus_mean": _num(cap["idle"].mean()),
        "forecast_mae_cpus": _num(err.abs().mean()) if len(both) else None,
        "forecast_bias_cpus": _num(err.mean()) if len(both) else None,
    }


def _fmt(value: Any, kind: str) -> str:
    """Readable text for one cell; "-" for a metric the run does not have."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "str":
        return str(value)
    if kind == "int":
        return f"{int(value):d}"
    if kind == "s":
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    if kind == "rate":
        return f"{value:.2f}"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    return str(value)


def unique_names(runs: Sequence[Run]) -> list[str]:
    """Column names: run names, made unique with a counter where two runs share a name."""
    seen: dict[str, int] = {}
    names = []
    for r in runs:
        n = seen.get(r.name, 0)
        seen[r.name] = n + 1
        names.append(r.name if n == 0 else f"{r.name} ({n + 1})")
    return names


def format_table(runs: Sequence[Run], summaries: Sequence[dict[str, Any]] | None = None) -> str:
    """Plain-text table, runs as columns and metrics as rows, with notes underneath."""
    summaries = summaries if summaries is not None else [r.summary() for r in runs]
    names = unique_names(runs)
    rows = [["metric", *names]]
    rows += [[label, *(_fmt(s.get(key), kind) for s in summaries)] for key, label, kind in METRICS]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    for name, run in zip(names, runs, strict=True):
        lines += [f"note [{name}]: {note}" for note in run.notes]
    return "\n".join(lines)


def to_json(runs: Sequence[Run], summaries: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Machine-readable summary: one entry per run with its metrics (null where unavailable)."""
    summaries = summaries if summaries is not None else [r.summary() for r in runs]
    return {
        "runs": [
            {"name": n, "path": str(r.path), "metrics": s, "notes": r.notes}
            for n, r, s in zip(unique_names(runs), runs, summaries, strict=True)
        ]
    }


def write_csv(path: Path, runs: Sequence[Run], summaries: Sequence[dict[str, Any]] | None = None) -> None:
    """The summary table as CSV with raw numbers (metric key, label, one column per run)."""
    summaries = summaries if summaries is not None else [r.summary() for r in runs]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "label", *unique_names(runs)])
        for key, label, _ in METRICS:
            w.writerow([key, label, *("" if s.get(key) is None else s[key] for s in summaries)])
