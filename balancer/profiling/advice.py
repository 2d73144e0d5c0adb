"""Resources given against resources used: the advice a ``profile.mismatch`` carries, as pure functions.

A spec that asks for 8 CPUs and keeps one busy, or 64 GB for a 2 GB model, blocks capacity other
users could have; one that peaks above 90 % of its memory is about to be killed. The recorder asks
once per run per spec and resource, after ``mismatch_samples`` busy samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from balancer.profiling.store import quantile
from balancer.units import MIB, parse_memory


@dataclass(frozen=True)
class Advice:
    resource: str  # "cpus" or "memory"
    given: Any
    used: Any
    text: str


def cpu_advice(cpus: int, figures: dict[str, Any]) -> Advice | None:
    """At least twice the cores given as the p90 used while busy (and 2 or more given)."""
    used = quantile(figures["util_hist"], 0.9, "util") or 0.0
    used = 0.0 if used <= 0.05 else used  # the lowest bin's middle is an idle model
    if not (cpus >= 2 and cpus >= 2 * used):
        return None
    fix = f'cpus = {max(1, math.ceil(used - 0.1))} (or "auto")'
    return Advice(
        "cpus", cpus, round(used, 2), f"uses {used:.2f} cores (p90 while busy) of {cpus} CPUs given: {fix}"
    )


def memory_advice(memory: str, figures: dict[str, Any], headroom: float) -> Advice | None:
    """Three times the peak RSS given, or a peak above 90 % of it."""
    try:
        given = parse_memory(memory)
    except ValueError:
        return None
    peak = figures["rss_peak_bytes"]
    if not (given >= 3 * peak or peak > 0.9 * given):
        return None
    which = "more memory" if peak > 0.9 * given else "less memory"
    want = math.ceil(peak * headroom / (64 * MIB)) * 64
    used = f"{peak / MIB:.0f}M"
    return Advice(
        "memory", memory, used, f'peak RSS {used} of {memory} given: {which}, memory = "{want}M" (or "auto")'
    )
