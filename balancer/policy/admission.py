"""The forecast's arithmetic: what the capacity view admits, how long it leaves room, when others
want our CPUs back. Pure functions of a ``ForecastView``, read by the rules
(``policy.starts``, ``policy.ends``) and by ``decide``.

The view's ``idle`` is the capacity for *our* jobs (idle CPUs plus what our pool holds) and
``held_cpus`` what our running jobs hold, so a new job fits where ``idle[i] - held_cpus`` leaves
room, and our own load never reads as the cluster filling up.
"""

from __future__ import annotations

from balancer.config.schema import ForecastRules
from balancer.policy.harvest import HARVESTING, now_cpus
from balancer.policy.types import ForecastView, SpecLimits


def admissible_cpus(fv: ForecastView, rules: ForecastRules) -> float:
    """CPUs the forecast says new jobs of ours can start on within ``max_pending_wait_s``: the most
    predicted capacity for us less what our jobs hold, in that window; none when the scheduler
    itself expects a longer wait."""
    if fv.expected_wait_s is not None and fv.expected_wait_s > rules.max_pending_wait_s:
        return 0.0
    if not fv.idle:
        return 0.0
    return max(0.0, max(fv.idle[: fv.window(rules.max_pending_wait_s)]) - fv.held_cpus)


def admission_cpus(fv: ForecastView, rules: ForecastRules) -> float:
    """What admission shares among the specs: harvest and hybrid admit on the CPUs idle now (the
    scheduler preempts later), the forecast policy on the predicted window."""
    return now_cpus(fv) if rules.policy in HARVESTING else admissible_cpus(fv, rules)


def idle_window_s(fv: ForecastView, cpus: int) -> float:
    """How long, from now, the predicted capacity keeps room for one more job of ``cpus`` beside
    what our jobs hold."""
    n = 0
    for v in fv.idle:
        if v - fv.held_cpus < cpus:
            break
        n += 1
    return n * fv.step_s


def fits_time_limit(fv: ForecastView, lim: SpecLimits, rules: ForecastRules) -> float | None:
    """A time limit fitted to the predicted idle window, within the spec's bounds (None: keep
    the spec's own). A window that runs to the forecast's horizon asks for the spec's limit."""
    if lim.max_time_limit_s is None:
        return None
    window = idle_window_s(fv, lim.cpus)
    if window >= len(fv.idle) * fv.step_s:
        return None
    return float(min(lim.max_time_limit_s, max(rules.min_time_limit_s, window)))


def polite_shortfall(fv: ForecastView, horizon_s: float) -> float:
    """CPUs others will want back from us within the horizon: what our jobs hold beyond even the
    forecast's upper bound of the capacity for us. Our own load never counts (it is in both)."""
    hi = fv.hi or fv.idle
    if not hi:
        return 0.0
    return max(0.0, fv.held_cpus - min(hi[: fv.window(horizon_s)]))


def pending_room(lim: SpecLimits, rules: ForecastRules, n_starting: int, n_queued: int,
                 budget: list[float] | None) -> int:  # fmt: skip
    """More starts that may go out now: the backlog less the starts in flight without a forecast;
    with one, what the forecast admits (admission, at least ``min_pending`` queued) and may grow
    beyond the backlog (pre-warm)."""
    backlog = lim.backlog - n_starting
    if budget is None:
        return backlog
    fits = max(0, int(budget[0] // lim.cpus))
    if rules.admission and rules.prewarm:
        return max(rules.min_pending - n_queued, fits)
    if rules.admission:
        return max(rules.min_pending - n_queued, min(backlog, fits))
    if rules.prewarm:
        return max(backlog, fits)
    return backlog
