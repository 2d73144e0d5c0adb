"""Format detection and loading: a RUN argument may be a journal, a HyperQueue export or sacct JSON.

The format is recognised from the content (the first readable line, or the whole document for
pretty-printed sacct output), never from the file name, so renamed files and ``.log`` exports work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from balancer.analysis.errors import AnalysisError
from balancer.analysis.model import Run

_SNIFF_LINES = 20
#: sacct output is one JSON document read whole; refuse absurd sizes rather than exhaust memory.
_MAX_DOCUMENT = 2 * 1024**3

FORMATS = {"journal": "balancer journal", "hq": "HyperQueue journal export", "sacct": "sacct --json"}


def resolve(path: str | os.PathLike[str]) -> Path:
    """The file to read: the path itself, or a run directory's ``journal.jsonl`` (or its only ``*.jsonl``)."""
    p = Path(path)
    if p.is_dir():
        if (p / "journal.jsonl").is_file():
            return p / "journal.jsonl"
        found = sorted(p.glob("*.jsonl"))
        if len(found) == 1:
            return found[0]
        raise AnalysisError(
            f"{p}: a directory without journal.jsonl"
            + (f" and with {len(found)} *.jsonl files; name one" if found else "")
        )
    if not p.exists():
        raise AnalysisError(f"{p}: no such file")
    if not p.is_file():
        raise AnalysisError(f"{p}: not a regular file")
    return p


def _kind(obj: Any) -> str | None:
    """The format a parsed JSON object belongs to, if any."""
    if not isinstance(obj, dict):
        return None
    if "ev" in obj and ("m" in obj or "t" in obj):
        return "journal"
    if isinstance(obj.get("event"), dict) and "type" in obj["event"] and "time" in obj:
        return "hq"
    if isinstance(obj.get("jobs"), list):
        return "sacct"
    return None


def detect_format(path: Path) -> tuple[str, Any]:
    """``(format, parsed sacct document or None)``; raises ``AnalysisError`` for anything else."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
        if not head.strip():
            raise AnalysisError(f"{path}: empty file")
        for line in head.splitlines()[:_SNIFF_LINES]:
            try:
                kind = _kind(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
            if kind == "sacct":
                break  # a one-line sacct document: parsed whole below
            if kind is not None:
                return kind, None
        if head.lstrip()[:1] in (b"{", b"["):
            size = os.path.getsize(path)
            if size > _MAX_DOCUMENT:
                raise AnalysisError(f"{path}: JSON document too large ({size} bytes)")
            fh.seek(0)
            try:
                doc = orjson.loads(fh.read())
            except orjson.JSONDecodeError:
                doc = None
            if _kind(doc) == "sacct":
                return "sacct", doc
    hint = ""
    if b"\0" in head[:4096]:
        hint = " (a binary HyperQueue journal? export it first: hq journal export FILE > FILE.jsonl)"
    raise AnalysisError(
        f"{path}: not a balancer journal, HyperQueue journal export or sacct --json output{hint}"
    )


def load_run(path: str | os.PathLike[str], name: str | None = None, progress: bool | None = None) -> Run:
    """Load any supported run file (see module docstring) into the common tables."""
    p = resolve(path)
    run_name = name or (p.parent.name if p.name == "journal.jsonl" else p.stem)
    try:
        kind, doc = detect_format(p)
        if kind == "journal":
            from balancer.analysis.journal import read_journal

            return read_journal(p, run_name, progress)
        if kind == "hq":
            from balancer.analysis.hq import read_hq

            return read_hq(p, run_name, progress)
        from balancer.analysis.sacct import read_sacct

        return read_sacct(p, run_name, doc)
    except OSError as exc:
        raise AnalysisError(f"{p}: {exc.strerror or exc}") from None
    except MemoryError:
        raise AnalysisError(f"{p}: out of memory while loading") from None
