"""Cluster history rebuilt from job records: busy and idle CPUs on a grid from each job's start,
end and size, so a site starts with months of history instead of none.

``load_series`` reads whatever a user points at (a capacity history, an SWF trace, ``sacct --json``)
as one ``Series``, for the backtest, the simulator and ``balancer capacity import``."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from balancer.capacity.series import Series
from balancer.capacity.swf import SwfTrace, TraceError, read_swf


def idle_from_jobs(
    start: np.ndarray, end: np.ndarray, cpus: np.ndarray, total: float, t0: float, t1: float, step_s: float
) -> Series:
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


def slurm_number(value: Any) -> float:
    """A Slurm JSON number (epoch seconds, a count): a plain integer (22.05) or a ``{"set",
    "infinite", "number"}`` object (23.11 on); NaN when unset, infinite or zero."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return np.nan
        value = value.get("number")
    if value is None or isinstance(value, bool):
        return np.nan
    try:
        v = float(value)
    except (TypeError, ValueError):
        return np.nan
    return v if v > 0 else np.nan


def _job_cpus(job: dict[str, Any]) -> float:
    """CPUs a job held: its allocated ``cpu`` TRES, else the CPUs it required."""
    tres = job.get("tres")
    if isinstance(tres, dict):
        for t in tres.get("allocated") or ():
            if isinstance(t, dict) and t.get("type") == "cpu":
                n = slurm_number(t.get("count"))
                if np.isfinite(n):
                    return n
    req = job.get("required")
    n = slurm_number(req.get("CPUs")) if isinstance(req, dict) else np.nan
    return n if np.isfinite(n) else np.nan


def sacct_idle(
    doc: dict[str, Any], total_cpus: float, step_s: float = 900.0, partition: str | None = None
) -> Series:
    """Idle CPUs on a grid from ``sacct --json`` job records (each job's start, end and CPUs).

    A job that started and has no end yet counts as running to the last time in the document."""
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, list):
        raise TraceError("sacct JSON without a 'jobs' list")
    if not total_cpus or total_cpus <= 0:
        raise TraceError("the cluster's CPU count is needed to rebuild idle CPUs from sacct (--cpus N)")
    rows = []
    for job in jobs:
        if not isinstance(job, dict) or not isinstance(job.get("time"), dict):
            continue
        if partition is not None and job.get("partition") != partition:
            continue
        t = job["time"]
        rows.append((slurm_number(t.get("start")), slurm_number(t.get("end")), _job_cpus(job)))
    data = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    start, end, cpus = data.T
    known = np.concatenate([start, end])  # the grid spans what the jobs ran: before it, nothing is known
    known = known[np.isfinite(known)]
    if not np.isfinite(start).any():
        raise TraceError("no job in the sacct JSON has a start time")
    t1 = float(known.max())
    end = np.where(np.isfinite(start) & ~np.isfinite(end), t1, end)
    t0 = float(known.min())
    t0 -= t0 % step_s
    return idle_from_jobs(start, end, cpus, float(total_cpus), t0, max(t1, t0 + step_s), step_s)


def detect_format(path: str | Path) -> str:
    """``"history"`` (SQLite), ``"sacct"`` (JSON) or ``"swf"``, from the file's content (gzip too)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(b"SQLite format 3\0"):
            return "history"
        text = head
        if head[:2] == b"\x1f\x8b":
            with gzip.open(p, "rb") as fh:
                text = fh.read(4096)
    except OSError as exc:
        raise TraceError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except EOFError as exc:
        raise TraceError(f"{p}: not a readable gzip file: {exc}") from None
    first = text.lstrip()[:1]
    if first == b"{":
        return "sacct"
    if p.name.endswith((".swf", ".swf.gz")) or first == b";" or _looks_like_swf(text):
        return "swf"
    raise TraceError(f"{p}: neither a capacity history, an SWF trace nor sacct JSON")


def load_series(path: str | Path, step_s: float = 900.0, total_cpus: float | None = None) -> Series:
    """Idle CPUs from a capacity history (SQLite), an SWF trace or ``sacct --json`` output, told
    apart by their content; ``TraceError`` with one line for anything else."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "history":
        import sqlite3

        from balancer.capacity.history import History  # sqlite3 only for a history

        try:
            with History(p) as hist:
                series = hist.series(step_s)
        except (sqlite3.Error, OSError) as exc:
            raise TraceError(f"{p}: not a readable capacity history: {exc}") from None
        if series is None:
            raise TraceError(f"{p}: the capacity history holds no samples")
        return series
    if fmt == "sacct":
        try:
            raw = p.read_bytes()
            doc = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        except (OSError, EOFError, ValueError) as exc:
            raise TraceError(f"{p}: not valid JSON: {exc}") from None
        if total_cpus is None:
            raise TraceError(f"{p}: sacct JSON does not give the cluster's size: pass its CPUs (--cpus N)")
        try:
            return sacct_idle(doc, total_cpus, step_s)
        except TraceError as exc:
            raise TraceError(f"{p}: {exc}") from None
    trace = read_swf(p)
    if total_cpus:
        trace = dataclasses.replace(trace, max_procs=int(total_cpus))
    return swf_idle(trace, step_s)


def _looks_like_swf(text: bytes) -> bool:
    line = text.decode("utf-8", "replace").strip().splitlines()[:1]
    parts = line[0].split() if line else []
    try:
        return len(parts) == 18 and all(float(x) == float(x) for x in parts)
    except ValueError:
        return False
