"""The common shape every importer produces: a per-call table, a per-server table and busy intervals.

All times are float seconds relative to the start of the run (``Run.t0`` is that instant as Unix
time, for display). Keeping one shape is what lets a balancer journal, a HyperQueue export and a
sacct dump be compared metric by metric; a metric a format cannot provide stays NaN and is listed
in ``Run.unavailable`` so the summary shows "-" rather than a misleading number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Operations that are model evaluations: the latency statistics are about these.
EVALUATION_OPS = frozenset({"Evaluate", "Gradient", "ApplyJacobian", "ApplyHessian"})

#: Per-call table columns, in order. Times are relative seconds; durations are seconds.
CALL_COLUMNS = (
    "call",  # id within the run (int for journals, "job" or "job.task" for HyperQueue, job id for sacct)
    "op",  # UM-Bridge operation (None where the format does not say)
    "model",
    "evaluation",  # True for model evaluations, False for metadata calls
    "received",  # the call reached the balancer / the job was submitted
    "queued",  # the call had to wait for a free server (NaN when it did not)
    "dispatched",  # first dispatch to a server / first task start / job start
    "completed",  # answer sent, failure reported, job completed (NaN while unfinished)
    "server",  # server (or HyperQueue worker) of the final attempt, None if unknown or cached
    "attempts",  # number of dispatches (0 for cached metadata answers)
    "status",  # HTTP status (journal only)
    "outcome",  # "ok" | "failed" | "unfinished"
    "cached",  # answered from the balancer's metadata cache
    "queue_wait",  # dispatched - received
    "compute",  # server-side time of the final attempt (service_s / task run time / job run time)
    "lag",  # makespan - compute: everything that is not computing (the paper's "lag")
    "overhead",  # lag - queue_wait: time added beyond waiting for a server (forwarding, bookkeeping)
    "makespan",  # completed - received
    "slr",  # makespan / compute (schedule length ratio)
    "req_bytes",
    "resp_bytes",
)

#: Per-server table columns, in order.
SERVER_COLUMNS = (
    "server",
    "spec",  # server spec name / HyperQueue allocation / sacct job
    "host",
    "job",  # backend job id
    "requested",
    "started",
    "registered",
    "ready",
    "stopped",  # stopped or failed; NaN when still running at the end of the run
    "end_reason",  # "stopped" | "failed" | "preempted" (the scheduler took its job back) | "running at end"
    "startup",  # ready - requested
    "lifetime",  # (stopped or end of run) - ready
    "busy",  # union of the intervals it was serving calls
    "idle",  # lifetime - busy
    "utilisation",  # busy / lifetime
    "calls",  # calls it completed
)

#: Columns of ``Run.intervals``: one row per dispatch (attempt), used for busy time and the Gantt chart.
INTERVAL_COLUMNS = ("call", "server", "start", "end")


@dataclass
class Run:
    """One analysed run: the tables plus what the importer learned about the input's limits."""

    name: str
    path: Path
    fmt: str  # "journal" | "hq" | "sacct"
    calls: pd.DataFrame
    servers: pd.DataFrame
    intervals: pd.DataFrame
    end: float  # end of the run (last event), relative seconds
    t0: float  # Unix time of relative time 0
    unavailable: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Total busy server-seconds when tasks cannot be attributed to servers (old HyperQueue format).
    aggregate_busy: float | None = None
    #: The balancer's capacity samples (journal only): relative time ``m``, observed ``idle`` CPUs and
    #: the ``predicted`` idle CPUs the forecast in use had for that moment (NaN: none in use).
    capacity: pd.DataFrame | None = None

    def summary(self) -> dict[str, Any]:
        """Summary metrics (see ``analysis.summary.METRICS``); None where a metric does not apply."""
        from balancer.analysis.summary import summarize

        return summarize(self)


def empty_frame(columns: tuple[str, ...]) -> pd.DataFrame:
    """An empty table with the given columns, so downstream code never special-cases missing data."""
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})


def finish_calls(calls: pd.DataFrame) -> pd.DataFrame:
    """Fill the derived per-call columns from the raw times, and order the columns."""
    for col in CALL_COLUMNS:
        if col not in calls:
            calls[col] = np.nan
    calls["queue_wait"] = calls["dispatched"] - calls["received"]
    calls["makespan"] = calls["completed"] - calls["received"]
    calls["lag"] = calls["makespan"] - calls["compute"]
    calls["overhead"] = calls["lag"] - calls["queue_wait"]
    compute = calls["compute"].where(calls["compute"] > 0)
    calls["slr"] = calls["makespan"] / compute
    return calls.loc[:, list(CALL_COLUMNS)].reset_index(drop=True)


def busy_union(intervals: pd.DataFrame, end: float) -> pd.Series:
    """Busy seconds per server: the union of its call intervals (overlaps count once).

    Intervals still open at the end of the run count until ``end``. Vectorised sweep: sorted by
    start, each interval adds only what lies beyond the running maximum end of those before it.
    """
    iv = intervals.dropna(subset=["server", "start"])
    if iv.empty:
        return pd.Series(dtype="float64")
    iv = iv.assign(end=iv["end"].fillna(end)).sort_values(["server", "start"], kind="stable")
    prev_max = iv.groupby("server", sort=False)["end"].cummax().groupby(iv["server"], sort=False).shift()
    eff_start = np.maximum(iv["start"].to_numpy(), prev_max.fillna(-np.inf).to_numpy())
    length = np.clip(iv["end"].to_numpy() - eff_start, 0.0, None)
    return pd.Series(length, index=iv.index).groupby(iv["server"], sort=False).sum()


def clip_intervals(intervals: pd.DataFrame, servers: pd.DataFrame) -> pd.DataFrame:
    """End each interval no later than its server stopped: a lost server serves nothing afterwards."""
    if intervals.empty or "stopped" not in servers or "server" not in servers:
        return intervals
    stop = intervals["server"].map(servers.dropna(subset=["stopped"]).set_index("server")["stopped"])
    end = intervals["end"].where(~(intervals["end"] > stop), stop)
    end = end.where(~(end.isna() & stop.notna() & (stop >= intervals["start"])), stop)
    return intervals.assign(end=end)


def finish_servers(
    servers: pd.DataFrame, intervals: pd.DataFrame, calls: pd.DataFrame, end: float, busy_known: bool = True
) -> pd.DataFrame:
    """Fill start-up, lifetime, busy, idle, utilisation and call counts, and order the columns."""
    for col in SERVER_COLUMNS:
        if col not in servers:
            servers[col] = np.nan
    servers = servers.set_index("server", drop=False)
    servers["startup"] = servers["ready"] - servers["requested"]
    stop = servers["stopped"]
    servers["end_reason"] = servers["end_reason"].where(stop.notna(), "running at end")
    servers["lifetime"] = stop.fillna(end) - servers["ready"]
    if busy_known:
        busy = busy_union(intervals, end).reindex(servers.index).fillna(0.0)
        servers["busy"] = busy.where(servers["lifetime"].notna())
    servers["idle"] = servers["lifetime"] - servers["busy"]
    servers["utilisation"] = servers["busy"] / servers["lifetime"].where(servers["lifetime"] > 0)
    done = calls.loc[calls["outcome"] == "ok", "server"].dropna()
    servers["calls"] = done.value_counts().reindex(servers.index).fillna(0).astype("int64")
    return servers.loc[:, list(SERVER_COLUMNS)].reset_index(drop=True)


def step_series(up: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Times and levels of a counter that goes +1 at each ``up`` and -1 at each ``down`` time.

    Used for queue length and live servers over time; NaN times are ignored. At equal times the
    decrements come first, so a call queued and dispatched in the same instant never shows a spike.
    """
    up = up[~np.isnan(up)]
    down = down[~np.isnan(down)]
    times = np.concatenate([down, up])
    deltas = np.concatenate([-np.ones(len(down)), np.ones(len(up))])
    order = np.lexsort((deltas, times))
    return times[order], np.cumsum(deltas[order])


def queue_length(calls: pd.DataFrame, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Queue length over time: +1 when a call is queued, -1 when it leaves the queue."""
    q = calls[calls["queued"].notna()]
    leave = q["dispatched"].fillna(q["completed"]).fillna(end)
    return step_series(q["queued"].to_numpy(dtype=float), leave.to_numpy(dtype=float))


def live_servers(servers: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Live (ready, not yet stopped) servers over time."""
    ready = servers["ready"].to_numpy(dtype=float)
    stop = servers["stopped"].where(servers["ready"].notna()).to_numpy(dtype=float)
    return step_series(ready, stop)
