"""The pure policy: routing and every scaling rule, on plain records and a virtual clock."""

from __future__ import annotations

from dataclasses import dataclass

from balancer.policy.decide import decide
from balancer.policy.routing import pick_server
from balancer.policy.rules import hold_retry_s, start_backoff_s
from balancer.policy.types import (
    Drain,
    ForecastView,
    GiveUp,
    Hold,
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


@dataclass
class S:
    outstanding: int
    concurrency: int = 1


@dataclass
class V:
    """A server as a simulator would describe it."""

    id: str
    phase: Phase = Phase.READY
    outstanding: int = 0
    idle_since_m: float = 0.0
    requested_m: float = 0.0
    deadline_m: float | None = None
    started_m: float | None = None  # None: its job still waits in the queue
    preemptible: bool = False
    replaced: bool = False
    outdated: bool = False
    successor: bool = False
    deferred: bool = False


def test_pick_server_least_outstanding_with_free_slot():
    a, b, c = S(2, 2), S(1, 4), S(3, 4)
    assert pick_server([a, b, c]) is b
    assert pick_server([S(1, 1), S(2, 2)]) is None
    assert pick_server([]) is None


def test_metadata_routing_ignores_slots_but_prefers_the_least_loaded():
    full, fuller = S(1, 1), S(3, 2)
    assert pick_server([fuller, full], free_slot=False) is full
    assert pick_server([], free_slot=False) is None


LIM = SpecLimits("m", min_servers=0, max_servers=4, backlog=2, concurrency=1, idle_timeout_s=10,
                 startup_timeout_s=30)  # fmt: skip


def run(servers=(), now=0.0, lim=LIM, margin=60.0, **obs):
    observed = Observed({lim.name: SpecObserved(servers=list(servers), **obs)})
    return decide(Limits((lim,), margin), observed, now)


def lim(**kw) -> SpecLimits:
    base = dict(LIM.__dict__)
    base.update(kw)
    return SpecLimits(**base)


def starting(n: int, at: float = 0.0, started: float | None = None, **kw) -> list[V]:
    """Starts requested at ``at``; queued unless ``started`` (when their jobs began to run)."""
    return [V(f"st{i}", Phase.STARTING, requested_m=at, started_m=started, **kw) for i in range(n)]


def ready(n: int, **kw) -> list[V]:
    return [V(f"r{i}", **kw) for i in range(n)]


def test_demand_starts_servers_within_backlog_and_max():
    (a,) = run(waiting=10)
    assert a == Start("m", 2, StartReason.DEMAND, target=2)  # backlog 2 at once
    (a,) = run(starting(1), waiting=10)
    assert a.count == 1
    assert run(starting(2), waiting=10) == []
    (a,) = run(ready(3, outstanding=1), waiting=10)
    assert a.count == 1 and a.target == 4  # max_servers
    (a,) = run(waiting=3, lim=lim(concurrency=2))
    assert a.count == 2  # ceil(3 / 2)


def test_min_servers_and_held_specs():
    (a,) = run(lim=lim(min_servers=3, backlog=5))
    assert (a.count, a.reason) == (3, StartReason.MIN_SERVERS)
    assert run(waiting=5, held=True) == []


def test_idle_stop_longest_idle_first_never_below_min():
    idle = [V("s1", idle_since_m=5.0), V("s2", idle_since_m=1.0), V("s3", idle_since_m=9.5)]
    acts = run(idle, now=20, lim=lim(min_servers=1))
    assert acts == [Stop("m", "s2", StopReason.IDLE, target=2), Stop("m", "s1", StopReason.IDLE, target=1)]
    assert run([V("s1", idle_since_m=15.0), V("s2", outstanding=1)], now=20) == []  # not idle long enough
    # While calls wait, nothing is stopped for idleness (the free server is about to take the call).
    assert run([V("s1"), V("s2", outstanding=1)], now=20, waiting=1) == []
    assert isinstance(run([V("s1"), V("s2", outstanding=1)], now=20, waiting=2)[0], Start)


def test_startup_timeout_gives_up_and_no_start_goes_out_in_the_same_tick():
    # The timeout counts from the job's start (issue 20), not from the request.
    assert run(starting(1, at=0.0, started=0.0), now=31, waiting=1) == [GiveUp("m", "st0", target=0)]
    assert run(starting(1, at=0.0, started=0.0), now=29) == []


def test_hold_after_repeated_failures_and_backoff_in_between():
    (h,) = run(waiting=1, failures=3, last_failure="exit 1", last_failure_m=0.0, now=1)
    assert h == Hold("m", 3, "exit 1")
    assert run(waiting=1, failures=3, held=True, now=31) == []  # held: no start, no new Hold
    # Two failures: 2 s back-off from the last one, then starts resume.
    assert run(waiting=1, failures=2, last_failure_m=10.0, now=11.5) == []
    assert isinstance(run(waiting=1, failures=2, last_failure_m=10.0, now=12.0)[0], Start)
    assert [start_backoff_s(n) for n in range(5)] == [0, 1, 2, 4, 8]
    assert start_backoff_s(30) == 60


def test_a_held_spec_retries_one_start_with_a_growing_back_off_up_to_ten_minutes():
    assert [hold_retry_s(n) for n in (3, 4, 5, 8, 50)] == [32, 64, 128, 600, 600]
    (a,) = run(failures=3, held=True, last_failure_m=0.0, now=32)  # no demand needed
    assert a == Start("m", 1, StartReason.RETRY, target=1)
    assert run(starting(1, at=32), failures=3, held=True, last_failure_m=0.0, now=40) == []  # one at a time
    assert run(failures=4, held=True, last_failure_m=40.0, now=100) == []  # 64 s after the 4th failure
    assert run(failures=9, held=True, last_failure_m=0.0, now=600)[0].reason is StartReason.RETRY


def test_drain_before_the_time_limit_and_replace_once():
    # s1's job ends at t = 100; with a 60 s margin it drains from t = 40 on, and is replaced.
    s1 = V("s1", deadline_m=100.0, outstanding=1)
    acts = run([s1], now=39, lim=lim(min_servers=1))
    assert acts == []
    acts = run([s1], now=40, lim=lim(min_servers=1))
    assert acts == [Drain("m", "s1"), Start("m", 1, StartReason.REPLACE, target=1, replaces=("s1",))]
    # Next tick: draining, replacement under way and marked: nothing new until its calls finish.
    s1 = V("s1", Phase.DRAINING, deadline_m=100.0, outstanding=1, replaced=True)
    assert run([s1, *starting(1, at=40)], now=41, lim=lim(min_servers=1)) == []
    s1.outstanding = 0
    assert run([s1, *starting(1, at=40)], now=42, lim=lim(min_servers=1)) == [
        Stop("m", "s1", StopReason.TIME_LIMIT, target=1)
    ]


def test_a_draining_idle_server_is_not_also_stopped_as_idle():
    s1 = V("s1", deadline_m=50.0, idle_since_m=0.0)
    acts = run([s1, V("s2", idle_since_m=0.0)], now=20, lim=lim(min_servers=0))
    assert Drain("m", "s1") in acts
    assert [a.server for a in acts if isinstance(a, Stop) and a.reason is StopReason.IDLE] == ["s2"]
    assert [a.server for a in acts if isinstance(a, Stop) and a.reason is StopReason.TIME_LIMIT] == ["s1"]


def test_specs_are_decided_independently_and_a_forecast_is_accepted():
    a, b = lim(name="a"), lim(name="b", min_servers=1)
    fv = ForecastView(900.0, (4.0, 4.0))
    obs = Observed({"a": SpecObserved(waiting=1), "b": SpecObserved()}, forecast=fv)
    acts = decide(Limits((a, b)), obs, 0.0)
    assert [(x.spec, x.reason) for x in acts] == [("a", StartReason.DEMAND), ("b", StartReason.MIN_SERVERS)]


def test_calls_a_ready_server_is_taking_are_not_unmet_demand():
    # The first server just became ready; the call waiting is about to be handed to it.
    assert run(ready(1), waiting=1) == []
    (a,) = run(ready(1), waiting=3)  # two more than its free slot
    assert (a.count, a.reason) == (2, StartReason.DEMAND)
    (a,) = run(ready(1, outstanding=1), waiting=1)  # busy: the call does need a server
    assert a.count == 1
