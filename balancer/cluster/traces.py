"""Cluster history rebuilt from job records: busy and idle CPUs on a grid from each job's start,
end and size, so a site starts with months of history instead of none."""

from __future__ import annotations

import numpy as np

from ..forecast.series import Series
from .swf import SwfTrace


def idle_from_jobs(start: np.ndarray, end: np.ndarray, cpus: np.ndarray, total: float, t0: float,
                   t1: float, step_s: float) -> Series:
    """Mean idle CPUs per slot of ``[t0, t1)``: ``total`` less the CPU-seconds jobs ran in each slot.

    Jobs with an unknown start or end (NaN) are left out. Exact for partial overlaps: a job's
    CPU-seconds are spread over the slots it covers with a cumulative sum, O(jobs + slots)."""
    n = max(1, int(np.ceil((t1 - t0) / step_s)))
    ok = np.isfinite(start) & np.isfinite(end) & (end > start) & (cpus > 0)
    s = np.clip(start[ok], t0, t1)
    e = np.clip(end[ok], t0, t1)
    c = cpus[ok].astype(np.float64)
    # busy(t) is a step function; its integral over each slot comes from the rate changes.
    edges = t0 + step_s * np.arange(n + 1)
    times = np.concatenate([s, e])
    rates = np.concatenate([c, -c])
    order = np.argsort(times, kind="stable")
    times, rates = times[order], rates[order]
    level = np.cumsum(rates)  # busy CPUs just after each change
    # Integral of busy(t) from t0 to each change point, then at each slot edge.
    if len(times):
        area_at = np.concatenate([[0.0], np.cumsum(level[:-1] * np.diff(times))])  # busy is 0 before
        idx = np.searchsorted(times, edges, side="right") - 1
        before = idx < 0
        idx_c = np.clip(idx, 0, None)
        area_edges = np.where(before, 0.0, area_at[idx_c] + level[idx_c] * (edges - times[idx_c]))
        busy = np.diff(area_edges) / step_s
    else:
        busy = np.zeros(n)
    idle = np.clip(total - busy, 0.0, total)
    return Series(float(t0), float(step_s), idle, float(total))


def swf_idle(trace: SwfTrace, step_s: float = 900.0) -> Series:
    """The trace's idle processors on a grid, in epoch seconds (as it ran, its waits included)."""
    start = trace.start_time
    end = start + np.where(trace.jobs["run"] >= 0, trace.jobs["run"], np.nan)
    t0 = float(np.nanmin(trace.jobs["submit"]))
    t0 -= t0 % step_s
    t1 = float(np.nanmax(end))
    s = idle_from_jobs(start, end, trace.procs, trace.max_procs, t0, t1, step_s)
    return Series(s.start + trace.unix_start, step_s, s.values, s.total)
