"""Importer for SLURM ``sacct --json`` output (Slurm 22.05 and later).

Maps a run of the reference balancer with the SLURM scheduler, which submits one job per model
evaluation, onto the common metrics: each job is one call and also one server. Makespan is
``end - submission``, queue wait ``start - submission``, compute ``end - start``; the steps' CPU time
(user + system) is kept in the ``cpu`` column. sacct reports whole seconds, so short calls are coarse.

Time fields are plain integers in Slurm 22.05 (``"start": 1700000000``) and ``{"set": true,
"infinite": false, "number": ...}`` objects from 23.11 on; ``state.current`` is a string in 22.05 and
a list later. Both are accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from balancer.analysis.errors import AnalysisError
from balancer.analysis.model import INTERVAL_COLUMNS, Run, empty_frame, finish_calls, finish_servers
from balancer.capacity.traces import slurm_number

_OK = {"COMPLETED", "CANCELLED"}  # the reference cancels a server's job once its call is answered
_UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING"}


def _cpu(time: dict[str, Any]) -> float:
    """CPU seconds from a ``total`` (or ``user`` + ``system``) ``{seconds, microseconds}`` pair."""

    def sec(x: Any) -> float:
        if not isinstance(x, dict):
            return np.nan
        return float(x.get("seconds", 0) or 0) + float(x.get("microseconds", 0) or 0) / 1e6

    total = sec(time.get("total"))
    if np.isnan(total):
        total = sec(time.get("user")) + sec(time.get("system"))
    return total


def _state(job: dict[str, Any]) -> str:
    """The job's current state as one upper-case word."""
    state = job.get("state", {})
    cur = state.get("current") if isinstance(state, dict) else state
    if isinstance(cur, list):
        cur = cur[0] if cur else ""
    return str(cur or "").upper()


def read_sacct(path: Path, name: str, doc: dict[str, Any]) -> Run:
    """Map a parsed ``sacct --json`` document onto a ``Run``."""
    jobs = doc.get("jobs")
    if not isinstance(jobs, list):
        raise AnalysisError(f"{path}: sacct JSON without a 'jobs' list")
    rows = []
    skipped = 0
    for job in jobs:
        try:
            t = job["time"]
            submission = slurm_number(t.get("submission"))
            if np.isnan(submission):
                raise ValueError("no submission time")
            start, end = slurm_number(t.get("start")), slurm_number(t.get("end"))
            steps = job.get("steps") or []
            cpu = sum(_cpu(s.get("time", {})) for s in steps) if steps else _cpu(t)
            state = _state(job)
            jid = job.get("job_id")
            nodes = job.get("nodes")
        except (KeyError, TypeError, ValueError, AttributeError):
            skipped += 1
            continue
        if np.isnan(start):
            end = np.nan
        if state in _UNFINISHED or np.isnan(end):
            outcome = "unfinished"
        elif state in _OK or state.startswith("CANCELLED"):
            outcome = "ok"
        else:
            outcome = "failed"
        rows.append(
            {
                "call": str(jid),
                "model": job.get("name"),
                "received": submission,
                "queued": submission,
                "dispatched": start,
                "completed": end,
                "server": f"job {jid}",
                "attempts": int(not np.isnan(start)),
                "outcome": outcome,
                "compute": end - start,
                "cpu": cpu,
                "host": nodes if isinstance(nodes, str) else None,
                "state": state,
            }
        )
    if not rows:
        raise AnalysisError(f"{path}: no jobs with a submission time in the sacct JSON")
    df = pd.DataFrame(rows)
    t0 = float(df["received"].min())
    for col in ("received", "queued", "dispatched", "completed"):
        df[col] = df[col] - t0
    end = float(np.nanmax(df[["received", "dispatched", "completed"]].to_numpy()))

    servers = pd.DataFrame(
        {
            "server": df["server"],
            "spec": df["model"],
            "host": df["host"],
            "job": df["call"],
            "requested": df["received"],
            "started": df["dispatched"],
            "ready": df["dispatched"],
            "stopped": df["completed"],
            "end_reason": np.where(df["outcome"] == "failed", "failed", "stopped"),
        }
    )
    cpu = df["cpu"].to_numpy()
    calls = df.drop(columns=["host", "state", "cpu"])
    calls["op"] = None
    calls["evaluation"] = True
    calls["cached"] = False
    calls = finish_calls(calls)
    calls["cpu"] = cpu
    intervals = empty_frame(INTERVAL_COLUMNS)
    servers = finish_servers(servers, intervals, calls, end, busy_known=False)
    warnings = [f"{path}: skipped {skipped} job record(s) without usable times"] if skipped else []
    notes = ["sacct reports whole seconds; each job is one call and one server (one server per call)"]
    unavailable = frozenset({"metadata_calls", "retried_calls", "utilisation", "idle_server_s"})
    return Run(
        name=name,
        path=path,
        fmt="sacct",
        calls=calls,
        servers=servers,
        intervals=intervals,
        end=end,
        t0=t0,
        unavailable=unavailable,
        notes=notes,
        warnings=warnings,
    )
