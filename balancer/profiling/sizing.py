"""Auto sizing: a spec's ``"auto"`` resources from its measured profile, as a pure function.

Kept apart from the store and the balancer so the rules can be tested case by case: no clock, no
file, no bus. ``size`` returns the resources to submit and one reason per sized field, which the
caller journals as ``profile.sized``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from balancer.config.schema import ProfileSettings, Resources
from balancer.units import MIB, format_memory, format_time_limit, parse_memory, parse_time_limit

CPU_SLACK = 0.1  # cores: a one-thread model with a helper thread (1.05 cores) still asks for one CPU


@dataclasses.dataclass(frozen=True)
class Sized:
    """One sized field, journaled as ``profile.sized``."""

    field: str
    value: Any
    source: str  # what the value was derived from, or why the fallback


def size(
    resources: Resources, profile: dict[str, Any] | None, settings: ProfileSettings
) -> tuple[Resources, list[Sized]]:
    """The spec's resources with every field in ``resources.auto`` sized from ``profile`` (the spec's
    merged figures, ``ProfileStore.spec_figures``; None when there is none), else its fallback.

    memory: peak RSS x ``memory_headroom``, rounded up to 64M, at least ``min_memory``.
    cpus: p90 of the cores used while busy, rounded up (a tenth of a core of slack), at least 1.
    time_limit: the longest server lifetime seen x ``time_headroom``, rounded up to the minute,
    at most ``max_time_limit``.
    """
    auto = set(resources.auto)
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
            cap = parse_time_limit(settings.max_time_limit)
            if cap is None:
                raise ValueError(f"not a time limit: {settings.max_time_limit!r}")
            limit = format_time_limit(min(life * settings.time_headroom, cap))
            changes["time_limit"] = limit
            src = f"longest server lifetime {life:.0f} s x {settings.time_headroom:g}"
            reasons.append(Sized("time_limit", limit, src + f" (at most {settings.max_time_limit})"))
        else:
            fallback("time_limit", settings.default_time_limit)
    return dataclasses.replace(resources, **changes), reasons
