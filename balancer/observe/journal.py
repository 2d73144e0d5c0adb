"""Append-only JSONL timing journal: a subscriber of the event bus, one event per line.

A call's first events (received, dispatched, queued, requeued) are written together at the end of
the event loop's pass; any other event (a call's answer or failure, every server and balancer event)
is written at once, with whatever waits before it. So a call's lines are on disk before its answer
leaves, a crash loses at most one loop pass of calls' first lines, and at 64 calls in flight the
journal costs about one ``write`` per call instead of three (``bench/profile_calls.py``).

Every line carries the schema version ``v``, the event name ``ev``, wall-clock ``t`` (Unix seconds)
and monotonic ``m`` (seconds, for durations that survive clock steps), stamped by the bus
(``observe.events``). The schema is documented in README.md ("Journal schema").
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson

from balancer.observe.events import Ev

_OPTS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
_write, _dumps = os.write, orjson.dumps  # bound once: this runs three times per call
_DEFERRED = frozenset({Ev.CALL_RECEIVED, Ev.CALL_DISPATCHED, Ev.CALL_QUEUED, Ev.CALL_REQUEUED})


class Journal:
    """Writes events with ``os.write`` (no userspace buffer beyond one loop pass: module docstring)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._fd: int | None = None
        self._held: list[bytes] = []  # deferred lines, written at the end of this loop pass
        self._flush_due = False
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(self._fd, 0o600)  # the owner's: it names servers, hosts and ports

    def __call__(self, event: dict[str, Any]) -> None:
        fd = self._fd
        if fd is not None:
            # A short write to a regular file only happens on a full disk; nothing sensible to do then.
            try:
                line = _dumps(event, option=_OPTS, default=str)
            except orjson.JSONEncodeError:  # a lone surrogate in a string: the line still gets written
                line = _dumps(_printable(event), option=_OPTS, default=str)
            held = self._held
            if event["ev"] in _DEFERRED:
                held.append(line)
                if not self._flush_due:
                    try:
                        asyncio.get_running_loop().call_soon(self.flush)
                    except RuntimeError:  # no loop runs (a tool, a test): at once
                        self.flush()
                        return
                    self._flush_due = True
                return
            if held:
                held.append(line)
                line = b"".join(held)
                held.clear()
            _write(fd, line)

    def flush(self) -> None:
        """Write the deferred lines now."""
        self._flush_due = False
        held = self._held
        if held and self._fd is not None:
            data = b"".join(held)
            held.clear()
            _write(self._fd, data)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _printable(obj: Any) -> Any:
    """``obj`` with every string made UTF-8 (a lone surrogate as ``\\udXXX``), at any depth."""
    if type(obj) is str:
        return obj.encode("utf-8", "backslashreplace").decode()
    if type(obj) is dict:
        return {_printable(k): _printable(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return [_printable(v) for v in obj]
    return obj


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All well-formed events of a journal; a truncated last line (crash mid-write) is skipped."""
    events = []
    with open(path, "rb") as fh:
        for line in fh:
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return events
