"""The campaign loop: one campaign on the simulated cluster under one policy, on a virtual clock.

Event-driven: the cluster's job starts, ends and preemption notices, call arrivals and completions,
servers becoming ready, and policy ticks (every ``tick_s`` and at once when arriving calls must
wait, as the live scaler does). Each tick builds ``Observed`` from the simulated servers and calls
the same ``balancer.policy.decide`` as the live scaler, then applies its actions to the cluster. A
call whose server's job ends under it (time limit, preemption) goes back to the head of the queue,
as the live balancer retries a call whose server died. A preempted server takes no new call from
its notice on; what it does with the grace time is ``SimConfig.on_notice``. What the loop counts
(waits, CPU-seconds, footprint) ``run.simulate`` assembles into a ``Result``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from balancer.policy.decide import decide
from balancer.policy.rules import admission_cpus
from balancer.policy.types import (
    Drain,
    ForecastView,
    GiveUp,
    Limits,
    Observed,
    Phase,
    SpecMemory,
    SpecObserved,
    Start,
    Stop,
)
from balancer.sim.campaign import Campaign
from balancer.sim.cluster import PENDING, RUNNING, Cluster, JobEvent
from balancer.sim.config import SPEC, SimConfig
from balancer.sim.forecasts import Learned, observed_view


@dataclass
class SimServer:
    """A simulated server, with the fields ``policy.ServerView`` reads."""

    id: str
    job: int
    requested_m: float
    outstanding: int = 0
    idle_since_m: float = 0.0
    deadline_m: float | None = None
    started_m: float | None = None
    preemptible: bool = False
    replaced: bool = False
    outdated: bool = False
    successor: bool = False
    deferred: bool = False
    state: Phase = Phase.STARTING
    call: int = -1  # the call it computes, -1 for none
    call_t: float = 0.0  # when that call began
    attempt: int = 0  # bumped when a call is taken from it, so its completion is ignored
    noticed: bool = False  # its job got a preemption notice: it takes no new call

    @property
    def phase(self) -> Phase:
        return self.state


class Loop:
    """The campaign loop's state: the cluster, our servers, the calls, and what it counts."""

    def __init__(self, c: Cluster, start: float, campaign: Campaign, cfg: SimConfig, policy: str) -> None:
        self.c = c
        self.cfg = cfg
        self.policy = policy
        self.t0 = start
        self.arrive = start + campaign.arrive
        self.compute = campaign.compute
        n = len(campaign)
        self.wait = np.zeros(n)
        self.completed = np.zeros(n, dtype=bool)
        self.repeated = 0
        self.queued_at = self.arrive.copy()
        self.queue: deque[int] = deque()
        self.servers: dict[str, SimServer] = {}
        self.by_job: dict[int, SimServer] = {}
        self.free: dict[str, SimServer] = {}  # ready servers with a free slot, in the order they freed
        self.events: list[tuple[float, int, str, str, int]] = []
        self.seq = 0
        self.done = 0
        self.done_at: float | None = None
        self.busy_total = 0.0
        self.startup_cpu_s = 0.0
        self.killed_cpu_s = 0.0
        self.requeued = 0
        self.preempted = 0
        self.memory = SpecMemory()  # the policy's, from its last decision
        self.pending_max = 0
        self.beyond_max = 0
        self.held_max = 0
        self.serving = 0
        self.serving_max = 0
        self.npend = 0
        self.pend_area = 0.0
        self.pend_t = start
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

    def run(self, limits: Limits, source: Learned | None) -> None:
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
        if self.done_at is None:
            self._pending_add(self.c.now, 0)
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
            call = s.call
            self.busy_total += self.compute[call]
            if self.completed[call]:
                self.repeated += 1
            self.completed[call] = True
            s.call = -1
            s.outstanding = 0
            s.idle_since_m = t
            if not s.noticed:
                self.serving -= 1
            self.done += 1
            if self.done == len(self.arrive):
                self._pending_add(t, 0)  # the time-averaged pending count ends here
                self.done_at = t
            if s.state is Phase.READY:
                self.free[sid] = s
                self._dispatch(t)
            elif s.noticed and self.cfg.on_notice == "idle":
                self._remove(s, t)

    def _job_events(self, evs: list[JobEvent]) -> None:
        for e in evs:
            s = self.by_job.get(e.job)
            if s is None:
                continue
            if e.started:
                self._pending_add(e.t, -1)
                s.started_m = e.t
                s.deadline_m = e.t + self.c.req[e.job]
                self._push(e.t + self.cfg.startup_delay_s, "ready", s.id)
                holding = sum(1 for x in self.servers.values() if x.started_m is not None and not x.noticed)
                self.held_max = max(self.held_max, holding)
            elif e.notice:
                # Preemption notice: no new call; what it computes finishes if it ends in time.
                if s.call >= 0:
                    self.serving -= 1  # on its way out: its call no longer counts as in service
                s.noticed = True
                s.state = Phase.STOPPING
                self.free.pop(s.id, None)
                self.preempted += 1
                if self.cfg.on_notice == "now" or (self.cfg.on_notice == "idle" and s.call < 0):
                    self._remove(s, e.t)
            else:  # its job ended under it: time limit, or preempted at the end of the grace time
                self._remove(s, e.t, cancel=False)

    def _dispatch(self, t: float) -> None:
        q, free = self.queue, self.free
        while q and free:
            sid = next(iter(free))
            s = free.pop(sid)
            call = q.popleft()
            self.wait[call] += t - self.queued_at[call]
            s.call = call
            s.call_t = t
            s.outstanding = 1
            s.attempt += 1
            self.serving += 1
            self.serving_max = max(self.serving_max, self.serving)
            self._push(t + self.compute[call], "done", sid, s.attempt)

    def _remove(self, s: SimServer, t: float, cancel: bool = True) -> None:
        """A server leaves: its job is cancelled (or ended); a call it had goes back first."""
        self.servers.pop(s.id, None)
        self.free.pop(s.id, None)
        self.by_job.pop(s.job, None)
        cpus = self.cfg.cpus
        if s.call >= 0:
            self.killed_cpu_s += (t - s.call_t) * cpus
            self.queue.appendleft(s.call)
            self.queued_at[s.call] = t
            self.requeued += 1
            if not s.noticed:
                self.serving -= 1
            s.call = -1
            s.attempt += 1
        if s.started_m is not None:
            self.startup_cpu_s += min(self.cfg.startup_delay_s, t - s.started_m) * cpus
        if cancel:
            if self.c.state[s.job] == PENDING:
                self._pending_add(t, -1)
            self._job_events(self.c.cancel(s.job))
        self._dispatch(t)

    def _pending_add(self, t: float, d: int) -> None:
        """Pending allocations change by ``d`` at ``t``: integrate the count so far."""
        if self.done_at is None:
            self.pend_area += self.npend * max(0.0, t - self.pend_t)
            self.pend_t = t
        self.npend += d
        self.pending_max = max(self.pending_max, self.npend)

    # -- the policy ----------------------------------------------------------------------------

    def _view(self, source: Learned | None, t: float) -> ForecastView | None:
        """What ``decide`` is told: no forecast for demand; the learned one otherwise, with the
        current observation alone while it is cold for harvest and hybrid (forecast: demand)."""
        if source is None:
            return None
        view = source.view(self.c, t)
        if view is None:
            if self.policy == "forecast" or not self.cfg.observe_cold:
                return None
            return observed_view(self.c, self.cfg.step_s)
        if self.policy == "forecast" and self.cfg.scheduler_estimate:
            # Live, the collector asks the scheduler (``sbatch --test-only``) for a job of ours.
            wait = self.c.expected_wait(self.cfg.cpus, self.cfg.time_limit_s)
            if self._last_view[0] is not view or self._last_view[1] != wait:
                self._last_view = (view, wait, replace(view, expected_wait_s=wait))
            view = self._last_view[2]
        return view

    def _tick(self, limits: Limits, source: Learned | None, t: float) -> None:
        view = self._view(source, t)
        oldest = self.queued_at[self.queue[0]] if self.queue else None
        obs = SpecObserved(
            servers=tuple(self.servers.values()),
            waiting=len(self.queue),
            oldest_wait_m=oldest,
            last_idle_stop_m=self.memory.last_idle_stop_m,
            last_demand_start_m=self.memory.last_demand_start_m,
        )
        decision = decide(limits, Observed({SPEC: obs}, view), t)
        self.memory = decision.memory[SPEC]
        for a in decision:
            self._apply(a, t)
        self._sample(limits, view, t)

    def _apply(self, a: object, t: float) -> None:
        if isinstance(a, Start):
            limit = a.time_limit_s or self.cfg.time_limit_s
            pre = a.preemptible
            for sid in a.replaces:
                if sid in self.servers:
                    self.servers[sid].replaced = True
            for _ in range(a.count):
                self.n_ids += 1
                sid = f"s{self.n_ids}"
                self._pending_add(t, +1)
                job, evs = self.c.submit_job(self.cfg.cpus, limit, preemptible=pre)
                new = SimServer(sid, job, t, preemptible=pre)
                self.servers[sid] = new
                self.by_job[job] = new
                self._job_events(evs)
        elif isinstance(a, Stop | GiveUp):  # any reason, WITHDRAWN and PENDING_TIMEOUT included
            s = self.servers.get(a.server)
            if s is not None:
                self._remove(s, t)
        elif isinstance(a, Drain):
            s = self.servers.get(a.server)
            if s is not None and s.state is not Phase.STOPPING:
                s.state = Phase.DRAINING
                self.free.pop(s.id, None)

    def _pending(self) -> int:
        return sum(1 for s in self.servers.values() if self.c.state[s.job] == PENDING)

    def _sample(self, limits: Limits, view: ForecastView | None, t: float) -> None:
        c, cpus = self.c, self.cfg.cpus
        pending = self._pending()
        # What admission allows now (the rules' own ``admission_cpus``: the CPUs a new job could
        # start on), at least ``min_pending``; on the policy's view, or on the current
        # observation for demand (which admits by backlog alone).
        fv = view if view is not None else observed_view(c, self.cfg.step_s)
        admitted = max(limits.rules.min_pending, int(admission_cpus(fv, limits.rules) // cpus))
        self.beyond_max = max(self.beyond_max, pending - admitted)
        line = self.line
        line["t"].append(t)
        line["pool"].append(sum(1 for s in self.servers.values() if c.state[s.job] == RUNNING))
        line["waiting"].append(len(self.queue))
        line["pending"].append(pending)
        line["serving"].append(self.serving)
        line["admitted"].append(admitted)
