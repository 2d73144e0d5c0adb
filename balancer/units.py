"""Durations, scheduler time limits and memory sizes: the one place their text forms are read and written.

A contract module: it imports nothing of the balancer, so the configuration, the backends, the policy,
the profiler and the command lines all parse "90m", "01:30:00" and "2G" the same way.
"""

from __future__ import annotations

import math
import re

MIB = 1024 * 1024
MEMORY_STEP_MIB = 64  # sized memory is rounded up to this

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", re.IGNORECASE)
_SIZE_UNIT = {"": MIB, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}  # SLURM: no unit = MB

_DURATION_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
_NUMBER = r"\d+(?:\.\d+)?"
_PIECE_RE = re.compile(rf"({_NUMBER})\s*([a-z]+)")
_PIECES_RE = re.compile(rf"(?:{_NUMBER}\s*[a-z]+\s*)+")


def parse_time_limit(text: str | None) -> float | None:
    """Seconds from a SLURM time ("MM", "MM:SS", "HH:MM:SS", "D-HH[:MM[:SS]]"); None for none.

    Raises ValueError on anything else."""
    if text is None or text == "":
        return None
    days = 0
    rest = text.strip()
    if "-" in rest:
        d, rest = rest.split("-", 1)
        days = int(d)
        parts = [int(x) for x in rest.split(":")]
        parts += [0] * (3 - len(parts))
        h, m, sec = parts[:3]
    else:
        parts = [int(x) for x in rest.split(":")]
        if len(parts) == 1:
            h, m, sec = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, sec = 0, parts[0], parts[1]
        elif len(parts) == 3:
            h, m, sec = parts
        else:
            raise ValueError(f"not a time limit: {text!r}")
    if min(days, h, m, sec) < 0:
        raise ValueError(f"not a time limit: {text!r}")
    return float(((days * 24 + h) * 60 + m) * 60 + sec)


def format_time_limit(seconds: float) -> str:
    """SLURM's "[D-]HH:MM:SS", whole minutes rounded up (a limit is never cut short), at least one
    minute (SLURM reads a zero limit as none)."""
    minutes = max(1, math.ceil(seconds / 60.0))
    d, rest = divmod(minutes, 1440)
    h, m = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


def parse_duration(text: str) -> float:
    """Seconds (> 0) from every duration a user types to the balancer or a job script hands it:

    plain seconds ("900"), unit pieces ("90s", "15m", "2h", "1h 30m", "7d", "2w"; s/sec, m/min,
    h/hr, d, w) or a clock time, read as SLURM reads it ("2:30" = 2 min 30 s, "01:00:00",
    "1-12:00:00"). Raises ValueError otherwise."""
    t = text.strip().lower()
    if re.fullmatch(_NUMBER, t):
        value = float(t)
    elif _PIECES_RE.fullmatch(t):
        value = 0.0
        for num, unit in _PIECE_RE.findall(t):
            if unit not in _DURATION_UNITS:
                raise ValueError(f"unknown time unit {unit!r} in {text!r}")
            value += float(num) * _DURATION_UNITS[unit]
    elif re.fullmatch(r"(\d+-)?\d+(:\d+){1,2}|\d+-\d+", t):
        value = parse_time_limit(t) or 0.0
    else:
        raise ValueError(f"not a duration: {text!r} (use e.g. 900, 15m, 1h 30m, 7d or 01:30:00)")
    if value <= 0:
        raise ValueError(f"not a positive duration: {text!r}")
    return value


def human_duration(seconds: float) -> str:
    """A duration for people to read in a message: "45 s", "12 min", "3.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def parse_memory(text: str | int) -> int:
    """Bytes of a scheduler size (``"2G"``, ``"512M"``, ``4096`` = MB as in SLURM); ValueError if not one."""
    m = _SIZE_RE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * _SIZE_UNIT[m.group(2).upper()])


def format_memory(nbytes: float) -> str:
    """Bytes rounded up to ``MEMORY_STEP_MIB``, as SLURM's ``--mem`` takes them (``448M``)."""
    step = MEMORY_STEP_MIB * MIB
    return f"{max(1, math.ceil(nbytes / step)) * MEMORY_STEP_MIB}M"


def scale_memory(mem: str, factor: int) -> str:
    """``2G`` times ``factor`` (servers sharing one allocation); left as is if not a plain size."""
    m = re.fullmatch(r"(\d+)\s*([KMGTkmgt]?)[Bb]?", mem.strip())
    if factor == 1 or not m:
        return mem
    return f"{int(m.group(1)) * factor}{m.group(2).upper()}"
