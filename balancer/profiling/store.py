"""Model profiles: what each spec's servers and models cost, in an SQLite file that outlives runs.

One row per (spec name, hash of the spec's command or job script, model); the row with model ``""``
holds the spec's server figures (CPU, memory, start-up, lifetime: servers serve every model of
their spec, so these are the spec's), the others each model's calls and compute time per operation.
A row's figures are a JSON document of additive counters, maxima and histograms (``merge``), so a
run adds its delta to what earlier runs left and two runs merge exactly, whatever their order.

Conventions as the capacity history (``cluster/history.py``): WAL, private (0600), a default path
under ``$XDG_DATA_HOME``; methods are synchronous, async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from balancer.observe.histogram import bin_middle, quantile_bins
from balancer.observe.histogram import log_bin as _log_bin

UTIL_BIN = 0.05  # cores used: linear bins of 1/20 core
MAX_KEYS = frozenset({"max", "rss_peak_bytes", "gpu_mem_peak_bytes", "startup_max", "lifetime_max"})
REPLACE_KEYS = frozenset({"resources", "workload_class"})  # the latest run's value wins
SPEC_ROW = ""  # the model name of a spec's own row
COUNTERS = ("io_read_bytes", "io_write_bytes", "ctx_vol", "ctx_invol", "minflt", "majflt")
Key = tuple[str, str, str]  # (spec, spec hash, model)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    spec TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (spec, spec_hash, model)
);
"""


def default_profiles_path() -> Path:
    """``$XDG_DATA_HOME/umbridge-balancer/profiles.sqlite`` (``~/.local/share`` without it)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "umbridge-balancer" / "profiles.sqlite"


def profiles_path(settings: Any) -> Path:
    """``[profiles] path``, or the default: one per user, shared by every configuration; a profile
    is keyed by spec name and command hash, so projects never mix (``balancer profile show``
    lists the current configuration's specs)."""
    return Path(settings.path).expanduser() if settings.path else default_profiles_path()


def spec_hash(spec: Any) -> str:
    """What a profile is a profile of: the command, or the job script's content. Another command
    under the same spec name is another model and starts a new profile."""
    h = hashlib.sha256()
    if spec.job_script:
        try:
            h.update(Path(spec.job_script).read_bytes())
        except OSError:
            h.update(spec.job_script.encode())
    else:
        h.update("\0".join(spec.command).encode())
    return h.hexdigest()[:12]


# -- figures: merge, delta, quantiles -----------------------------------------------------------------
def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` plus ``b``: numbers add, ``MAX_KEYS`` take the larger, ``resources`` takes ``b``'s,
    tables (histograms, per-op figures) merge key by key. Returns a new dict."""
    out = dict(a)
    for k, v in b.items():
        if k in REPLACE_KEYS or k not in out:
            out[k] = v
        elif isinstance(v, dict):
            out[k] = merge(out[k], v)
        elif k in MAX_KEYS:
            out[k] = max(out[k], v)
        else:
            out[k] = out[k] + v
    return out


def delta(now: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What ``now`` adds to ``before`` (both snapshots of one run's figures), for ``merge``."""
    out: dict[str, Any] = {}
    for k, v in now.items():
        old = before.get(k)
        if isinstance(v, dict):
            d = delta(v, old or {}) if k not in REPLACE_KEYS else v
            if d:
                out[k] = d
        elif k in REPLACE_KEYS or k in MAX_KEYS or old is None:
            out[k] = v
        elif v != old:
            out[k] = v - old
    return out


def log_bin(x: float) -> str:
    """The histogram bin of a time (``observe.histogram``; keys are strings in the stored JSON)."""
    return str(_log_bin(x))


def util_bin(x: float) -> str:
    return str(max(0, math.floor(x / UTIL_BIN)))


def quantile(hist: dict[str, int], q: float, kind: str = "log") -> float | None:
    """The ``q`` quantile of a histogram (the middle of its bin), None when empty."""
    (b,) = quantile_bins({int(k): n for k, n in hist.items()}, (q,))
    if b is None:
        return None
    return bin_middle(b) if kind == "log" else (b + 0.5) * UTIL_BIN


# -- the store ---------------------------------------------------------------------------------------
class ProfileStore:
    """Profiles in one SQLite file; ``add`` merges a run's delta into it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # private before SQLite writes
        self._lock = threading.Lock()
        # Autocommit: ``add`` opens its own BEGIN IMMEDIATE transaction.
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def add(self, rows: dict[Key, dict[str, Any]], new_run: set[Key]) -> None:
        """Merge each (spec, hash, model)'s figures into its row in one transaction; rows in
        ``new_run`` count one run more (a run's first flush of that row)."""
        now = time.time()
        with self._lock:
            # Read, merge and write under one write lock: two balancers sharing the store (the
            # default path) must not both read a row and the later write drop the other's run.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._merge_rows(rows, new_run, now)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _merge_rows(self, rows: dict[Key, dict[str, Any]], new_run: set[Key], now: float) -> None:
        for key, figures in rows.items():
            row = self._db.execute(
                "SELECT data, runs FROM profiles WHERE spec = ? AND spec_hash = ? AND model = ?", key
            ).fetchone()
            data = merge(json.loads(row[0]), figures) if row else figures
            runs = (row[1] if row else 0) + (1 if key in new_run else 0)
            self._db.execute(
                "INSERT OR REPLACE INTO profiles (spec, spec_hash, model, runs, updated_at, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*key, runs, now, json.dumps(data, separators=(",", ":"))),
            )

    def rows(self, spec: str | None = None, hash_: str | None = None) -> list[dict[str, Any]]:
        """Every stored row (optionally one spec's, one hash's) as dicts, oldest spec first."""
        conds, args = [], []
        for cond, value in (("spec = ?", spec), ("spec_hash = ?", hash_)):
            if value is not None:
                conds.append(cond)
                args.append(value)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        with self._lock:
            got = self._db.execute(
                f"SELECT spec, spec_hash, model, runs, updated_at, data FROM profiles{where}"
                " ORDER BY spec, spec_hash, model",
                args,
            ).fetchall()
        return [
            {"spec": s, "spec_hash": h, "model": m, "runs": r, "updated_at": u, "data": json.loads(d)}
            for s, h, m, r, u, d in got
        ]

    def spec_figures(self, spec: str, hash_: str) -> dict[str, Any] | None:
        """The figures sizing uses, from the spec's own row; None when the spec has no profile."""
        for row in self.rows(spec, hash_):
            if row["model"] == SPEC_ROW:
                return summarize_spec(row["data"])
        return None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summarize_spec(d: dict[str, Any]) -> dict[str, Any]:
    """A spec row's derived figures: CPU-seconds per call, cores used, start-up, peaks."""
    busy = d.get("busy_samples", 0)
    util = d.get("util_hist", {})
    return {
        "calls": d.get("calls", 0),
        "cpu_s_per_call": d["cpu_s_window"] / d["calls_window"] if d.get("calls_window") else None,
        "cpu_util_p90": quantile(util, 0.9, "util") if util else None,
        "cpu_util_mean_busy": d["util_sum_busy"] / busy if busy else None,
        "rss_peak_bytes": d.get("rss_peak_bytes"),
        "gpu_mem_peak_bytes": d.get("gpu_mem_peak_bytes"),
        "startup_p50_s": _capped(quantile(d.get("startup_hist", {}), 0.5), d.get("startup_max")),
        "startup_max_s": d.get("startup_max"),
        "lifetime_max": d.get("lifetime_max"),
        "samples": d.get("samples", 0),
        "busy_samples": busy,
        "cpu_s": d.get("cpu_s", 0.0),
        "wall_s": d.get("wall_s", 0.0),
        "iowait_mean_pct": d["iowait_sum"] / d["iowait_n"] if d.get("iowait_n") else None,
        **{k: d.get(k, 0) for k in COUNTERS},
        "servers": d.get("servers", 0),
        "resources": d.get("resources"),
        # workload.py's counters summed over every run: ``classify(workload)`` decides again.
        "workload_class": d.get("workload_class"),
        "workload": d.get("workload"),
    }


def _capped(v: float | None, cap: float | None) -> float | None:
    """A quantile from a bin's middle never above the exact maximum."""
    return min(v, cap) if v is not None and cap is not None else v


def summarize_model(d: dict[str, Any]) -> dict[str, Any]:
    """A model row's derived figures: calls and compute time per operation (p50/p90/max)."""
    ops = {}
    for op, f in d.get("ops", {}).items():
        hist = f.get("hist", {})
        cap = f.get("max")
        p50, p90 = (_capped(quantile(hist, q), cap) for q in (0.5, 0.9))
        ops[op] = {"n": f.get("n", 0), "p50_s": p50, "p90_s": p90, "max_s": cap}
    return {"calls": d.get("calls", 0), "ops": ops}


def profiles(store: ProfileStore) -> Iterator[dict[str, Any]]:
    """One record per (spec, hash, model) with a calls row, the spec's figures joined in; a spec
    whose servers served no call yet comes once with model ``-``."""
    by_spec: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in store.rows():
        by_spec.setdefault((row["spec"], row["spec_hash"]), []).append(row)
    for (spec, h), rows in by_spec.items():
        spec_row = next((r for r in rows if r["model"] == SPEC_ROW), None)
        fig = summarize_spec(spec_row["data"]) if spec_row else {}
        models: list[dict[str, Any] | None] = [r for r in rows if r["model"] != SPEC_ROW] or [None]
        for r in models:
            m = summarize_model(r["data"]) if r else {"calls": 0, "ops": {}}
            base = r or spec_row
            assert base is not None
            yield {
                "spec": spec,
                "spec_hash": h,
                "model": r["model"] if r else "-",
                "calls": m["calls"],
                "ops": m["ops"],
                "runs": (spec_row or base)["runs"],
                "updated_at": max(x["updated_at"] for x in rows),
                **{k: v for k, v in fig.items() if k != "calls"},
            }
