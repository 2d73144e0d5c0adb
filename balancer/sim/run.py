"""One campaign on the simulated cluster under one policy, on a virtual clock.

The loop is event-driven: the cluster's job starts and ends, call arrivals and completions, servers
becoming ready, and policy ticks (every ``tick_s`` and at once when arriving calls must wait, as the
live scaler does). Each tick builds ``Observed`` from the simulated servers and calls the same
``balancer.policy.decide`` as the live scaler, then applies its actions to the cluster. A call whose
server's job is killed at its time limit goes back to the head of the queue, as the live balancer
retries a call whose server died.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from balancer.config.schema import ForecastRules
from balancer.policy.decide import decide
from balancer.policy.rules import admissible_cpus
from balancer.policy.types import (
    Drain,
    ForecastView,
    GiveUp,
    Limits,
    Observed,
    Phase,
    SpecLimits,
    SpecMemory,
    SpecObserved,
    Start,
    Stop,
)
from balancer.sim.campaign import Campaign
from balancer.sim.cluster import PENDING, Cluster, JobEvent
from balancer.sim.forecasts import Learned, Oracle
from balancer.sim.replay import Replay

SPEC = "model"
POLICIES = ("demand", "forecast", "oracle")


@dataclass(frozen=True)
class SimConfig:
    """The balancer's settings for the simulated spec, and the simulator's own."""

    max_servers: int = 32
    cpus: int = 1
    backlog: int = 2
    time_limit_s: float = 4 * 3600.0
    idle_timeout_s: float = 60.0
    startup_delay_s: float = 30.0  # job start to server ready (launcher, model load, registration)
    tick_s: float = 30.0
    margin_s: float = 60.0
    rules: ForecastRules = field(default_factory=ForecastRules)
    forecaster: str = "seasonal-naive-day"
    step_s: float = 900.0
    horizon_s: float = 48 * 3600.0
    give_up_after_s: float = 30 * 86400.0  # a campaign not done by then is reported unfinished
    scheduler_estimate: bool = True  # the forecast carries the scheduler's expected wait for a job

    def limits(self) -> Limits:
        # A queued batch job is not a failed start: the start-up timeout counts from the request in
        # the live pool, so here it is set beyond any queue wait (see the report's note).
        spec = SpecLimits(
            SPEC,
            max_servers=self.max_servers,
            backlog=self.backlog,
            idle_timeout_s=self.idle_timeout_s,
            startup_timeout_s=math.inf,
            cpus=self.cpus,
            max_time_limit_s=self.time_limit_s,
        )
        return Limits((spec,), self.margin_s, self.rules)


@dataclass
class _Server:
    """A simulated server, with the fields ``policy.ServerView`` reads."""

    id: str
    job: int
    requested_m: float
    outstanding: int = 0
    idle_since_m: float = 0.0
    deadline_m: float | None = None
    replaced: bool = False
    outdated: bool = False
    successor: bool = False
    deferred: bool = False
    state: Phase = Phase.STARTING
    call: int = -1  # the call it computes, -1 for none
    attempt: int = 0  # bumped when a call is taken from it, so its completion is ignored
    busy_s: float = 0.0

    @property
    def phase(self) -> Phase:
        return self.state


@dataclass
class Result:
    """What one policy did to one campaign, and what it cost the cluster's own jobs."""

    policy: str
    makespan_s: float
    call_wait_s: np.ndarray
    job_wait_s: np.ndarray  # our jobs that started
    jobs_submitted: int
    jobs_never_started: int
    busy_s: float
    alloc_s: float  # CPU-seconds our jobs held
    pending_max: int
    beyond_max: int | None  # most pending beyond what the forecast admitted (None: no forecast)
    added_beyond_max: int | None  # most a tick's starts took pending beyond that (None: no forecast)
    trace_delay_s: float
    trace_jobs: int
    requeued: int
    timeline: dict[str, np.ndarray] = field(default_factory=dict)
    forecasts: list[tuple[float, np.ndarray]] = field(default_factory=list)
    actual_idle: np.ndarray | None = None  # others' idle per slot from the campaign's start
    idle_bound_s: float = math.nan  # makespan had the pool used exactly the idle capacity


def idle_bound_s(replay: Replay, start: float, work_s: float, cfg: SimConfig) -> float:
    """The campaign's makespan had every CPU left idle by the replay without us (up to
    ``max_servers``) computed for it from the start, with no start-up, queueing or stragglers:
    what harvesting idle capacity alone can give. A policy beats it only by taking CPUs that the
    cluster's own jobs would have used, i.e. by delaying them."""
    k = int(start // cfg.step_s)
    servers = np.minimum(cfg.max_servers, np.floor(replay.others_idle[k:] / cfg.cpus))
    done = np.cumsum(servers * cfg.step_s)
    i = int(np.searchsorted(done, work_s))
    return math.inf if i >= len(done) else (k + i + 1) * cfg.step_s - start


def simulate(replay: Replay, start: float, campaign: Campaign, policy: str, cfg: SimConfig) -> Result:
    """Run ``campaign`` from ``start`` (a time ``replay`` has a snapshot of) under ``policy``."""
    c = replay.snapshots[start].clone()
    horizon = max(1, int(cfg.horizon_s // cfg.step_s))
    source: Oracle | Learned | None = None
    if policy == "oracle":
        source = Oracle(replay.others_idle, cfg.step_s, horizon)
    elif policy == "forecast":
        source = Learned(cfg.forecaster, cfg.step_s, horizon, replay.trace.unix_start, c.procs)
    elif policy != "demand":
        raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    limits = cfg.limits()
    sim = _Sim(c, start, campaign, cfg)
    sim.run(limits, source)
    end = sim.done_at if sim.done_at is not None else c.now
    # The cost to the cluster's own jobs: those waiting at the start or submitted during the
    # campaign, run until all of them started, against the replay without us.
    while c.pending_trace_before(end):
        c.step()
    n = c.n_trace
    mine = np.asarray(c.start[:n])
    sel = (replay.submit < end) & (replay.start >= start)
    delay = mine[sel] - replay.start[sel]
    ours = sorted(c.ours)
    started = [j for j in ours if not math.isnan(c.start[j])]
    alloc = sum((c.end[j] - c.start[j]) * c.cpus[j] for j in started)
    k0 = int((start - c.t0) // cfg.step_s)
    k1 = int((end - c.t0) // cfg.step_s) + 1
    return Result(
        policy=policy,
        makespan_s=(sim.done_at - start) if sim.done_at is not None else math.inf,
        call_wait_s=sim.wait,
        job_wait_s=np.asarray([c.start[j] - c.submit[j] for j in started]),
        jobs_submitted=len(ours),
        jobs_never_started=len(ours) - len(started),
        busy_s=sim.busy_total,
        alloc_s=float(alloc),
        pending_max=sim.pending_max,
        beyond_max=sim.beyond_max if source is not None else None,
        added_beyond_max=sim.added_beyond_max if source is not None else None,
        trace_delay_s=float(delay.mean()) if len(delay) else 0.0,
        trace_jobs=int(sel.sum()),
        requeued=sim.requeued,
        timeline={k: np.asarray(v) for k, v in sim.line.items()},
        forecasts=list(source.made) if isinstance(source, Learned) else [],
        actual_idle=replay.others_idle[k0:k1],
        idle_bound_s=idle_bound_s(replay, start, campaign.work_s, cfg),
    )


class _Sim:
    def __init__(self, c: Cluster, start: float, campaign: Campaign, cfg: SimConfig) -> None:
        self.c = c
        self.cfg = cfg
        self.t0 = start
        self.arrive = start + campaign.arrive
        self.compute = campaign.compute
        n = len(campaign)
        self.wait = np.zeros(n)
        self.queued_at = self.arrive.copy()
        self.queue: deque[int] = deque()
        self.servers: dict[str, _Server] = {}
        self.by_job: dict[int, _Server] = {}
        self.free: dict[str, _Server] = {}  # ready servers with a free slot, in the order they freed
        self.events: list[tuple[float, int, str, str, int]] = []
        self.seq = 0
        self.done = 0
        self.done_at: float | None = None
        self.busy_total = 0.0
        self.requeued = 0
        self.memory = SpecMemory()  # the policy's, from its last decision
        self.pending_max = 0
        self.beyond_max = 0
        self.added_beyond_max = 0
        self.line: dict[str, list[float]] = {
            "t": [],
            "pool": [],
            "waiting": [],
            "pending": [],
            "admitted": [],
            "serving": [],
        }
        self.n_ids = 0
        self._last_view: tuple[ForecastView | None, float, ForecastView | None] = (None, 0.0, None)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, limits: Limits, source: Oracle | Learned | None) -> None:
        c, cfg = self.c, self.cfg
        n = len(self.arrive)
        ia = 0
        next_tick = self.t0
        stop_at = self.t0 + cfg.give_up_after_s
        while True:
            t_cl = c.next_time()
            t_ev = self.events[0][0] if self.events else math.inf
            t_arr = self.arrive[ia] if ia < n else math.inf
            t = min(t_cl, t_ev, t_arr, next_tick)
            if self.done_at is not None and t > self.done_at + cfg.idle_timeout_s:
                break
            if t > stop_at:
                break
            if t_cl == t:
                self._job_events(c.step())
                continue
            c.advance_to(t)
            if t_ev == t:
                _, _, kind, sid, token = heapq.heappop(self.events)
                self._event(kind, sid, token, t)
            elif t_arr == t:
                while ia < n and self.arrive[ia] == t:
                    self.queue.append(ia)
                    ia += 1
                self._dispatch(t)
                if self.queue:
                    next_tick = t  # a call has to wait: the scaler runs at once
            else:
                self._tick(limits, source, t)
                # No call and no server: nothing for the policy to decide (min_servers is 0) until
                # a call arrives, which runs the scaler at once. A year-long trickle of calls
                # would otherwise tick a million times for nothing.
                quiet = not self.queue and not self.servers
                next_tick = math.inf if quiet else t + cfg.tick_s
        # The campaign is over (or given up): the balancer shuts its pool down.
        for s in list(self.servers.values()):
            self._remove(s, self.c.now)

    def _push(self, t: float, kind: str, sid: str, token: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, sid, token))

    def _event(self, kind: str, sid: str, token: int, t: float) -> None:
        s = self.servers.get(sid)
        if s is None:
            return
        if kind == "ready" and s.state is Phase.STARTING:
            s.state = Phase.READY
            s.idle_since_m = t
            self.free[sid] = s
            self._dispatch(t)
        elif kind == "done" and token == s.attempt and s.call >= 0:
            self.busy_total += self.compute[s.call]
            s.busy_s += self.compute[s.call]
            s.call = -1
            s.outstanding = 0
            s.idle_since_m = t
            self.done += 1
            if self.done == len(self.arrive):
                self.done_at = t
            if s.state is Phase.READY:
                self.free[sid] = s
                self._dispatch(t)

    def _job_events(self, evs: list[JobEvent]) -> None:
        for e in evs:
            s = self.by_job.get(e.job)
            if s is None:
                continue
            if e.started:
                s.deadline_m = e.t + self.c.req[e.job]
                self._push(e.t + self.cfg.startup_delay_s, "ready", s.id)
            else:  # killed at its time limit
                self._remove(s, e.t, cancel=False)

    def _dispatch(self, t: float) -> None:
        q, free = self.queue, self.free
        while q and free:
            sid = next(iter(free))
            s = free.pop(sid)
            call = q.popleft()
            self.wait[call] += t - self.queued_at[call]
            s.call = call
            s.outstanding = 1
            s.attempt += 1
            self._push(t + self.compute[call], "done", sid, s.attempt)

    def _remove(self, s: _Server, t: float, cancel: bool = True) -> None:
        """A server leaves: its job is cancelled (or was killed); a call it had goes back first."""
        self.servers.pop(s.id, None)
        self.free.pop(s.id, None)
        self.by_job.pop(s.job, None)
        if s.call >= 0:
            self.queue.appendleft(s.call)
            self.queued_at[s.call] = t
            self.requeued += 1
            s.call = -1
            s.attempt += 1
        if cancel:
            self._job_events(self.c.cancel(s.job))
        self._dispatch(t)

    # -- the policy ----------------------------------------------------------------------------

    def _tick(self, limits: Limits, source: Oracle | Learned | None, t: float) -> None:
        view: ForecastView | None = source.view(self.c, t) if source is not None else None
        if view is not None and self.cfg.scheduler_estimate:
            # Live, the collector asks the scheduler (``sbatch --test-only``) for a job of ours.
            wait = self.c.expected_wait(self.cfg.cpus, self.cfg.time_limit_s)
            if self._last_view[0] is not view or self._last_view[1] != wait:
                self._last_view = (view, wait, replace(view, expected_wait_s=wait))
            view = self._last_view[2]
        oldest = self.queued_at[self.queue[0]] if self.queue else None
        obs = SpecObserved(
            servers=tuple(self.servers.values()),
            waiting=len(self.queue),
            oldest_wait_m=oldest,
            last_idle_stop_m=self.memory.last_idle_stop_m,
            last_demand_start_m=self.memory.last_demand_start_m,
        )
        before = self._pending()
        decision = decide(limits, Observed({SPEC: obs}, view), t)
        self.memory = decision.memory[SPEC]
        for a in decision:
            self._apply(a, t)
        self._sample(limits, view, t, before)

    def _apply(self, a: object, t: float) -> None:
        if isinstance(a, Start):
            limit = a.time_limit_s or self.cfg.time_limit_s
            for sid in a.replaces:
                if sid in self.servers:
                    self.servers[sid].replaced = True
            for _ in range(a.count):
                self.n_ids += 1
                sid = f"s{self.n_ids}"
                job, evs = self.c.submit_job(self.cfg.cpus, limit)
                new = _Server(sid, job, t)
                self.servers[sid] = new
                self.by_job[job] = new
                self._job_events(evs)
        elif isinstance(a, Stop | GiveUp):
            s = self.servers.get(a.server)
            if s is not None:
                self._remove(s, t)
        elif isinstance(a, Drain):
            s = self.servers.get(a.server)
            if s is not None:
                s.state = Phase.DRAINING
                self.free.pop(s.id, None)

    def _pending(self) -> int:
        return sum(1 for s in self.servers.values() if self.c.state[s.job] == PENDING)

    def _sample(self, limits: Limits, view: ForecastView | None, t: float, before: int) -> None:
        c = self.c
        pending = self._pending()
        admitted = -1
        if view is not None:
            admitted = int(admissible_cpus(view, limits.rules) // self.cfg.cpus)
            self.beyond_max = max(self.beyond_max, pending - admitted)
            # What this tick's starts added beyond what the forecast admitted (the rule's promise).
            allowed = max(before, limits.rules.min_pending, admitted)
            self.added_beyond_max = max(self.added_beyond_max, pending - allowed)
        self.pending_max = max(self.pending_max, pending)
        line = self.line
        line["t"].append(t)
        line["pool"].append(sum(1 for s in self.servers.values() if c.state[s.job] != PENDING))
        line["waiting"].append(len(self.queue))
        line["pending"].append(pending)
        line["serving"].append(sum(1 for s in self.servers.values() if s.call >= 0))
        line["admitted"].append(admitted)
