"""The scaling policies of issue 20 (demand, forecast, harvest, hybrid) and the rules that came with
them (start-up timeout from the job's start, pending timeout, withdrawal beyond admission,
max_servers over every server not stopping), as pure functions of plain data."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError, ForecastRules
from balancer.policy.admission import admission_cpus
from balancer.policy.decide import decide
from balancer.policy.harvest import hybrid_floor
from balancer.policy.types import (
    Drain,
    ForecastView,
    GiveUp,
    Limits,
    Observed,
    Phase,
    SpecLimits,
    SpecObserved,
    Start,
    StartReason,
    Stop,
    StopReason,
)
from tests.unit.test_policy import V, ready, starting

LIM = SpecLimits("m", max_servers=16, backlog=2, idle_timeout_s=300, startup_timeout_s=600, cpus=2,
                 max_time_limit_s=4 * 3600.0)  # fmt: skip


def rules(policy: str, **kw) -> ForecastRules:
    return ForecastRules(policy=policy, **kw)


def fv(*idle: float, held: float = 0.0, hi=()) -> ForecastView:
    return ForecastView(900.0, tuple(idle), tuple(idle), tuple(hi), held_cpus=held)


def run(policy: str, forecast=None, servers=(), now=1000.0, lim=LIM, rk=None, **obs):
    observed = Observed({lim.name: SpecObserved(servers=list(servers), **obs)}, forecast=forecast)
    return decide(Limits((lim,), 60.0, rk or rules(policy)), observed, now)


def starts(actions) -> list[Start]:
    return [a for a in actions if isinstance(a, Start)]


def stops(actions, reason: StopReason) -> list[str]:
    return [a.server for a in actions if isinstance(a, Stop) and a.reason is reason]


# -- demand ----------------------------------------------------------------------------------------


def test_demand_ignores_the_forecast_entirely():
    # What the forecast policy does with 20 idle CPUs an hour long: pre-warm, a fitted time limit.
    (a,) = run("forecast", fv(20, 20, 20, 20, 0), waiting=100)
    assert (a.count, a.reason, a.time_limit_s) == (10, StartReason.PREWARM, 3600.0)
    # The demand policy: exactly what it does without a forecast.
    assert run("demand", fv(20, 20, 20, 20, 0), waiting=100) == run("demand", None, waiting=100)
    (a,) = run("demand", fv(0), waiting=100)  # no admission either
    assert (a.count, a.reason, a.time_limit_s, a.preemptible) == (2, StartReason.DEMAND, None, False)
    idle = ready(2, idle_since_m=980.0)
    assert run("demand", fv(8, 0, hi=(8, 0), held=4), servers=idle) == []  # never polite


# -- harvest ---------------------------------------------------------------------------------------


def test_harvest_starts_preemptible_jobs_on_the_cpus_idle_now():
    # 20 CPUs for us now, our jobs hold 4 of them: 16 free = 8 servers of 2 CPUs, all at once,
    # beyond the backlog, with the spec's own time limit (the backend's time_min backfills).
    (a,) = run("harvest", fv(20, 0, 0, held=4), waiting=100)
    assert (a.count, a.reason, a.preemptible, a.time_limit_s) == (8, StartReason.DEMAND, True, None)
    # Only what demand wants, up to max_servers.
    (a,) = run("harvest", fv(200, held=0), waiting=3)
    assert a.count == 3
    (a,) = run("harvest", fv(200), waiting=100, servers=ready(10, outstanding=1))
    assert (a.count, a.target) == (6, 16)
    # Nothing idle now: min_pending queued, whatever the forecast says for later (no pre-warm).
    (a,) = run("harvest", fv(0, 40, 40), waiting=100)
    assert (a.count, a.preemptible) == (1, True)
    assert starts(run("harvest", fv(0, 40, 40), servers=starting(1), waiting=100)) == []
    # Queued starts take their share of the CPUs idle now.
    (a,) = run("harvest", fv(10), servers=starting(2), waiting=100)
    assert a.count == 3
    # Without a forecast: the backlog, still preemptible.
    (a,) = run("harvest", None, waiting=100)
    assert (a.count, a.preemptible) == (2, True)


def test_harvest_never_stops_politely_and_retries_preemptible():
    idle = ready(2, idle_since_m=980.0)
    assert run("forecast", fv(8, 0, hi=(8, 0), held=4), servers=idle) != []  # polite
    assert run("harvest", fv(8, 0, hi=(8, 0), held=4), servers=idle) == []  # preemption does that
    (a,) = run("harvest", fv(8), failures=3, held=True, last_failure_m=0.0)
    assert (a.reason, a.preemptible) == (StartReason.RETRY, True)


# -- hybrid ----------------------------------------------------------------------------------------


def test_hybrid_floor_defaults_to_a_quarter_of_max_servers_at_least_one():
    assert hybrid_floor(LIM) == 4
    assert hybrid_floor(replace(LIM, max_servers=3)) == 1
    assert hybrid_floor(replace(LIM, floor=0)) == 0
    assert hybrid_floor(replace(LIM, floor=6)) == 6


def test_hybrid_keeps_a_floor_of_normal_servers_and_harvests_above_it():
    # Empty pool, 100 calls, 20 CPUs idle now: the floor's first normal starts (the backlog of 2 at a
    # time), and harvested ones beside them in the same tick: one Start of each kind.
    acts = starts(run("hybrid", fv(20), waiting=100))
    assert [(a.count, a.preemptible) for a in acts] == [(2, False), (8, True)]
    assert [a.target for a in acts] == [2, 10]
    # Two normal servers ready, two normal starting: the floor (4) is reached; the rest is harvested.
    pool = [*ready(2, outstanding=1), *starting(2, started=990.0)]
    (a,) = starts(run("hybrid", fv(20), servers=pool, waiting=100))
    assert (a.count, a.preemptible) == (10, True)
    # Harvested servers do not count toward the floor: a normal start still goes out.
    pool = [V(f"p{i}", outstanding=1, preemptible=True) for i in range(6)]
    acts = starts(run("hybrid", fv(0), servers=pool, waiting=100))
    assert [(a.count, a.preemptible) for a in acts] == [(2, False), (1, True)]  # + min_pending
    # Without a forecast, the normal part still fills the floor within the backlog.
    assert [(a.count, a.preemptible) for a in starts(run("hybrid", None, waiting=100))] == [(2, False)]


# -- start-up timeout, pending timeout, withdrawal ------------------------------------------------------


def test_the_start_up_timeout_counts_from_the_jobs_start_not_its_submission():
    queued = starting(1, at=0.0)  # requested long ago, its job still queued
    assert run("demand", servers=queued, now=5000.0) == []
    running = starting(1, at=0.0, started=4500.0)  # its job began 500 s ago: within 600 s
    assert run("demand", servers=running, now=5000.0) == []
    assert run("demand", servers=running, now=5100.0) == [GiveUp("m", "st0", target=0)]


def test_a_start_queued_beyond_pending_timeout_is_stopped_not_failed():
    lim = replace(LIM, pending_timeout_s=300.0)
    assert run("demand", servers=starting(1, at=800.0), lim=lim) == []
    acts = run("demand", servers=starting(1, at=700.0), lim=lim)
    assert acts == [Stop("m", "st0", StopReason.PENDING_TIMEOUT, target=0)]
    assert not any(isinstance(a, GiveUp) for a in acts)
    # A job that runs is past the queue: the start-up timeout applies, not the pending one.
    assert run("demand", servers=starting(1, at=0.0, started=900.0), lim=lim) == []


def test_queued_starts_beyond_admission_plus_backlog_are_withdrawn_newest_first():
    # Six queued starts (requested at 0..5), nothing admitted now (min_pending 1): 1 + backlog 2 stay.
    queued = [V(f"q{i}", Phase.STARTING, requested_m=float(i)) for i in range(6)]
    acts = run("forecast", fv(0, 0), servers=queued, waiting=100)
    assert stops(acts, StopReason.WITHDRAWN) == ["q5", "q4", "q3"]
    assert starts(acts) == []
    # 4 CPUs admitted = 2 servers: 2 + 2 stay.
    acts = run("forecast", fv(4, 0), servers=queued, waiting=100)
    assert stops(acts, StopReason.WITHDRAWN) == ["q5", "q4"]
    # A start whose job runs is never withdrawn, and counts for nothing here.
    mixed = [*queued[:3], *[V(f"r{i}", Phase.STARTING, started_m=1.0) for i in range(5)]]
    assert stops(run("forecast", fv(0, 0), servers=mixed, waiting=100), StopReason.WITHDRAWN) == []
    # Harvest withdraws on the CPUs idle now; without admission or a forecast, nothing is withdrawn.
    assert stops(run("harvest", fv(0, 40), servers=queued), StopReason.WITHDRAWN) == ["q5", "q4", "q3"]
    assert run("forecast", None, servers=queued) == []
    assert run("forecast", fv(0), servers=queued, rk=rules("forecast", admission=False)) == []
    assert run("demand", fv(0), servers=queued) == []


def test_hybrid_counts_every_queued_start_and_withdraws_harvested_ones_first():
    # 2 normal + 3 preemptible queued, 1 admitted (min_pending), backlog 2: 2 beyond, both harvested,
    # newest first, although the normal ones are newer still.
    normal = [V(f"n{i}", Phase.STARTING, requested_m=10.0 + i) for i in range(2)]
    pre = [V(f"p{i}", Phase.STARTING, requested_m=float(i), preemptible=True) for i in range(3)]
    acts = run("hybrid", fv(0), servers=[*normal, *pre])
    assert stops(acts, StopReason.WITHDRAWN) == ["p2", "p1"]
    assert starts(acts) == []
    # Beyond even with every harvested start gone: then the newest normal ones.
    normal = [V(f"n{i}", Phase.STARTING, requested_m=10.0 + i) for i in range(4)]
    pre = [V(f"p{i}", Phase.STARTING, requested_m=float(i), preemptible=True) for i in range(5)]
    acts = run("hybrid", fv(0), servers=[*normal, *pre])
    assert stops(acts, StopReason.WITHDRAWN) == ["p4", "p3", "p2", "p1", "p0", "n3"]
    # Never a start whose job runs, nor a rolling replacement's successor (they still count).
    kept = [V("run", Phase.STARTING, started_m=1.0, preemptible=True),
            V("succ", Phase.STARTING, requested_m=99.0, preemptible=True, successor=True)]  # fmt: skip
    acts = run("hybrid", fv(0), servers=[*kept, *pre[:3]])
    assert stops(acts, StopReason.WITHDRAWN) == ["p2"]


def test_the_floors_normal_starts_take_the_place_of_queued_harvested_ones():
    # Three harvested starts queued, the floor (4) empty, nothing idle now: the floor's normal starts
    # (backlog 2) go out and the two newest harvested starts are withdrawn in the same tick.
    pre = [V(f"p{i}", Phase.STARTING, requested_m=float(i), preemptible=True) for i in range(3)]
    acts = run("hybrid", fv(0), servers=pre, waiting=100)
    assert [(a.count, a.preemptible) for a in starts(acts)] == [(2, False)]
    assert stops(acts, StopReason.WITHDRAWN) == ["p2", "p1"]


def _apply(servers: dict[str, V], actions, now: float, n: list[int]) -> None:
    """Apply one tick's actions as the pool would: starts queue, stops and give-ups leave."""
    for a in actions:
        if isinstance(a, Start):
            for _ in range(a.count):
                n[0] += 1
                sid = f"s{n[0]}"
                servers[sid] = V(sid, Phase.STARTING, requested_m=now, preemptible=a.preemptible)
        elif isinstance(a, Drain):
            servers[a.server].phase = Phase.DRAINING
        elif isinstance(a, (Stop, GiveUp)):
            servers.pop(a.server, None)


@pytest.mark.parametrize("policy", ["forecast", "harvest", "hybrid"])
@pytest.mark.parametrize("seed", range(5))
def test_pending_beyond_admission_never_exceeds_the_backlog_over_random_ticks(policy: str, seed: int):
    """Capacity that comes and goes, bursts of calls, jobs that start after a random wait: after
    every tick's actions, the queued starts beyond what admission allows are at most the backlog."""
    rng = random.Random(seed)
    lim = replace(LIM, max_servers=12, backlog=2, cpus=2, floor=3, idle_timeout_s=100)
    rk = rules(policy)
    servers: dict[str, V] = {}
    n, withdrawn, most_queued = [0], 0, 0
    for tick in range(300):
        now = 1000.0 + tick * 30.0
        for s in servers.values():  # the cluster: queued jobs start, started ones become ready
            if s.phase is Phase.STARTING and s.started_m is None and rng.random() < 0.15:
                s.started_m = now
            elif s.phase is Phase.STARTING and s.started_m is not None and rng.random() < 0.5:
                s.phase, s.idle_since_m = Phase.READY, now
            elif s.phase is not Phase.STARTING:
                s.outstanding = rng.choice((0, 0, 1))
                s.idle_since_m = now if s.outstanding else s.idle_since_m
        held = lim.cpus * sum(
            1 for s in servers.values() if s.started_m is not None or s.phase is not Phase.STARTING
        )
        view = fv(held + rng.choice((0, 0, 2, 6, 20)), held=held)
        acts = run(policy, view, servers=list(servers.values()), now=now, lim=lim, rk=rk,
                   waiting=rng.choice((0, 0, 3, 30)))  # fmt: skip
        withdrawn += len(stops(acts, StopReason.WITHDRAWN))
        _apply(servers, acts, now, n)
        queued = sum(1 for s in servers.values() if s.phase is Phase.STARTING and s.started_m is None)
        admitted = max(rk.min_pending, int(admission_cpus(view, rk) // lim.cpus))
        assert queued - admitted <= lim.backlog, f"tick {tick}: {queued} queued, {admitted} admitted"
        assert sum(1 for s in servers.values() if s.phase is not Phase.STOPPING) <= lim.max_servers
        most_queued = max(most_queued, queued)
    # The sequence did exercise the rule: queues built up and were cut back.
    assert withdrawn > 0 and most_queued > lim.backlog


# -- max_servers -----------------------------------------------------------------------------------


def test_draining_and_replaced_ahead_servers_count_toward_max_servers():
    lim = replace(LIM, max_servers=4, backlog=4)
    busy_ending = [V(f"r{i}", outstanding=1, deadline_m=1030.0) for i in range(4)]  # drain at 970
    acts = run("forecast", fv(40), servers=busy_ending, lim=lim, waiting=10)
    assert len([a for a in acts if isinstance(a, Drain)]) == 4
    assert starts(acts) == []  # the four still serve their calls: no room for successors yet


def test_starting_ready_and_draining_never_exceed_max_servers_over_many_ticks():
    """Replace-ahead, draining and demand together, tick by tick: four clients each keep one call
    outstanding (50 s each); a job's time limit is 1000 s, its queue wait 200 s, its start-up 30 s."""
    lim = replace(LIM, max_servers=5, backlog=3, cpus=1, idle_timeout_s=5000)
    rk = rules("forecast", max_pending_wait_s=300.0)
    servers: dict[str, V] = {}
    busy_since: dict[str, float] = {}
    n = replaced = most = 0
    for tick in range(600):
        now = tick * 10.0
        for s in servers.values():  # the cluster: jobs start, servers become ready, calls end
            if s.phase is Phase.STARTING and s.started_m is None and now - s.requested_m >= 200:
                s.started_m = now
            if s.phase is Phase.STARTING and s.started_m is not None and now - s.started_m >= 30:
                s.phase, s.deadline_m = Phase.READY, now + 1000.0
            if s.outstanding and now - busy_since[s.id] >= 50:
                s.outstanding, s.idle_since_m = 0, now
        waiting = 4 - sum(s.outstanding for s in servers.values())
        for s in servers.values():  # the clients' calls go to free ready servers
            if waiting and s.phase is Phase.READY and not s.outstanding:
                s.outstanding, busy_since[s.id], waiting = 1, now, waiting - 1
        obs = Observed({"m": SpecObserved(servers=list(servers.values()), waiting=waiting)}, forecast=fv(100))
        for a in decide(Limits((lim,), 60.0, rk), obs, now):
            if isinstance(a, Start):
                for sid in a.replaces:
                    if sid in servers:  # one that stopped in this tick is gone (as in the pool)
                        servers[sid].replaced = True
                        replaced += 1
                for _ in range(a.count):
                    n += 1
                    servers[f"s{n}"] = V(f"s{n}", Phase.STARTING, requested_m=now)
            elif isinstance(a, Drain):
                servers[a.server].phase = Phase.DRAINING
            elif isinstance(a, (Stop, GiveUp)):
                servers.pop(a.server)
        live = sum(1 for s in servers.values() if s.phase is not Phase.STOPPING)
        most = max(most, live)
        assert live <= lim.max_servers, f"tick {tick}: {live} servers"
    # It ran full, and replaced servers ahead of their time limit over and over.
    assert most == lim.max_servers and replaced > 5 and n > 15


# -- configuration ---------------------------------------------------------------------------------


def _cfg(tmp: Path, spec: dict | None = None, **forecast):
    servers = [{"name": "a", "command": "x", **(spec or {})}]
    return parse_config({"balancer": {"port": 0}, "servers": servers, "forecast": forecast}, tmp)


def test_policy_floor_and_pending_timeout_from_the_configuration(tmp_path: Path):
    cfg = _cfg(tmp_path, {"floor": 2, "pending_timeout_s": 900, "max_servers": 8}, policy="hybrid")
    assert cfg.rules.policy == "hybrid"
    (lim,) = Limits.from_config(cfg).specs
    assert (lim.floor, lim.pending_timeout_s) == (2, 900.0)
    (lim,) = Limits.from_config(_cfg(tmp_path)).specs
    assert (lim.floor, lim.pending_timeout_s, _cfg(tmp_path).rules.policy) == (None, None, "demand")
    with pytest.raises(
        ConfigError, match=r"policy: 'harvst' is not one of demand, forecast, harvest, hybrid"
    ):
        _cfg(tmp_path, policy="harvst")
    with pytest.raises(ConfigError, match="floor: 5 exceeds max_servers = 4"):
        _cfg(tmp_path, {"floor": 5})
    with pytest.raises(ConfigError, match="floor: must be >= 0"):
        _cfg(tmp_path, {"floor": -1})
    with pytest.raises(ConfigError, match="pending_timeout_s: must be > 0"):
        _cfg(tmp_path, {"pending_timeout_s": 0})
