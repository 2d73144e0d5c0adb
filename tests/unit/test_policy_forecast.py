"""The forecast-aware scaling rules, each on its own, as pure functions of plain data."""

from __future__ import annotations

import itertools
from dataclasses import replace

from balancer.config.schema import ForecastRules
from balancer.policy.admission import admissible_cpus, fits_time_limit, idle_window_s
from balancer.policy.decide import decide
from balancer.policy.types import (
    ForecastView,
    Limits,
    Observed,
    SpecLimits,
    SpecMemory,
    SpecObserved,
    Start,
    StartReason,
    Stop,
    StopReason,
)
from balancer.units import format_time_limit, parse_time_limit
from tests.unit.test_policy import V, ready, starting

LIM = SpecLimits("m", max_servers=32, backlog=2, idle_timeout_s=300, startup_timeout_s=3600, cpus=2,
                 max_time_limit_s=4 * 3600.0)  # fmt: skip
RULES = ForecastRules(policy="forecast")  # the rules under test (the default policy is demand)


def fv(*idle: float, step: float = 900.0, hi=(), wait=None, held: float = 0.0) -> ForecastView:
    """Capacity for us (idle plus the ``held`` CPUs our jobs hold) per slot."""
    return ForecastView(step, tuple(idle), tuple(idle), tuple(hi), wait, held_cpus=held)


def run(forecast, servers=(), now=1000.0, lim=LIM, rules=RULES, **obs):
    observed = Observed({lim.name: SpecObserved(servers=list(servers), **obs)}, forecast=forecast)
    return decide(Limits((lim,), 60.0, rules), observed, now)


def starts(actions) -> list[Start]:
    return [a for a in actions if isinstance(a, Start)]


def test_no_forecast_is_demand_only_as_before():
    (a,) = run(None, waiting=100)
    assert (a.count, a.reason, a.time_limit_s) == (2, StartReason.DEMAND, None)  # the backlog


def test_admission_keeps_pending_within_what_the_forecast_says_can_start():
    # The cluster is full for the next 10 minutes: one job may wait in the queue (min_pending).
    (a,) = run(fv(0, 0, 40), waiting=100)
    assert a.count == 1
    assert starts(run(fv(0, 0, 40), servers=starting(1), waiting=100)) == []
    # 6 idle CPUs now = 3 servers of 2 CPUs, beyond the backlog of 2 (pre-warm).
    (a,) = run(fv(6, 0), waiting=100)
    assert (a.count, a.reason) == (3, StartReason.PREWARM)
    # Pending starts already take their share of the idle CPUs.
    (a,) = run(fv(6, 0), servers=starting(2), waiting=100)
    assert a.count == 1
    # The scheduler itself expects a longer wait than allowed: nothing beyond min_pending.
    assert admissible_cpus(fv(64, wait=3600.0), RULES) == 0.0
    (a,) = run(fv(64, wait=3600.0), waiting=100)
    assert a.count == 1


def test_admission_window_is_max_pending_wait():
    f = fv(0, 0, 20, step=300.0)  # idle CPUs 10 minutes from now
    assert admissible_cpus(f, RULES) == 20.0  # within the default 600 s
    assert admissible_cpus(f, replace(RULES, max_pending_wait_s=300.0)) == 0.0


def test_rules_can_be_switched_off_one_by_one():
    no_prewarm = replace(RULES, prewarm=False)
    (a,) = run(fv(64), waiting=100, rules=no_prewarm)
    assert (a.count, a.reason) == (2, StartReason.DEMAND)  # admission allows more, the backlog caps
    no_admission = replace(RULES, admission=False, prewarm=False)
    (a,) = run(fv(0), waiting=100, rules=no_admission)
    assert a.count == 2  # the backlog, as without a forecast
    (a,) = run(fv(8, 8), waiting=100, rules=replace(RULES, fit_time_limit=False))
    assert a.time_limit_s is None


def test_specs_share_the_predicted_idle_cpus():
    a, b = replace(LIM, name="a"), replace(LIM, name="b")
    obs = Observed({"a": SpecObserved(waiting=10), "b": SpecObserved(waiting=10)}, forecast=fv(8))
    acts = starts(decide(Limits((a, b), 60.0, RULES), obs, 0.0))
    assert [(x.spec, x.count) for x in acts] == [("a", 4), ("b", 1)]  # b: only its min_pending


def test_time_limit_fits_the_predicted_idle_window():
    f = fv(8, 8, 8, 8, 0, 0, 0, 0)  # one hour of idle capacity, then full
    assert idle_window_s(f, 2) == 3600.0
    assert fits_time_limit(f, LIM, RULES) == 3600.0
    (a,) = run(f, waiting=100)
    assert a.time_limit_s == 3600.0
    # Within the spec's bounds: never below min_time_limit_s, never above the spec's own.
    assert fits_time_limit(fv(8, 0, 0), LIM, RULES) == RULES.min_time_limit_s
    assert fits_time_limit(fv(*([8.0] * 20), 0), LIM, RULES) == LIM.max_time_limit_s
    # Idle to the horizon, or a spec with no time limit: the spec's own limit.
    assert fits_time_limit(fv(8, 8), LIM, RULES) is None
    assert fits_time_limit(f, replace(LIM, max_time_limit_s=None), RULES) is None


def test_polite_mode_stops_idle_servers_early_when_others_want_our_cpus():
    # Two idle servers hold 4 CPUs; the capacity for us (idle + ours) is 8 now.
    idle = ready(2, idle_since_m=980.0)  # idle for 20 s; the idle timeout is 300 s
    assert run(fv(8, 8, hi=(8, 8), held=4), servers=idle) == []
    # Even the upper bound drops to 1 CPU: others want 3 of our 4 CPUs back, i.e. both servers.
    acts = run(fv(8, 0, hi=(8, 1), held=4), servers=idle)
    assert [(a.server, a.reason) for a in acts] == [("r0", StopReason.POLITE), ("r1", StopReason.POLITE)]
    # A shortfall of 2 CPUs takes one server of 2 CPUs; the other waits for its idle timeout.
    acts = run(fv(8, 2, hi=(8, 2), held=4), servers=idle)
    assert [(a.server, a.reason) for a in acts] == [("r0", StopReason.POLITE)]
    assert run(fv(8, 0, hi=(8, 1), held=4), servers=idle, rules=replace(RULES, polite=False)) == []
    busy = [V("b", outstanding=1, idle_since_m=0.0)]
    assert run(fv(0, hi=(0,), held=2), servers=busy) == []  # a server with a call is never stopped


def test_our_own_load_never_reads_as_the_cluster_filling_up():
    # The pool holds all the capacity (16 CPUs, 8 idle servers): nothing is idle for others, but
    # nobody else wants it either. Not stopped politely (before issue 20 it was).
    mine = ready(8, idle_since_m=980.0)
    assert run(fv(16, 16, 16, hi=(16, 16, 16), held=16), servers=mine) == []
    # Its capacity forecast drops below what it holds: others want 6 CPUs back, 3 servers go.
    acts = run(fv(16, 10, 10, hi=(16, 10, 10), held=16), servers=mine)
    assert [a.reason for a in acts] == [StopReason.POLITE] * 3


def test_the_forecast_arithmetic_counts_our_held_cpus_out():
    # Capacity for us 10 CPUs of which our jobs hold 6: 4 CPUs for new jobs (2 servers of 2).
    f = fv(10, 10, 6, held=6)
    assert admissible_cpus(f, RULES) == 4.0
    assert admissible_cpus(fv(4, 4, held=6), RULES) == 0.0  # never negative
    assert idle_window_s(f, 2) == 1800.0  # the third slot leaves no room beside our own jobs
    assert fits_time_limit(f, LIM, RULES) == RULES.min_time_limit_s
    (a,) = run(f, waiting=100)
    assert (a.count, a.time_limit_s) == (2, RULES.min_time_limit_s)


def test_cooldown_after_an_idle_stop_needs_calls_that_waited():
    # Stopped a server 30 s ago; a call that waited 5 s does not start one, one that waited 30 s does.
    assert starts(run(fv(8), waiting=1, last_idle_stop_m=970.0, oldest_wait_m=995.0)) == []
    assert len(starts(run(fv(8), waiting=1, last_idle_stop_m=970.0, oldest_wait_m=970.0))) == 1
    assert len(starts(run(fv(8), waiting=1, last_idle_stop_m=800.0, oldest_wait_m=995.0))) == 1
    off = replace(RULES, cooldown=False)
    assert len(starts(run(fv(8), waiting=1, last_idle_stop_m=970.0, oldest_wait_m=995.0, rules=off))) == 1


def test_cooldown_after_a_demand_start_stops_nothing_for_idleness():
    idle = ready(1, idle_since_m=0.0)  # idle far beyond its timeout
    assert run(fv(8), servers=idle, last_demand_start_m=950.0) == []
    assert [a.reason for a in run(fv(8), servers=idle, last_demand_start_m=500.0)] == [StopReason.IDLE]


def test_the_decision_carries_the_cool_down_memory_so_no_caller_keeps_its_own():
    d = run(fv(8), waiting=1, last_idle_stop_m=800.0)
    assert starts(d) and d.memory["m"] == SpecMemory(last_idle_stop_m=800.0, last_demand_start_m=1000.0)
    d = run(fv(8), servers=ready(1, idle_since_m=0.0), last_demand_start_m=500.0)
    assert d.memory["m"] == SpecMemory(last_idle_stop_m=1000.0, last_demand_start_m=500.0)
    assert run(fv(8)).memory["m"] == SpecMemory()  # nothing done: nothing remembered
    # Starts dropped while old servers may still register again leave no stamp either.
    obs = Observed({"m": SpecObserved(waiting=5)}, forecast=fv(8), adopting=True)
    d = decide(Limits((LIM,), 60.0, RULES), obs, 1000.0)
    assert d == [] and d.memory["m"] == SpecMemory()


def _bursty(rules: ForecastRules) -> list[tuple[float, str, bool]]:
    """A one-server spec under one 2-s call every 100 s (idle timeout 20 s), driven tick by tick
    through ``decide``: the list of (time, "up"/"down", a call had waited upscale_delay_s)."""
    lim = replace(LIM, idle_timeout_s=20.0, backlog=1, max_servers=1)
    servers: list[V] = []
    queue: list[float] = []  # arrival times of waiting calls
    busy_until = -1.0
    memory = SpecMemory()  # the policy's own, handed back as each decision returns it
    moves = []
    for tick in range(3000):  # one tick a second
        now = float(tick)
        if tick % 100 == 0:
            queue.append(now)
        for s in servers:
            if queue and s.outstanding == 0:
                queue.pop(0)
                s.outstanding, busy_until = 1, now + 2
            elif s.outstanding and now >= busy_until:
                s.outstanding, s.idle_since_m = 0, now
        obs = SpecObserved(
            servers=list(servers), waiting=len(queue), oldest_wait_m=queue[0] if queue else None,
            last_idle_stop_m=memory.last_idle_stop_m, last_demand_start_m=memory.last_demand_start_m,
        )  # fmt: skip
        waited = bool(queue) and now - queue[0] >= rules.upscale_delay_s
        decision = decide(Limits((lim,), 60.0, rules), Observed({"m": obs}, forecast=fv(8)), now)
        memory = decision.memory["m"]
        for a in decision:
            if isinstance(a, Start):
                servers.append(V(f"s{tick}", idle_since_m=now))  # ready at once
                moves.append((now, "up", waited))
            elif isinstance(a, Stop):
                servers = [s for s in servers if s.id != a.server]
                moves.append((now, "down", waited))
    return moves


def test_the_pool_does_not_thrash_under_bursty_demand():
    """The rule: an idle stop never follows a demand start within cooldown_s, and a start never
    follows an idle stop within cooldown_s unless a call waited upscale_delay_s."""
    moves = _bursty(RULES)
    for (t0, d0, _), (t1, d1, waited) in itertools.pairwise(moves):
        if d0 == "up" and d1 == "down":
            assert t1 - t0 >= RULES.cooldown_s
        if d0 == "down" and d1 == "up" and t1 - t0 < RULES.cooldown_s:
            assert waited
    # Without the rule the pool starts and stops a server for each of the 30 calls.
    plain = _bursty(replace(RULES, cooldown=False))
    assert len(plain) >= 50
    assert len(moves) <= len(plain) * 0.6


def test_time_limit_text_round_trips():
    assert parse_time_limit("01:30:00") == 5400.0
    assert parse_time_limit("90") == 5400.0
    assert parse_time_limit("1-00:00:00") == 86400.0
    assert parse_time_limit(None) is None
    assert format_time_limit(5400.0) == "01:30:00"
    assert format_time_limit(5401.0) == "01:31:00"  # never cut short
    assert format_time_limit(90000.0) == "1-01:00:00"
