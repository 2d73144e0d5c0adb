"""A batch cluster of ``procs`` CPUs as its scheduler runs it: FCFS or multifactor fair-share
priority, EASY backfilling (``easy.py``), and a preemptible partition (``preempt.py``) for harvesting
what is left idle.

Trace jobs arrive at their recorded submit times; each is killed at its request (``overrun="cap"``,
the default) or runs its recorded run time (``"extend"``). "cap" is the default by evidence: the
replay's mean wait matches the trace's recorded one under it (LANL CM-5: 0.44 h replayed, 0.51 h
recorded; "extend" gives 6.35 h, as the jobs past their request, 24 % of LANL's CPU-hours, were not
what its scheduler saw), and both modes agree on KTH; the CPU-hours past request are reported. The
scheduler plans with requests only, as EASY does (a job already past its request is planned as
ending now). ``scheduler="fairshare"`` orders the queue by priority (``fairshare.py``) on each
pass and then backfills the same way behind the highest-priority job.

Our server jobs are submitted and cancelled by the simulator while it runs; they are one user of
their own. A preemptible job starts only on CPUs left free after the normal pass and never holds a
reservation; the normal pass counts the CPUs of preemptible jobs as available and preempts them when
it needs them. So that preemptible jobs never move a normal job when there is no grace time, the
normal pass runs only on what changes it (a trace event, a normal job's submit, cancel or end, CPUs
coming back from a preemption), never on a preemptible job's own start or end, and fair-share
charges preemptible usage to its user alone (``FairShare``: not to the total, not to the users
counted). ``clone`` copies the whole state, so a replay without our jobs is run once and every
policy continues from the same snapshot.

``one_node``: the machine is one node, as the live replay's test cluster (``bench/live_replay.py``).
SLURM's backfill reserves whole nodes for the queue's head, so there a job (preemptible or not) may
start past a waiting head only if it ends, by its request, before the head's reservation; never on
CPUs beside it the head will not need, as EASY on CPUs allows (measured: a 5-CPU job waited 16 s
beside an 84-CPU head on a 100-CPU node with 15 CPUs idle).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np

from balancer.capacity.swf import SwfTrace
from balancer.sim.easy import End, expected_wait, reservation
from balancer.sim.fairshare import FairShare
from balancer.sim.jobs import DONE, OURS_USER, PENDING, RUNNING, JobEvent
from balancer.sim.preempt import Claim, Preemption
from balancer.sim.record import Recorder

SCHEDULERS = ("easy", "fairshare")
OVERRUNS = ("cap", "extend")

__all__ = ["DONE", "OURS_USER", "OVERRUNS", "PENDING", "RUNNING", "SCHEDULERS", "Cluster", "JobEvent"]


class Cluster(Preemption, Recorder):
    """Event-driven batch scheduler; time moves only through ``step``/``advance_to``."""

    def __init__(
        self,
        procs: int,
        submit: Sequence[float],
        run: Sequence[float],
        req: Sequence[float],
        cpus: Sequence[int],
        step_s: float = 900.0,
        t0: float = 0.0,
        scheduler: str = "easy",
        preempt_grace_s: float = 60.0,
        users: Sequence[int] | None = None,
        one_node: bool = False,
    ) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r} (known: {', '.join(SCHEDULERS)})")
        self.procs = int(procs)
        self.free = self.procs  # CPUs neither held nor claimed: what a job could start on now
        self.claimed = 0  # CPUs held idle for normal jobs waiting for preempted ones to end
        self.now = float(t0)
        self.submit = [float(x) for x in submit]
        self.run = [float(x) for x in run]
        self.req = [float(x) for x in req]
        self.cpus = [int(x) for x in cpus]
        n = len(self.submit)
        self.users = [int(x) for x in users] if users is not None else [0] * n
        self.pre = [False] * n
        self.n_trace = n
        self.state = [PENDING] * n
        self.start = [math.nan] * n
        self.end = [math.nan] * n
        self.ours: set[int] = set()
        self.queue: list[int] = []  # normal jobs pending (not those waiting on a claim)
        self.pre_queue: list[int] = []  # preemptible jobs pending, first come first served
        self.running: dict[int, float] = {}  # normal job -> expected end by its request
        self.pre_running: dict[int, float] = {}  # preemptible job not preempted -> start, oldest first
        self.pre_cpus = 0  # CPUs those hold: the normal pass may take them
        self.preempting: dict[int, tuple[float, int]] = {}  # job -> (end of grace, claim or -1)
        self.claims: dict[int, Claim] = {}
        self.n_preempted = 0
        self._ends: list[tuple[float, int]] = []  # (actual end, job); stale entries skipped
        self._next_sub = 0
        self.scheduler = scheduler
        self.preempt_grace_s = float(preempt_grace_s)
        # SLURM's backfill reserves whole nodes for the queue's head: on a machine of one node a
        # job may backfill only if it ends (by its request) before the head's reservation, never
        # beside the head on CPUs it will not need (measured: bench/live_replay.py).
        self.one_node = bool(one_node)
        self.fs: FairShare | None = FairShare(t0) if scheduler == "fairshare" else None
        over = np.maximum(np.asarray(self.run) - np.asarray(self.req), 0.0) * np.asarray(self.cpus)
        self.overrun_cpu_h = float(over.sum()) / 3600.0  # trace jobs' CPU-hours past their request
        self.overrun_jobs = int((over > 0).sum())
        # Per grid slot: idle CPU-seconds, those our jobs held, and those our preemptible jobs held.
        self.step_s = float(step_s)
        self.t0 = float(t0)
        self.idle_area: list[float] = []
        self.ours_area: list[float] = []
        self.ours_pre_area: list[float] = []
        self.ours_busy = 0
        self.ours_pre_busy = 0

    @classmethod
    def from_trace(
        cls,
        trace: SwfTrace,
        step_s: float = 900.0,
        scheduler: str = "easy",
        preempt_grace_s: float = 60.0,
        overrun: str = "cap",
        one_node: bool = False,
    ) -> Cluster:
        """The trace's jobs on a machine of its ``MaxProcs``; time 0 is the trace's start."""
        if overrun not in OVERRUNS:
            raise ValueError(f"unknown overrun {overrun!r} (known: {', '.join(OVERRUNS)})")
        j = trace.jobs
        procs = np.minimum(trace.procs, trace.max_procs)
        ok = procs > 0
        run = np.maximum(j["run"], 0.0)
        req = np.where(j["req_time"] > 0, j["req_time"], run)
        over = (np.maximum(run - req, 0.0) * procs)[ok]
        if overrun == "cap":
            run = np.minimum(run, req)
        order = np.argsort(j["submit"][ok], kind="stable")
        c = cls(
            trace.max_procs,
            j["submit"][ok][order],
            run[ok][order],
            req[ok][order],
            procs[ok][order].astype(int),
            step_s,
            scheduler=scheduler,
            preempt_grace_s=preempt_grace_s,
            users=j["user"][ok][order].astype(int),
            one_node=one_node,
        )
        c.overrun_cpu_h = float(over.sum()) / 3600.0
        c.overrun_jobs = int((over > 0).sum())
        return c

    def clone(self) -> Cluster:
        c = object.__new__(Cluster)
        c.__dict__.update(self.__dict__)
        for name in (
            "submit",
            "run",
            "req",
            "cpus",
            "users",
            "pre",
            "state",
            "start",
            "end",
            "queue",
            "pre_queue",
            "_ends",
            "idle_area",
            "ours_area",
            "ours_pre_area",
        ):
            setattr(c, name, list(getattr(self, name)))
        c.ours = set(self.ours)
        c.running = dict(self.running)
        c.pre_running = dict(self.pre_running)
        c.preempting = dict(self.preempting)
        c.claims = {x: Claim(k.got, list(k.jobs), k.at) for x, k in self.claims.items()}
        c.fs = self.fs.copy() if self.fs is not None else None
        return c

    # -- time ----------------------------------------------------------------------------------

    def next_time(self) -> float:
        """When the next trace submission or job end happens (inf: nothing left)."""
        t = self.submit[self._next_sub] if self._next_sub < self.n_trace else math.inf
        ends = self._ends
        while ends and self.state[ends[0][1]] != RUNNING:
            heapq.heappop(ends)
        if ends and ends[0][0] < t:
            t = ends[0][0]
        return t

    def step(self) -> list[JobEvent]:
        """Process everything that happens at the next event time; our jobs' starts and ends."""
        t = self.next_time()
        if t == math.inf:
            return []
        self._clock(t)
        out: list[JobEvent] = []
        ends = self._ends
        normal = False  # whether anything the normal pass sees changed
        while ends and ends[0][0] <= t:
            e, j = heapq.heappop(ends)
            if self.state[j] != RUNNING:
                continue
            p = self.preempting.get(j)
            preempted = p is not None and e >= p[0]
            normal = normal or not self.pre[j] or p is not None
            self._finish(j, t, out)
            if j in self.ours:
                out.append(JobEvent(j, t, False, killed=not preempted, preempted=preempted))
        fs = self.fs
        while self._next_sub < self.n_trace and self.submit[self._next_sub] <= t:
            self.queue.append(self._next_sub)
            if fs is not None:
                fs.arrived(self.users[self._next_sub])
            self._next_sub += 1
            normal = True
        self._schedule(out, normal)
        return out

    def advance_to(self, t: float) -> list[JobEvent]:
        """Every event up to ``t``, then the clock to ``t``."""
        out: list[JobEvent] = []
        while self.next_time() <= t:
            out += self.step()
        self._clock(t)
        return out

    # -- our jobs ------------------------------------------------------------------------------

    def submit_job(
        self, cpus: int, time_limit_s: float, preemptible: bool = False
    ) -> tuple[int, list[JobEvent]]:
        """Submit one of ours now; it runs until cancelled, preempted or its time limit."""
        j = len(self.submit)
        self.submit.append(self.now)
        self.run.append(float(time_limit_s))
        self.req.append(float(time_limit_s))
        self.cpus.append(int(cpus))
        self.users.append(OURS_USER)
        self.pre.append(bool(preemptible))
        self.state.append(PENDING)
        self.start.append(math.nan)
        self.end.append(math.nan)
        self.ours.add(j)
        if self.fs is not None:
            self.fs.arrived(OURS_USER, scavenger=preemptible)
        (self.pre_queue if preemptible else self.queue).append(j)
        out: list[JobEvent] = []
        self._schedule(out, normal=not preemptible)
        return j, out

    def cancel(self, j: int) -> list[JobEvent]:
        """Cancel a job of ours now (pending, waiting on preemption, or running); the queue moves."""
        out: list[JobEvent] = []
        st = self.state[j]
        normal = not self.pre[j] or j in self.preempting
        if st == PENDING:
            if j in self.claims:
                self._release(j)
            elif self.pre[j]:
                self.pre_queue.remove(j)
            else:
                self.queue.remove(j)
            self.state[j] = DONE
            self.end[j] = self.now
            if self.fs is not None:
                self.fs.left(self.users[j], scavenger=self.pre[j])
        elif st == RUNNING:
            self._finish(j, self.now, out)
        else:
            return out
        self._schedule(out, normal)
        return out

    # -- scheduling ----------------------------------------------------------------------------

    def _begin(self, j: int, out: list[JobEvent]) -> None:
        now = self.now
        c = self.cpus[j]
        self.state[j] = RUNNING
        self.start[j] = now
        self.free -= c
        if self.pre[j]:
            self.pre_running[j] = now
            self.pre_cpus += c
        else:
            self.running[j] = now + self.req[j]
        heapq.heappush(self._ends, (now + self.run[j], j))
        if self.fs is not None:
            self.fs.started(self.users[j], c, now, scavenger=self.pre[j])
        if j in self.ours:
            self.ours_busy += c
            if self.pre[j]:
                self.ours_pre_busy += c
            out.append(JobEvent(j, now, True))

    def _finish(self, j: int, t: float, out: list[JobEvent]) -> None:
        self.state[j] = DONE
        self.end[j] = t
        c = self.cpus[j]
        owner = -1
        pre = self.pre[j]
        if pre:
            if self.pre_running.pop(j, None) is not None:
                self.pre_cpus -= c
            p = self.preempting.pop(j, None)
            if p is not None:
                owner = p[1]
        else:
            del self.running[j]
        if j in self.ours:
            self.ours_busy -= c
            if pre:
                self.ours_pre_busy -= c
        if self.fs is not None:
            self.fs.stopped(self.users[j], c, t, scavenger=pre)
            self.fs.left(self.users[j], scavenger=pre)
        if not self._given_back(j, owner, c, out):
            self.free += c

    def _schedule(self, out: list[JobEvent], normal: bool = True) -> None:
        """The normal pass (when ``normal``: something it sees changed), then the preemptible one.

        A preemptible job's own start or end never runs the normal pass: the CPUs of preemptible
        jobs count as available to it anyway, so it could start nothing new, but a pass at another
        time could (planned ends of jobs past their request move with the clock; fair-share
        priorities age), and so would move normal jobs."""
        q = self.queue
        if normal and q and (self.free > 0 or self.pre_cpus > 0):
            if self.fs is not None and len(q) > 1:
                q.sort(key=self.fs.order_key(self.now, self.submit, self.users))
            self._normal(q, out)
        if self.pre_queue and self.free > 0:
            pq, cpus = self.pre_queue, self.cpus
            # One node: the head's reservation holds the node against preemptible jobs too (SLURM
            # plans them as any job); one may start only if it ends by its request before it.
            shadow = math.inf
            if self.one_node and q:
                shadow = self._reservation(cpus[q[0]], self._planned_ends())[0]
            i = 0
            while i < len(pq) and self.free > 0:
                if cpus[pq[i]] <= self.free and self.now + self.req[pq[i]] <= shadow:
                    self._begin(pq.pop(i), out)
                    continue
                i += 1

    def _normal(self, q: list[int], out: list[JobEvent]) -> None:
        """The normal pass: heads in order while they fit, then EASY backfill behind the first
        that does not; a job that fits only with preemptible jobs' CPUs preempts them."""
        cpus = self.cpus
        while q:
            c = cpus[q[0]]
            if c <= self.free:
                self._begin(q.pop(0), out)
            elif c <= self.free + self.pre_cpus:
                self._claim(q.pop(0), out)
            else:
                break
        if len(q) < 2 or (self.free <= 0 and self.pre_cpus <= 0):
            return
        shadow, extra = self._reservation(cpus[q[0]], self._planned_ends())
        if self.one_node:
            extra = 0
        now, req, grace = self.now, self.req, self.preempt_grace_s
        i = 1
        while i < len(q) and (self.free > 0 or self.pre_cpus > 0):
            j = q[i]
            c = cpus[j]
            if c <= self.free:
                if now + req[j] <= shadow:
                    del q[i]
                    self._begin(j, out)
                    continue
                if c <= extra:
                    extra -= c
                    del q[i]
                    self._begin(j, out)
                    continue
            elif c <= self.free + self.pre_cpus:
                if now + grace + req[j] <= shadow:
                    del q[i]
                    self._claim(j, out)
                    continue
                if c <= extra:
                    extra -= c
                    del q[i]
                    self._claim(j, out)
                    continue
            i += 1

    def _planned_ends(self) -> list[End]:
        """(expected end, job, CPUs back) as the scheduler plans: normal jobs by their request
        (no earlier than now), claimed CPUs when their job's request ends, preempted jobs that
        no claim waits for at the end of their grace. Preemptible CPUs count as free already."""
        now, cpus = self.now, self.cpus
        ends = [(max(e, now), j, cpus[j]) for j, e in self.running.items()]
        for x, claim in self.claims.items():
            ends.append((claim.at + self.req[x], x, cpus[x]))
        for k, (e, owner) in self.preempting.items():
            if owner < 0:
                ends.append((e, k, cpus[k]))
        ends.sort()
        return ends

    def _reservation(self, need: int, ends: list[End]) -> tuple[float, int]:
        return reservation(self.free + self.pre_cpus, need, ends, self.now)

    def expected_wait(self, cpus: int, time_limit_s: float, preemptible: bool = False) -> float:
        """The scheduler's own estimate for a job submitted now (``easy.expected_wait``; the grace
        time when it must preempt for its CPUs). Preemptible: 0 when the CPUs the normal queue
        could not use suffice, else inf (it never holds a reservation)."""
        if preemptible:
            return 0.0 if cpus <= self.free else math.inf
        q = self.queue
        head = (self.cpus[q[0]], self.req[q[0]]) if q else None
        delay = 0.0 if cpus <= self.free else self.preempt_grace_s
        avail = self.free + self.pre_cpus
        return expected_wait(self.now, self._planned_ends(), avail, delay, head, cpus, time_limit_s)

    def pending_trace_before(self, t: float) -> bool:
        """Some trace job submitted before ``t`` has not started yet."""
        if self._next_sub < self.n_trace and self.submit[self._next_sub] < t:
            return True
        n = self.n_trace
        return any(j < n and self.submit[j] < t for j in self.queue) or any(
            x < n and self.submit[x] < t for x in self.claims
        )
