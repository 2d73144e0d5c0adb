"""The capacity history: every collected sample in an embedded SQLite file that outlives a run.

Why SQLite: one file, no server, safe against a crash mid-write, and ``GROUP BY`` turns months of
1-minute samples into a forecast grid in milliseconds. WAL mode lets a reader (``balancer capacity
show``, a backtest) read while the collector writes. The file is private (0600): it tells who ran what.

What is stored and learnt is capacity = idle + ours (``CapacitySample.capacity_cpus``): the
``ours_cpus`` column holds what our own pool's running jobs held at each sample. A file written
before that column existed has it NULL on its collected rows, which counted our own servers as
busy: exactly the error that made the pool shrink itself under its own load, and on the local
backend, where our servers were most of the load, most of those rows are wrong. ``series`` skips
them (they stay in the file, readable as plain idle); collected history starts afresh, so the
forecast is cold again for ``min_history_s``. Imported rows (SWF, sacct) are other users' jobs
only, so their idle is our capacity exactly (ours = 0), old or new.

Retention applies to collected samples; imported history (SWF, sacct) is kept, since it was asked
for, and a second import of the same source and partition replaces the slots it covers.
Methods are synchronous; async callers use ``asyncio.to_thread``. One lock serialises the connection.
"""

from __future__ import annotations

import math
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from balancer.capacity.sample import CapacitySample
from balancer.capacity.series import Series

COLUMNS = tuple(f.name for f in fields(CapacitySample))
_ROW = operator.attrgetter(*COLUMNS)  # a sample as one row, in column order
AUTO_PRUNE_S = 3600.0  # add() prunes at most this often
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS samples (
    {", ".join(f"{c} {'TEXT' if c in ('source', 'partition') else 'REAL'}" for c in COLUMNS)},
    imported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS samples_t ON samples (t);
CREATE INDEX IF NOT EXISTS samples_src_t ON samples (source, partition, t);
"""


def default_history_path() -> Path:
    """``$XDG_DATA_HOME/umbridge-balancer/capacity.sqlite`` (``~/.local/share`` without it)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "umbridge-balancer" / "capacity.sqlite"


class History:
    """Capacity samples in one SQLite file; ``series`` resamples them onto a forecast grid."""

    def __init__(self, path: str | os.PathLike[str], retention_s: float = 400 * 86400.0) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # private before SQLite writes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(samples)")}
        for col in COLUMNS:  # a file written before a field was added to CapacitySample
            if col not in have:
                self._db.execute(f"ALTER TABLE samples ADD COLUMN {col} REAL")
        self._last_prune_m = -math.inf

    # -- writing -----------------------------------------------------------------------------------
    def add(self, samples: Sequence[CapacitySample]) -> None:
        """Store collected samples (and, at most hourly, drop those past the retention)."""
        if not samples:
            return
        rows = list(map(_ROW, samples))
        marks = ",".join("?" * len(COLUMNS))
        with self._lock, self._db:
            self._db.executemany(f"INSERT INTO samples ({','.join(COLUMNS)}) VALUES ({marks})", rows)
        if time.monotonic() - self._last_prune_m >= AUTO_PRUNE_S:
            self.prune(time.time())

    def import_series(self, series: Series, source: str, partition: str = "") -> int:
        """Store a rebuilt history (one row per observed slot, at the slot's middle); rows written.

        Rows of the same ``source``/``partition`` in the series' span are replaced, so importing a
        trace twice does not count it twice."""
        import numpy as np  # here, not at the top: every balancer that collects opens the history

        vals = np.asarray(series.values, dtype=np.float64)
        mids = series.start + (np.arange(len(vals)) + 0.5) * series.step_s
        ok = np.isfinite(vals)
        rows = [
            (float(t), source, partition, float(series.total), float(v))
            for t, v in zip(mids[ok], vals[ok], strict=True)
        ]
        with self._lock, self._db:
            self._db.execute(
                "DELETE FROM samples"
                " WHERE imported = 1 AND source = ? AND partition = ? AND t >= ? AND t < ?",
                (source, partition, series.start, series.end),
            )
            self._db.executemany(
                "INSERT INTO samples (t, source, partition, total_cpus, idle_cpus, imported)"
                " VALUES (?, ?, ?, ?, ?, 1)",
                rows,
            )
        return len(rows)

    def prune(self, now: float) -> int:
        """Drop collected samples older than the retention; rows removed."""
        with self._lock, self._db:
            cur = self._db.execute(
                "DELETE FROM samples WHERE imported = 0 AND t < ?", (now - self.retention_s,)
            )
        self._last_prune_m = time.monotonic()
        return cur.rowcount

    # -- reading -----------------------------------------------------------------------------------
    def _where(
        self,
        source: str | Sequence[str] | None,
        partition: str | None,
        since: float | None,
        until: float | None,
    ) -> tuple[str, list[object]]:
        # Collected rows from before ``ours_cpus`` (NULL) counted our own jobs as busy: not capacity.
        conds: list[str] = ["idle_cpus IS NOT NULL", "(ours_cpus IS NOT NULL OR imported = 1)"]
        args: list[object] = []
        if source is not None:
            names = [source] if isinstance(source, str) else list(source)
            conds.append(f"source IN ({','.join('?' * len(names))})")
            args.extend(names)
        for cond, value in (("partition = ?", partition), ("t >= ?", since), ("t < ?", until)):
            if value is not None:
                conds.append(cond)
                args.append(value)
        return " AND ".join(conds), args

    def series(
        self,
        step_s: float = 900.0,
        source: str | Sequence[str] | None = None,
        partition: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Series | None:
        """Capacity (idle + ours, at most the total) per slot of an epoch-aligned grid: the mean of
        the samples in each slot, summed over partitions; NaN where nothing was observed; None when
        nothing matches.

        ``source`` is one name or several: sources are taken as views of one cluster (an imported
        trace continued by live samples), so where several cover a slot, their mean; None takes all
        (a history shared by runs on different schedulers needs the names). ``total`` is the
        latest sample's total."""
        if step_s <= 0:
            raise ValueError("step_s must be positive")
        where, args = self._where(source, partition, since, until)
        with self._lock:
            span = self._db.execute(f"SELECT MIN(t), MAX(t) FROM samples WHERE {where}", args).fetchone()
            if span is None or span[0] is None:
                return None
            t_min = span[0]
            start = math.floor((since if since is not None else t_min) / step_s) * step_s
            rows = self._db.execute(
                f"SELECT CAST((t - ?) / ? AS INTEGER) AS slot, source, partition,"
                f" AVG(MIN(total_cpus, idle_cpus + COALESCE(ours_cpus, 0)))"
                f" FROM samples WHERE {where} GROUP BY slot, source, partition",
                [start, step_s, *args],
            ).fetchall()
            total = self._db.execute(
                f"SELECT source, SUM(total_cpus) FROM samples WHERE {where} AND t = ("
                f"SELECT MAX(t) FROM samples WHERE {where}) GROUP BY source",
                [*args, *args],
            ).fetchall()
        import numpy as np  # as in import_series: numpy loads when a series is built, not at start

        n = max(int(r[0]) for r in rows) + 1  # SQLite's own slot arithmetic decides the last slot
        by_source: dict[str, np.ndarray] = {}
        for slot, src, _part, idle in rows:
            acc = by_source.get(src)
            if acc is None:
                acc = by_source[src] = np.full(n, np.nan)
            acc[slot] = idle if np.isnan(acc[slot]) else acc[slot] + idle
        stacked = np.vstack(list(by_source.values()))
        counts = np.isfinite(stacked).sum(axis=0)
        sums = np.nansum(stacked, axis=0)
        values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return Series(float(start), float(step_s), values, float(max(t for _, t in total)))

    def count(self) -> int:
        """Rows stored (collected and imported)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def span(self) -> tuple[float, float] | None:
        """(first, last) sample time, or None when empty."""
        with self._lock:
            lo, hi = self._db.execute("SELECT MIN(t), MAX(t) FROM samples").fetchone()
        return None if lo is None else (float(lo), float(hi))

    def sources(self) -> list[tuple[str, str, int]]:
        """(source, partition, rows) for every stored pair."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source, partition, COUNT(*) FROM samples GROUP BY source, partition ORDER BY 1, 2"
            ).fetchall()
        return [(str(s), str(p), int(c)) for s, p, c in rows]

    def reconfigure(self, retention_s: float) -> None:
        """A reloaded ``retention_days``: the next prune keeps this much of the collected samples."""
        self.retention_s = retention_s

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_history(settings: Any) -> History:
    """The capacity history (outlives the run) at ``[forecast] history``, or the default path."""
    return History(history_path(settings), retention_s=settings.retention_days * 86400.0)


def history_path(settings: Any) -> Path:
    """``[forecast] history``, or the default: one per user, shared by every configuration on
    purpose, since months of a cluster's samples are the cluster's, not a project's."""
    return Path(settings.history).expanduser() if settings.history else default_history_path()
