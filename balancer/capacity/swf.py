"""Standard Workload Format (SWF) traces: the jobs of a real cluster, as numpy arrays.

The format (Parallel Workloads Archive): one job per line, 18 whitespace-separated fields, ``-1``
for unknown; header comments (``; Key: value``) give the machine size (``MaxProcs``) and the epoch
of time 0 (``UnixStartTime``). Gzipped files are read as they are.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# 1-based SWF field numbers of the columns kept.
FIELDS = {
    "id": 1,
    "submit": 2,
    "wait": 3,
    "run": 4,
    "procs": 5,
    "req_procs": 8,
    "req_time": 9,
    "status": 11,
    "user": 12,
}


class TraceError(ValueError):
    """A trace that cannot be read, phrased for the user."""


@dataclass(frozen=True)
class SwfTrace:
    """Jobs in submit order; times in seconds from the trace's start (``unix_start`` epoch)."""

    path: str
    max_procs: int
    unix_start: float
    tz_offset_s: float  # the site's offset from UTC (TimeZone header), for daily/weekly seasons
    jobs: dict[str, np.ndarray]  # column name -> array, one entry per job

    def __len__(self) -> int:
        return len(self.jobs["id"])

    @property
    def start_time(self) -> np.ndarray:
        """When each job started running (submit + wait); NaN where unknown."""
        j = self.jobs
        return np.where(j["wait"] >= 0, j["submit"] + j["wait"], np.nan)

    @property
    def procs(self) -> np.ndarray:
        """Processors each job held: allocated, else requested."""
        j = self.jobs
        return np.where(j["procs"] > 0, j["procs"], j["req_procs"])


def read_swf(path: str | Path) -> SwfTrace:
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    header: dict[str, str] = {}
    rows: list[list[float]] = []
    cols = [f - 1 for f in FIELDS.values()]
    try:
        with opener(p, "rt", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith(";"):
                    key, sep, value = line[1:].partition(":")
                    if sep:
                        header.setdefault(key.strip(), value.strip())
                    continue
                parts = line.split()
                if len(parts) < 18:
                    raise TraceError(f"{p}:{n}: expected 18 SWF fields, got {len(parts)}")
                try:
                    rows.append([float(parts[c]) for c in cols])
                except ValueError:
                    raise TraceError(f"{p}:{n}: not a number in an SWF line") from None
    except OSError as exc:
        raise TraceError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except (EOFError, gzip.BadGzipFile) as exc:
        raise TraceError(f"{p}: not a readable gzip file: {exc}") from None
    if not rows:
        raise TraceError(f"{p}: no jobs in the trace")
    data = np.asarray(rows, dtype=np.float64)
    jobs = {name: data[:, i] for i, name in enumerate(FIELDS)}
    max_procs = _int(header.get("MaxProcs")) or _int(header.get("MaxNodes"))
    if not max_procs:
        max_procs = int(max(jobs["procs"].max(), jobs["req_procs"].max()))
    return SwfTrace(
        str(p),
        max_procs,
        float(_int(header.get("UnixStartTime")) or 0),
        float(_int(header.get("TimeZone")) or 0),
        jobs,
    )


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).split()[0]) if text else None
    except ValueError:
        return None
