"""Auto sizing: a spec's ``"auto"`` resources from its measured profile, as a pure function.

Kept apart from the store and the balancer so the rules can be tested case by case: no clock, no
file, no bus. ``size`` returns the resources to submit and one reason per sized field, which the
caller journals as ``profile.sized``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

MIB = 1024 * 1024
MEMORY_STEP_MIB = 64  # sized memory is rounded up to this
CPU_SLACK = 0.1  # cores: a one-thread model with a helper thread (1.05 cores) still asks for one CPU
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", re.IGNORECASE)
_UNIT = {"": MIB, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}  # SLURM: no unit = MB


def parse_memory(text: str | int) -> int:
    """Bytes of a scheduler size (``"2G"``, ``"512M"``, ``4096`` = MB as in SLURM); ValueError if not one."""
    m = _SIZE_RE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * _UNIT[m.group(2).upper()])


def format_memory(nbytes: float) -> str:
    """Bytes rounded up to ``MEMORY_STEP_MIB``, as SLURM's ``--mem`` takes them (``448M``)."""
    step = MEMORY_STEP_MIB * MIB
    return f"{max(1, math.ceil(nbytes / step)) * MEMORY_STEP_MIB}M"


def parse_duration(text: str) -> float:
    """Seconds of a SLURM time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``)."""
    from balancer.policy.decide import parse_time_limit

    seconds = parse_time_limit(text)
    if seconds is None:
        raise ValueError(f"not a time limit: {text!r}")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """``HH:MM:SS`` rounded up to the minute (``D-HH:MM:SS`` past a day)."""
    minutes = max(1, math.ceil(seconds / 60))
    d, rest = divmod(minutes, 1440)
    h, m = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


@dataclasses.dataclass(frozen=True)
class Sized:
    """One sized field, journaled as ``profile.sized``."""

    field: str
    value: Any
    source: str  # what the value was derived from, or why the fallback


def size(resources: Any, profile: dict[str, Any] | None, settings: Any) -> tuple[Any, list[Sized]]:
    """The spec's resources with every field in ``resources.auto`` sized from ``profile`` (the spec's
    merged figures, ``ProfileStore.spec_figures``; None when there is none), else its fallback.

    memory: peak RSS x ``memory_headroom``, rounded up to 64M, at least ``min_memory``.
    cpus: p90 of the cores used while busy, rounded up (a tenth of a core of slack), at least 1.
    time_limit: the longest server lifetime seen x ``time_headroom``, rounded up to the minute,
    at most ``max_time_limit``.
    """
    auto = set(getattr(resources, "auto", ()) or ())
    if not auto:
        return resources, []
    prof = profile or {}
    changes: dict[str, Any] = {}
    reasons: list[Sized] = []

    def fallback(name: str, value: Any) -> None:
        changes[name] = value
        why = "no profile yet" if profile is None else f"the profile has no {name} figure yet"
        reasons.append(Sized(name, value, f"{why}: default_{name} = {value!r}"))

    if "memory" in auto:
        peak = prof.get("rss_peak_bytes") or 0
        if peak > 0:
            floor = parse_memory(settings.min_memory)
            mem = format_memory(max(peak * settings.memory_headroom, floor))
            changes["memory"] = mem
            src = f"peak RSS {peak / MIB:.0f}M x {settings.memory_headroom:g}, rounded up to 64M"
            reasons.append(Sized("memory", mem, src + f" (at least {settings.min_memory})"))
        else:
            fallback("memory", settings.default_memory)
    if "cpus" in auto:
        p90 = prof.get("cpu_util_p90")
        if p90 is not None:
            cpus = max(1, math.ceil(p90 - CPU_SLACK))
            changes["cpus"] = cpus
            reasons.append(Sized("cpus", cpus, f"p90 of cores used while busy {p90:.2f}, rounded up"))
        else:
            fallback("cpus", settings.default_cpus)
    if "time_limit" in auto:
        life = prof.get("lifetime_max") or 0
        if life > 0:
            cap = parse_duration(settings.max_time_limit)
            limit = format_duration(min(life * settings.time_headroom, cap))
            changes["time_limit"] = limit
            src = f"longest server lifetime {life:.0f} s x {settings.time_headroom:g}"
            reasons.append(Sized("time_limit", limit, src + f" (at most {settings.max_time_limit})"))
        else:
            fallback("time_limit", settings.default_time_limit)
    return dataclasses.replace(resources, **changes), reasons
