"""The harvest and hybrid policies' arithmetic (issue 20), pure like the rest of the policy.

Harvest runs every server as a preemptible job on CPUs idle *now*: the scheduler takes them back
by preemption, so no forecast of later capacity is needed to be polite. Hybrid keeps a ``floor`` of
normal-priority servers by the demand rules, so the campaign never depends on preemptible jobs
alone, and harvests above it. ``policy.starts`` and ``policy.ends`` apply this.
"""

from __future__ import annotations

from balancer.config.schema import HARVESTING as HARVESTING  # one list, which the backends read too
from balancer.config.schema import ForecastRules
from balancer.policy.types import ForecastView, SpecLimits


def hybrid_floor(lim: SpecLimits) -> int:
    """Normal-priority servers hybrid keeps below the harvest: the spec's ``floor``, or by default a
    quarter of ``max_servers`` (at least one), so a campaign never depends on preemptible jobs alone."""
    if lim.floor is not None:
        return min(lim.floor, lim.max_servers)
    return max(1, lim.max_servers // 4)


def now_cpus(fv: ForecastView) -> float:
    """CPUs a new job of ours can start on now: the capacity for us less what our jobs hold."""
    return max(0.0, fv.idle[0] - fv.held_cpus) if fv.idle else 0.0


def harvest_room(lim: SpecLimits, rules: ForecastRules, n_starting: int, n_queued: int,
                 budget: list[float] | None) -> int:  # fmt: skip
    """More preemptible starts that may go out now: as many as the CPUs idle now admit (``budget``,
    at least ``min_pending`` queued), not bounded by the backlog; without a forecast (or with
    admission off) the backlog."""
    if budget is None or not rules.admission:
        return lim.backlog - n_starting
    return max(rules.min_pending - n_queued, max(0, int(budget[0] // lim.cpus)))


def split_hybrid(lim: SpecLimits, rules: ForecastRules, want: int, room: int, normal: tuple[int, int],
                 starts: tuple[int, int], budget: list[float] | None) -> tuple[int, int]:  # fmt: skip
    """Hybrid's starts as (normal, preemptible): normal ones fill the floor within the backlog (the
    demand rules), the rest are harvested on what the CPUs idle now admit once the normal ones took
    theirs (without a forecast: the backlog, shared); both within ``room``. ``normal``: (live,
    starting) normal-priority servers; ``starts``: (all starting, preemptible ones queued)."""
    below = hybrid_floor(lim) - normal[0]
    n_normal = max(0, min(want, below, lim.backlog - normal[1], room))
    left = None if budget is None else [budget[0] - n_normal * lim.cpus]
    harvest = harvest_room(lim, rules, starts[0] + n_normal, starts[1], left)
    return n_normal, max(0, min(want - n_normal, harvest, room - n_normal))


def withdrawals(n_queued: int, admitted: int, backlog: int) -> int:
    """Queued starts to withdraw so that those beyond what admission allows never exceed ``backlog``."""
    return max(0, n_queued - admitted - backlog)
