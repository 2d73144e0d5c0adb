"""Scaling decisions as one pure function of plain data: ``decide(limits, observed, now)``.

Nothing here does I/O, reads a clock or mutates what it is given: the live scaler and a simulator
with a virtual clock call the same code. ``decide`` separates what the configuration fixes once
(``Limits``) from what is seen on each tick (``Observed``), as Ray Serve's autoscaling policy takes
a context, and runs the named rules of ``policy.rules`` on each spec in order: crash-loop hold and
back-off, start-up timeout, draining before a job's time limit and its replacement, rolling
replacement, max_servers, demand and min_servers, idle stop. ``Observed.forecast`` brings the
cluster's idle-capacity forecast: with it (and ``Limits.rules``) the forecast-aware rules apply,
without it the policy scales by demand alone. The rules' memory (cool-down stamps) comes back in the
``Decision``, so no caller keeps a copy of its own.
"""

from __future__ import annotations

from balancer.config.schema import ForecastRules
from balancer.policy.rules import SPEC_RULES, Tick, admissible_cpus, remember
from balancer.policy.types import (
    Action,
    Decision,
    ForecastView,
    Limits,
    Observed,
    Phase,
    SpecLimits,
    SpecObserved,
    Start,
)


def decide(limits: Limits, observed: Observed, now: float) -> Decision:
    """All actions for this tick, spec by spec, in the order they are to be applied, and the rules'
    memory for the next tick."""
    fv = observed.forecast
    # Admission shares the predicted idle CPUs among the specs, less what their pending starts
    # will take; ``budget`` is what is left as the specs are decided in order.
    budget: list[float] | None = None
    if fv is not None:
        pending = 0.0
        for lim in limits.specs:
            obs = observed.specs.get(lim.name)
            if obs is not None:
                pending += lim.cpus * sum(1 for s in obs.servers if s.phase is Phase.STARTING)
        budget = [admissible_cpus(fv, limits.rules) - pending]
    decision = Decision()
    for lim in limits.specs:
        obs = observed.specs.get(lim.name)
        if obs is None:
            continue
        actions = decide_spec(lim, obs, now, limits.time_limit_margin_s, fv, limits.rules, budget)
        if observed.adopting:  # just restarted: the old servers may still register again
            actions = [a for a in actions if not isinstance(a, Start)]
        decision += actions
        decision.memory[lim.name] = remember(obs, actions, now)
    return decision


def decide_spec(
    lim: SpecLimits,
    obs: SpecObserved,
    now: float,
    margin: float,
    fv: ForecastView | None = None,
    rules: ForecastRules | None = None,
    budget: list[float] | None = None,
) -> list[Action]:
    """One spec's actions: its rules, in order, on one ``Tick``."""
    t = Tick(lim, obs, now, margin, fv, rules or ForecastRules(), budget)
    for rule in SPEC_RULES:
        rule(t)
    return t.out
