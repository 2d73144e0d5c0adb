"""Scaling decisions as one pure function of plain data: ``decide(limits, observed, now)``.

Nothing here does I/O, reads a clock or mutates what it is given, so the live scaler and the
simulator's virtual clock run the same code and the simulator's figures hold for the live pool.
``decide`` separates what the configuration fixes once (``Limits``) from what is seen on each tick
(``Observed``), as Ray Serve's autoscaling policy takes a context, and runs ``policy.rules``'
``SPEC_RULES`` on each spec in order.

``Limits.rules.policy`` picks the rules, each an answer to what a shared cluster costs others:
``demand`` ignores the forecast (the baseline every other policy is measured against);
``forecast`` lets the predicted capacity admit, pre-warm, fit time limits and stop politely;
``harvest`` runs preemptible jobs on the CPUs idle now, which the scheduler takes back by
preemption, so it needs no prediction to be polite; ``hybrid`` keeps a floor of normal jobs so the
campaign never depends on preemption alone, and harvests above it. Without a forecast every policy
scales by demand within the backlog (harvest and hybrid still start preemptible jobs). The rules'
memory (cool-down stamps) comes back in the ``Decision``, so no caller keeps a copy of its own.
"""

from __future__ import annotations

from balancer.config.schema import ForecastRules
from balancer.policy.admission import admission_cpus
from balancer.policy.rules import SPEC_RULES
from balancer.policy.starts import remember
from balancer.policy.tick import Tick, is_queued
from balancer.policy.types import (
    Action,
    Decision,
    ForecastView,
    Limits,
    Observed,
    SpecLimits,
    SpecObserved,
    Start,
)


def reads_forecast(rules: ForecastRules) -> bool:
    """Whether the policy looks at the forecast at all: the demand policy scales as if there were
    none (so the scaler need not even build the view, and journals none with its decisions)."""
    return rules.policy != "demand"


def decide(limits: Limits, observed: Observed, now: float) -> Decision:
    """All actions for this tick, spec by spec, in the order they are to be applied, and the rules'
    memory for the next tick."""
    # The demand policy ignores the forecast entirely, as if there were none.
    fv = observed.forecast if reads_forecast(limits.rules) else None
    # Admission shares the CPUs it admits among the specs, less what their queued starts will take
    # (a start whose job runs holds its CPUs already: ``held_cpus``); ``budget`` is what is left as
    # the specs are decided in order.
    budget: list[float] | None = None
    if fv is not None:
        pending = 0.0
        for lim in limits.specs:
            obs = observed.specs.get(lim.name)
            if obs is not None:
                pending += lim.cpus * sum(1 for s in obs.servers if is_queued(s))
        budget = [admission_cpus(fv, limits.rules) - pending]
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
