"""EASY backfilling's plan, as pure functions of what the scheduler knows: CPUs available now and
the running jobs' planned ends (by their *requests*, as EASY plans; never the actual run times).

The queue's head gets a reservation at the earliest planned end by which enough CPUs are available
(``reservation``); a later job may start now only if it ends by its request before that, or uses
CPUs the head will not need then. ``expected_wait`` is the scheduler's own estimate for one more job
(what ``sbatch --test-only`` answers), from the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

End = tuple[float, int, int]  # (planned end, job, CPUs it gives back), sorted


def reservation(avail: int, need: int, ends: Sequence[End], now: float) -> tuple[float, int]:
    """The head's reservation: the earliest planned end at which ``need`` CPUs are available (now
    if ``avail`` suffices), and how many beyond its need are available then (inf, 0: never)."""
    if avail >= need:
        return now, avail - need
    for e, _, c in ends:
        avail += c
        if avail >= need:
            return e, avail - need
    return math.inf, 0


def expected_wait(
    now: float,
    ends: Sequence[End],
    avail_now: int,
    delay: float,
    head: tuple[int, float] | None,
    cpus: int,
    time_limit_s: float,
) -> float:
    """How long a job of ``cpus`` asking ``time_limit_s`` would wait if submitted now.

    ``avail_now``: CPUs a normal job could have now (free plus preemptible ones); ``delay``: 0 if
    it fits on free CPUs, else the grace time it waits for preempted ones; ``head``: the queue's
    head (CPUs, requested time), or None for an empty queue. 0 (or ``delay``) when it would start at
    once (it fits, before the head's reservation or beside it); else when enough CPUs free up by
    the planned ends, no earlier than the head's reservation, with the head running from there for
    its request (a lower bound: queued jobs behind the head are ignored)."""
    head_need = head[0] if head is not None else 0
    shadow, extra = math.inf, avail_now - head_need
    if head is not None:
        shadow, extra = reservation(avail_now, head_need, ends, now)
    if cpus <= avail_now and (head is None or now + delay + time_limit_s <= shadow or cpus <= extra):
        return delay
    changes = [(e, c) for e, _, c in ends]
    if head is not None:
        changes += [(shadow, -head_need), (shadow + head[1], head_need)]
    avail = avail_now
    changes.sort()
    floor = shadow if head is not None else -math.inf
    for i, (t, d) in enumerate(changes):
        avail += d
        last_at_t = i + 1 == len(changes) or changes[i + 1][0] > t
        if last_at_t and avail >= cpus and t >= floor:
            return t - now
    return math.inf
