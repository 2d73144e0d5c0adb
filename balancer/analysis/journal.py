"""Reader for the balancer's own JSONL journal (``balancer/observe/journal.py``, schema version 1).

Built for long runs: one ``orjson.loads`` per line, values appended straight into typed column
arrays (no per-event dicts kept), and the tables joined with vectorised pandas operations. Durations
use the monotonic clock ``m``; ``t`` only anchors the run in wall-clock time.
"""

from __future__ import annotations

import functools
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from balancer.analysis.errors import AnalysisError, damage_warnings
from balancer.analysis.model import (
    EVALUATION_OPS,
    INTERVAL_COLUMNS,
    Run,
    clip_intervals,
    empty_frame,
    finish_calls,
    finish_servers,
)
from balancer.analysis.progress import ByteProgress
from balancer.observe.events import EVENT_NAMES

SCHEMA_VERSION = 1

#: Every event the balancer writes is known (``EVENT_NAMES``, the journal's own list, not a copy);
#: namespaces whose later kinds the metrics do not need are quiet too; an unknown ``call.*`` or other
#: event (a newer balancer's, a foreign file's) is counted in a warning.
_QUIET_NAMESPACES = ("balancer.", "server.", "spec.", "scale.", "auth.", "forecast.", "profile.", "workload.")
_SERVER_EVENTS = frozenset(
    {
        "server.requested",
        "server.started",
        "server.registered",
        "server.ready",
        "server.stopped",
        "server.failed",
        "server.preempted",
    }
)


def _f(value: Any) -> float:
    """A float, or NaN for a missing (null) value."""
    return np.nan if value is None else float(value)


def _frame(cols: dict[str, Any]) -> pd.DataFrame:
    """A DataFrame from typed arrays (zero-copy for ``array``) and plain lists."""
    return pd.DataFrame(
        {k: (np.frombuffer(v, dtype=v.typecode) if isinstance(v, array) else v) for k, v in cols.items()}
    )


class _Columns:
    """The journal's events as typed columns, one small handler per event name.

    A table of handlers instead of one ``if/elif`` chain keeps the reader flat (ruff's complexity
    rule) at the cost of one bound-method call per line, ~0.1 s per million events."""

    def __init__(self) -> None:
        self.rc: dict[str, Any] = {
            "call": array("q"),
            "m": array("d"),
            "op": [],
            "model": [],
            "bytes": array("d"),
        }
        self.qc: dict[str, Any] = {"call": array("q"), "m": array("d")}
        self.dc: dict[str, Any] = {"call": array("q"), "m": array("d"), "server": []}
        self.cc: dict[str, Any] = {
            "call": array("q"),
            "m": array("d"),
            "server": [],
            "status": array("d"),
            "bytes": array("d"),
            "service": array("d"),
            "cached": array("b"),
        }
        self.fc: dict[str, Any] = {"call": array("q"), "m": array("d"), "status": array("d")}
        self.ec: dict[str, Any] = {"call": array("q"), "m": array("d")}  # requeued: ends an attempt
        self.kc: dict[str, Any] = {"m": array("d"), "idle": array("d"), "predicted": array("d")}  # capacity
        self.servers: dict[str, dict[str, Any]] = {}
        self.unknown: dict[str, int] = {}
        self.mismatches: list[str] = []  # profile.mismatch: resources given far from used, with advice
        self.handlers: dict[str, Any] = {
            "call.received": self.received,
            "call.dispatched": self.dispatched,
            "call.completed": self.completed,
            "call.queued": self.queued,
            "call.failed": self.failed,
            "call.requeued": self.requeued,
            "capacity.sample": self.capacity,
            "profile.mismatch": self.mismatch,
        }
        for ev in _SERVER_EVENTS:
            self.handlers[ev] = functools.partial(_server_event, self.servers, ev)

    def event(self, ev: Any, d: dict[str, Any], m: float) -> None:
        handler = self.handlers.get(ev) if isinstance(ev, str) else None
        if handler is not None:
            handler(d, m)
        elif not (isinstance(ev, str) and (ev in EVENT_NAMES or ev.startswith(_QUIET_NAMESPACES))):
            self.unknown[ev] = self.unknown.get(ev, 0) + 1

    def received(self, d: dict[str, Any], m: float) -> None:
        c, b = int(d["call"]), _f(d.get("bytes"))
        rc = self.rc
        rc["call"].append(c)
        rc["m"].append(m)
        rc["op"].append(d.get("op"))
        rc["model"].append(d.get("model"))
        rc["bytes"].append(b)

    def dispatched(self, d: dict[str, Any], m: float) -> None:
        c, s = int(d["call"]), d.get("server")
        self.dc["call"].append(c)
        self.dc["m"].append(m)
        self.dc["server"].append(None if s is None else str(s))

    def completed(self, d: dict[str, Any], m: float) -> None:
        c, s = int(d["call"]), d.get("server")
        st, b, sv = _f(d.get("status")), _f(d.get("bytes")), _f(d.get("service_s"))
        cc = self.cc
        cc["call"].append(c)
        cc["m"].append(m)
        cc["server"].append(None if s is None else str(s))
        cc["status"].append(st)
        cc["bytes"].append(b)
        cc["service"].append(sv)
        cc["cached"].append(bool(d.get("cached")))

    def queued(self, d: dict[str, Any], m: float) -> None:
        c = int(d["call"])
        self.qc["call"].append(c)
        self.qc["m"].append(m)

    def failed(self, d: dict[str, Any], m: float) -> None:
        c, st = int(d["call"]), _f(d.get("status"))
        self.fc["call"].append(c)
        self.fc["m"].append(m)
        self.fc["status"].append(st)

    def requeued(self, d: dict[str, Any], m: float) -> None:
        c = int(d["call"])
        self.ec["call"].append(c)
        self.ec["m"].append(m)

    def capacity(self, d: dict[str, Any], m: float) -> None:
        idle, pred = _f(d.get("idle_cpus")), _f(d.get("predicted_idle_cpus"))
        self.kc["m"].append(m)
        self.kc["idle"].append(idle)
        self.kc["predicted"].append(pred)

    def mismatch(self, d: dict[str, Any], m: float) -> None:
        self.mismatches.append(f"resources: {d['spec']}: {d['advice']}")


def read_journal(path: Path, name: str, progress: bool | None = None) -> Run:
    """Parse a journal into a ``Run``; malformed lines and unknown events are skipped and counted."""
    cols = _Columns()
    bad = 0
    bad_last_line = False
    versions: set[Any] = set()
    m0 = t0 = None
    m_last = -np.inf
    lineno = 0

    loads = orjson.loads
    event = cols.event
    with open(path, "rb") as fh, ByteProgress(path, f"loading {name}", progress) as bar:
        for lineno, line in enumerate(fh, 1):
            if not lineno & 0x3FFF:
                bar.advance(fh)
            try:
                d = loads(line)
                ev = d["ev"]
                m = float(d["m"])
                event(ev, d, m)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError):
                if line.strip():
                    bad += 1
                    bad_last_line = True
                continue
            bad_last_line = False
            if m0 is None:
                m0, t0 = m, _f(d.get("t"))
                versions.add(d.get("v"))
            elif ev == "balancer.started":
                versions.add(d.get("v"))
            m_last = m
        bar.advance(fh)

    if m0 is None:
        raise AnalysisError(f"{path}: no readable journal events")
    warnings = _warnings(path, bad, bad_last_line, lineno, cols.unknown, versions)
    run = _build(path, name, m0, t0 if t0 is not None else np.nan, m_last, cols, warnings)
    cap = _frame(cols.kc)
    cap["m"] -= m0
    run.capacity = cap
    run.notes += cols.mismatches
    return run


def _server_event(servers: dict[str, dict[str, Any]], ev: str, d: dict[str, Any], m: float) -> None:
    """Record a server lifecycle event; the first occurrence of each kind wins."""
    sid = str(d["server"])
    rec = servers.setdefault(sid, {"server": sid})
    kind = ev[7:]
    if kind == "requested":
        rec.setdefault("requested", m)
        rec.setdefault("spec", d.get("spec"))
    elif kind == "started":
        rec.setdefault("started", m)
        rec.setdefault("spec", d.get("spec"))
        rec["job"] = d.get("job", rec.get("job"))
        rec["host"] = d.get("host", rec.get("host"))
    elif kind == "registered":
        rec.setdefault("registered", m)
        rec["job"] = d.get("job", rec.get("job"))
        rec["host"] = d.get("host", rec.get("host"))
    elif kind == "ready":
        rec.setdefault("ready", m)
        rec.setdefault("spec", d.get("spec"))
    elif kind == "preempted":
        rec.setdefault("preempted", m)
    elif kind in ("stopped", "failed") and "stopped" not in rec:
        rec["stopped"] = m
        rec["end_reason"] = "preempted" if "preempted" in rec else kind


def _warnings(
    path: Path, bad: int, bad_last_line: bool, lines: int, unknown: dict[str, int], versions: set[Any]
) -> list[str]:
    """Damage warnings, plus one if the journal comes from a newer balancer."""
    out = damage_warnings(path, bad, bad_last_line, lines, unknown)
    newer = [v for v in versions if isinstance(v, int) and v > SCHEMA_VERSION]
    if newer:
        out.append(
            f"{path}: journal schema version {max(newer)} is newer than this analyser "
            f"({SCHEMA_VERSION}); reading the fields it knows"
        )
    return out


def _build(
    path: Path, name: str, m0: float, t0: float, m_last: float, cols: _Columns, warnings: list[str]
) -> Run:
    """Join the event columns into the per-call, per-server and interval tables."""
    rc, qc, dc, cc, fc, ec, servers = cols.rc, cols.qc, cols.dc, cols.cc, cols.fc, cols.ec, cols.servers
    rec = _frame(rc)
    # A request rejected before it was accounted (call.failed without call.received) is still a call.
    failed = _frame(fc)
    lone = failed[~failed["call"].isin(rec["call"])].drop_duplicates("call")
    if len(lone):
        rec = pd.concat(
            [
                rec,
                pd.DataFrame(
                    {"call": lone["call"], "m": lone["m"], "op": None, "model": None, "bytes": np.nan}
                ),
            ],
            ignore_index=True,
        )
    rec["m"] = rec["m"] - m0
    if rec["call"].duplicated().any():
        warnings.append(f"{path}: {int(rec['call'].duplicated().sum())} duplicate call id(s); kept the first")
        rec = rec.drop_duplicates("call")
    calls = rec.rename(columns={"m": "received", "bytes": "req_bytes"}).set_index("call")
    known = calls.index

    def events(cols: dict[str, Any]) -> pd.DataFrame:
        df = _frame(cols)
        df["m"] = df["m"] - m0
        return df[df["call"].isin(known)]

    disp, queued, comp, fail, requeued = (events(x) for x in (dc, qc, cc, fc, ec))
    orphans = sum(len(x["call"]) for x in (dc, qc, cc, fc, ec)) - sum(
        len(x) for x in (disp, queued, comp, fail, requeued)
    )
    if orphans:
        warnings.append(f"{path}: {orphans} event(s) for calls never received (journal cut at the start?)")

    calls["queued"] = queued.groupby("call")["m"].min()
    by_call = disp.groupby("call")
    calls["dispatched"] = by_call["m"].min()
    calls["attempts"] = by_call.size().reindex(known).fillna(0).astype("int64")
    last_server = disp.drop_duplicates("call", keep="last").set_index("call")["server"]

    comp = comp.drop_duplicates("call", keep="last").set_index("call")
    fail = fail.drop_duplicates("call", keep="last").set_index("call")
    fail = fail[~fail.index.isin(comp.index)]
    calls["completed"] = comp["m"].combine_first(fail["m"])
    calls["status"] = comp["status"].combine_first(fail["status"])
    calls["compute"] = comp["service"]
    calls["resp_bytes"] = comp["bytes"]
    calls["cached"] = comp["cached"].reindex(known).fillna(0).astype(bool)
    calls["server"] = comp["server"].combine_first(last_server).reindex(known)
    outcome = np.where(
        calls.index.isin(comp.index), "ok", np.where(calls.index.isin(fail.index), "failed", "unfinished")
    )
    calls["outcome"] = outcome
    calls["evaluation"] = calls["op"].isin(EVALUATION_OPS)
    calls = finish_calls(calls.reset_index())

    end = max(m_last - m0, float(np.nanmax(calls[["received", "completed"]].to_numpy(), initial=0.0)))
    intervals = _intervals(disp, comp, fail, requeued)

    srv = pd.DataFrame(list(servers.values())) if servers else empty_frame(("server",))
    for col in ("requested", "started", "registered", "ready", "stopped"):
        if col in srv:
            srv[col] = srv[col] - m0
    intervals = clip_intervals(intervals, srv)
    table = finish_servers(srv, intervals, calls, end)
    return Run(
        name=name,
        path=path,
        fmt="journal",
        calls=calls,
        servers=table,
        intervals=intervals,
        end=end,
        t0=t0,
        warnings=warnings,
    )


def _intervals(
    disp: pd.DataFrame, comp: pd.DataFrame, fail: pd.DataFrame, requeued: pd.DataFrame
) -> pd.DataFrame:
    """One interval per dispatch: until the call's next requeue, completion or failure."""
    if disp.empty:
        return empty_frame(INTERVAL_COLUMNS)
    ends = pd.concat(
        [requeued[["call", "m"]], comp["m"].reset_index(), fail["m"].reset_index()], ignore_index=True
    )
    ends = ends.rename(columns={"m": "end"}).astype({"call": "int64"})
    ends["m"] = ends["end"]
    starts = disp.rename(columns={"m": "start"}).astype({"call": "int64"})
    starts["m"] = starts["start"]
    iv = pd.merge_asof(starts.sort_values("m"), ends.sort_values("m"), on="m", by="call", direction="forward")
    return iv.loc[:, list(INTERVAL_COLUMNS)]
