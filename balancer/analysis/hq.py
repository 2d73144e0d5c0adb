"""Importer for HyperQueue journal exports (``hq journal export`` / the older ``hq event-log export``).

Each task of a job is one call; the ISC 2025 runs submit one single-task job per evaluation, so a
call's makespan is ``job-completed - job-created`` exactly as in the paper, its compute time is the
task's run time (``task-started`` to ``task-finished``/``task-canceled``/``task-failed``) and its
queue wait is created-to-started. HyperQueue workers play the role of servers: requested when their
allocation was queued, ready when they connected, stopped when lost.

Both export formats are read: the older one (``desc`` in ``job-created``, ``"worker": -1`` and one
``task-canceled`` per task) and the current one (``job_desc``, ``task-finished``, ``task-failed``,
``task-canceled`` with a ``tasks`` list, worker ids in ``task-started``). A canceled task counts as a
successful call when it had started: the reference balancer cancels the model server's task once
the answer is sent.
"""

from __future__ import annotations

import bisect
import calendar
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from balancer.analysis.errors import AnalysisError, damage_warnings
from balancer.analysis.model import (
    INTERVAL_COLUMNS,
    Run,
    clip_intervals,
    empty_frame,
    finish_calls,
    finish_servers,
)
from balancer.analysis.progress import ByteProgress

_KNOWN = frozenset(
    {
        "server-start",
        "server-stop",
        "job-created",
        "job-completed",
        "job-open",
        "job-close",
        "task-started",
        "task-finished",
        "task-failed",
        "task-canceled",
        "worker-connected",
        "worker-lost",
        "worker-overview",
        "autoalloc-queue-created",
        "autoalloc-queue-removed",
        "autoalloc-allocation-queued",
        "autoalloc-allocation-started",
        "autoalloc-allocation-finished",
    }
)

_minute_cache: dict[str, int] = {}


def parse_time_parts(s: str) -> tuple[int, float]:
    """``(whole minutes as Unix seconds, seconds within the minute)`` of an RFC 3339 time.

    Keeping the parts apart lets the caller subtract the run's start minute exactly, so durations
    keep their millisecond values instead of float noise from 1.7e9-sized numbers. The minute prefix
    is converted once and cached, which is several times faster than ``fromisoformat`` per line.
    """
    if len(s) >= 20 and s[-1] == "Z" and s[10] == "T" and s[16] == ":":
        base = _minute_cache.get(s[:16])
        if base is None:
            base = calendar.timegm(datetime.strptime(s[:16], "%Y-%m-%dT%H:%M").timetuple())
            _minute_cache[s[:16]] = base
        return base, float(s[17:-1])
    ts = parse_time(s)
    base = int(ts // 60 * 60)
    return base, ts - base


def parse_time(s: str) -> float:
    """Unix seconds from an RFC 3339 time such as ``2024-10-22T09:32:18.598Z`` or with an offset."""
    if len(s) >= 20 and s[-1] == "Z" and s[10] == "T" and s[16] == ":":
        base, sec = parse_time_parts(s)
        return base + sec
    text = s.replace("Z", "+00:00")
    frac = text.find(".")
    if frac != -1:  # Python 3.10's fromisoformat only takes 3 or 6 fraction digits
        stop = frac + 1
        while stop < len(text) and text[stop].isdigit():
            stop += 1
        text = text[: frac + 1] + text[frac + 1 : stop].ljust(6, "0")[:6] + text[stop:]
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"time without a time zone: {s}")
    return dt.timestamp()


def _task_keys(e: dict[str, Any]) -> list[tuple[int, int]]:
    """(job, task) pairs of a task event: ``job``/``task`` fields or a ``tasks`` list (current format)."""
    if "tasks" not in e:
        return [(int(e["job"]), int(e["task"]))]
    out = []
    for t in e["tasks"]:
        if isinstance(t, dict):
            job_id: Any = t.get("job_id", t.get("job"))  # JSON: int() rejects a missing one
            task_id: Any = t.get("job_task_id", t.get("task"))
            out.append((int(job_id), int(task_id)))
        elif isinstance(t, str) and "@" in t:
            job, task = t.split("@", 1)
            out.append((int(job), int(task)))
        else:
            out.append((int(e["job"]), int(t)))
    return out


def _allocation_id(e: dict[str, Any]) -> str | None:
    """The allocation a worker belongs to, from its ``JobManager`` extra (a JSON string in HQ)."""
    extra = e.get("extra")
    if extra is None and isinstance(e.get("configuration"), dict):
        extra = e["configuration"].get("extra")
    if not isinstance(extra, dict) or "JobManager" not in extra:
        return None
    manager = extra["JobManager"]
    try:
        if isinstance(manager, str):
            manager = orjson.loads(manager)
        alloc = manager.get("allocation_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return None if alloc is None else str(alloc)


def _worker(e: dict[str, Any]) -> str | None:
    """Server id of a task-started event's worker; None for the old format's ``-1``."""
    w = e.get("worker")
    if w is None and e.get("workers"):
        w = e["workers"][0]
    if w is None or (isinstance(w, int) and w < 0):
        return None
    return f"w{w}"


class _State:
    """Everything collected from one pass over the export."""

    def __init__(self) -> None:
        self.created: dict[int, list[float]] = {}
        self.names: dict[int, Any] = {}
        self.completed: dict[int, float] = {}
        self.starts: dict[tuple[int, int], list[tuple[float, str | None]]] = {}
        self.ends: dict[tuple[int, int], tuple[float, str]] = {}
        self.workers: dict[str, dict[str, Any]] = {}
        self.allocs: dict[str, float] = {}
        self.server_stop: float | None = None


def _apply(st: _State, typ: str, e: dict[str, Any], t: float) -> None:
    """Fold one event into the state."""
    if typ == "job-created":
        job = int(e["job"])
        st.created.setdefault(job, []).append(t)
        desc = e.get("desc") or e.get("job_desc") or {}
        st.names.setdefault(job, desc.get("name") if isinstance(desc, dict) else None)
    elif typ == "task-started":
        for key in _task_keys(e):
            st.starts.setdefault(key, []).append((t, _worker(e)))
    elif typ in ("task-finished", "task-canceled", "task-failed"):
        for key in _task_keys(e):
            st.ends[key] = (t, typ[5:])
    elif typ == "job-completed":
        st.completed.setdefault(int(e["job"]), t)
    elif typ == "worker-connected":
        sid = f"w{e['id']}"
        conf = e.get("configuration")
        if not isinstance(conf, dict):
            conf = {}
        alloc = _allocation_id(e)
        st.workers[sid] = {
            "server": sid,
            "ready": t,
            "started": t,
            "registered": t,
            "alloc": alloc,
            "host": conf.get("hostname"),
            "job": alloc,
            "spec": None if alloc is None else f"allocation {alloc}",
        }
    elif typ == "worker-lost":
        rec = st.workers.get(f"w{e['id']}")
        if rec is not None and "stopped" not in rec:
            reason = str(e.get("reason", "")).lower()
            rec["stopped"] = t
            rec["end_reason"] = "failed" if ("lost" in reason or "crash" in reason) else "stopped"
    elif typ == "autoalloc-allocation-queued":
        st.allocs.setdefault(str(e["allocation-id"]), t)
    elif typ == "server-stop":
        st.server_stop = t


def read_hq(path: Path, name: str, progress: bool | None = None) -> Run:
    """Parse a HyperQueue journal export into a ``Run``."""
    st = _State()
    bad = 0
    bad_last = False
    unknown: dict[str, int] = {}
    first = last = None
    ref: int | None = None  # first minute seen: times are kept relative to it
    lineno = 0
    with open(path, "rb") as fh, ByteProgress(path, f"loading {name}", progress) as bar:
        for lineno, line in enumerate(fh, 1):
            if not lineno & 0x3FFF:
                bar.advance(fh)
            try:
                rec = orjson.loads(line)
                e = rec["event"]
                typ = e["type"]
                minute, sec = parse_time_parts(rec["time"])
                if ref is None:
                    ref = minute
                t = (minute - ref) + sec
                if typ in _KNOWN:
                    _apply(st, typ, e, t)
                else:
                    unknown[typ] = unknown.get(typ, 0) + 1
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, IndexError):
                if line.strip():
                    bad += 1
                    bad_last = True
                continue
            bad_last = False
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
        bar.advance(fh)
    if first is None or last is None or ref is None:
        raise AnalysisError(f"{path}: no readable HyperQueue events")

    warnings = damage_warnings(path, bad, bad_last, lineno, unknown)
    return _build(path, name, st, first, last, warnings, wall0=ref + first)


def _build(
    path: Path, name: str, st: _State, t0: float, last: float, warnings: list[str], wall0: float
) -> Run:
    """Turn the collected events into the common tables."""
    rows = []
    iv_rows = []
    tasks_of: dict[int, list[int]] = {}
    for job, task_no in set(st.starts) | set(st.ends):
        tasks_of.setdefault(job, []).append(task_no)
    jobs = sorted(set(st.created) | set(tasks_of))
    for job in jobs:
        tasks: list[int | None] = [*sorted(tasks_of.get(job, []))] or [None]  # None: a job without tasks
        created = sorted(st.created.get(job, []))
        for task in tasks:
            key = (job, task) if task is not None else None
            starts = st.starts.get(key, []) if key else []
            end = st.ends.get(key) if key else None
            first_start = starts[0][0] if starts else np.nan
            if created:
                i = bisect.bisect_right(created, first_start) if starts else len(created)
                received = created[max(i - 1, 0)]
            else:
                received = np.nan
            if end is None:
                completed, outcome = np.nan, "unfinished"
            elif end[1] == "failed" or (end[1] == "canceled" and not starts):
                completed, outcome = end[0], "failed"
            else:
                completed, outcome = end[0], "ok"
            if len(tasks) == 1 and job in st.completed and end is not None:
                completed = st.completed[job]  # the paper's definition: job-completed - job-created
            compute = end[0] - starts[-1][0] if (starts and end is not None) else np.nan
            worker = starts[-1][1] if starts else None
            rows.append(
                {
                    "call": str(job) if task in (None, 0) and len(tasks) == 1 else f"{job}.{task}",
                    "model": st.names.get(job),
                    "received": received,
                    "queued": received,
                    "dispatched": first_start,
                    "completed": completed,
                    "server": worker,
                    "attempts": len(starts),
                    "outcome": outcome,
                    "compute": compute,
                }
            )
            for i, (s_t, s_w) in enumerate(starts):
                stop = starts[i + 1][0] if i + 1 < len(starts) else (end[0] if end else np.nan)
                iv_rows.append((rows[-1]["call"], s_w, s_t - t0, stop - t0))

    calls = pd.DataFrame(rows) if rows else empty_frame(("call",))
    for col in ("received", "queued", "dispatched", "completed"):
        if col in calls:
            calls[col] = calls[col] - t0
    calls["op"] = None
    calls["evaluation"] = True
    calls["cached"] = False
    calls = finish_calls(calls)

    intervals = (
        pd.DataFrame(iv_rows, columns=list(INTERVAL_COLUMNS)) if iv_rows else empty_frame(INTERVAL_COLUMNS)
    )
    run_end = (st.server_stop if st.server_stop is not None else last) - t0
    notes = []
    unattributed = intervals["server"].isna()
    aggregate = None
    if len(intervals) and unattributed.any():
        aggregate = float((intervals["end"].fillna(run_end) - intervals["start"]).sum())
        notes.append(
            "tasks carry no worker id (older HyperQueue export): utilisation assumes each task "
            "held one worker while it ran"
        )

    srv = pd.DataFrame(list(st.workers.values())) if st.workers else empty_frame(("server",))
    if "alloc" in srv:
        srv["requested"] = srv["alloc"].map(st.allocs).astype("float64")
        srv = srv.drop(columns="alloc")
    for col in ("requested", "started", "registered", "ready", "stopped"):
        if col in srv:
            srv[col] = srv[col] - t0
    intervals = clip_intervals(intervals, srv)
    servers = finish_servers(srv, intervals, calls, run_end, busy_known=aggregate is None)
    return Run(
        name=name,
        path=path,
        fmt="hq",
        calls=calls,
        servers=servers,
        intervals=intervals,
        end=run_end,
        t0=wall0,
        unavailable=frozenset({"metadata_calls"}),
        notes=notes,
        warnings=warnings,
        aggregate_busy=aggregate,
    )
