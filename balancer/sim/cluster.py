"""A batch cluster of ``procs`` CPUs scheduled FCFS with EASY backfilling, as KTH's SP2 was.

Trace jobs arrive at their recorded submit times and run their recorded run time (capped at the
request, as the scheduler would kill them); our server jobs are submitted and cancelled by the
simulator while it runs. EASY: the queue's head starts as soon as it fits; when it does not, it gets
a reservation at the earliest time enough CPUs free up by the running jobs' *requested* ends, and a
later job may start now only if it ends (by its request) before that reservation or uses CPUs the
head will not need then. ``clone`` copies the whole state, so a replay without our jobs is run once
and every policy continues from the same snapshot at the campaign's start.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from balancer.capacity.swf import SwfTrace

PENDING, RUNNING, DONE = 0, 1, 2


@dataclass(frozen=True)
class JobEvent:
    """One of our jobs started or ended (``killed``: it ran into its time limit)."""

    job: int
    t: float
    started: bool
    killed: bool = False


class Cluster:
    """Event-driven FCFS + EASY scheduler; time moves only through ``step``."""

    def __init__(
        self,
        procs: int,
        submit: Sequence[float],
        run: Sequence[float],
        req: Sequence[float],
        cpus: Sequence[int],
        step_s: float = 900.0,
        t0: float = 0.0,
    ) -> None:
        self.procs = int(procs)
        self.free = self.procs
        self.now = float(t0)
        self.submit = [float(x) for x in submit]
        self.run = [float(x) for x in run]
        self.req = [float(x) for x in req]
        self.cpus = [int(x) for x in cpus]
        n = len(self.submit)
        self.n_trace = n
        self.state = [PENDING] * n
        self.start = [math.nan] * n
        self.end = [math.nan] * n
        self.ours: set[int] = set()
        self.queue: list[int] = []
        self.running: dict[int, float] = {}  # job -> expected end by its request
        self._ends: list[tuple[float, int]] = []  # (actual end, job); stale entries skipped
        self._next_sub = 0
        # Idle CPU-seconds per grid slot, and those our own jobs held: the collector's history.
        self.step_s = float(step_s)
        self.t0 = float(t0)
        self.idle_area: list[float] = []
        self.ours_area: list[float] = []
        self.ours_busy = 0

    @classmethod
    def from_trace(cls, trace: SwfTrace, step_s: float = 900.0) -> Cluster:
        """The trace's jobs on a machine of its ``MaxProcs``; time 0 is the trace's start."""
        j = trace.jobs
        procs = np.minimum(trace.procs, trace.max_procs)
        ok = procs > 0
        run = np.maximum(j["run"], 0.0)
        req = np.where(j["req_time"] > 0, j["req_time"], run)
        run = np.minimum(run, req)
        order = np.argsort(j["submit"][ok], kind="stable")
        return cls(
            trace.max_procs,
            j["submit"][ok][order],
            run[ok][order],
            req[ok][order],
            procs[ok][order].astype(int),
            step_s,
        )

    def clone(self) -> Cluster:
        c = object.__new__(Cluster)
        c.__dict__.update(self.__dict__)
        for name in (
            "submit",
            "run",
            "req",
            "cpus",
            "state",
            "start",
            "end",
            "queue",
            "_ends",
            "idle_area",
            "ours_area",
        ):
            setattr(c, name, list(getattr(self, name)))
        c.ours = set(self.ours)
        c.running = dict(self.running)
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

    def _clock(self, t: float) -> None:
        """Integrate idle and our busy CPUs up to ``t``."""
        now = self.now
        if t <= now:
            return
        step, t0 = self.step_s, self.t0
        idle, ours = self.idle_area, self.ours_area
        while now < t:
            k = int((now - t0) // step)
            while len(idle) <= k:
                idle.append(0.0)
                ours.append(0.0)
            seg_end = min(t, t0 + (k + 1) * step)
            dt = seg_end - now
            idle[k] += self.free * dt
            ours[k] += self.ours_busy * dt
            now = seg_end
        self.now = t

    def step(self) -> list[JobEvent]:
        """Process everything that happens at the next event time; our jobs' starts and ends."""
        t = self.next_time()
        if t == math.inf:
            return []
        self._clock(t)
        out: list[JobEvent] = []
        ends = self._ends
        while ends and ends[0][0] <= t:
            _, j = heapq.heappop(ends)
            if self.state[j] == RUNNING:
                self._finish(j, t)
                if j in self.ours:
                    out.append(JobEvent(j, t, False, killed=True))
        while self._next_sub < self.n_trace and self.submit[self._next_sub] <= t:
            self.queue.append(self._next_sub)
            self._next_sub += 1
        self._schedule(out)
        return out

    def advance_to(self, t: float) -> list[JobEvent]:
        """Every event up to ``t``, then the clock to ``t``."""
        out: list[JobEvent] = []
        while self.next_time() <= t:
            out += self.step()
        self._clock(t)
        return out

    # -- our jobs ------------------------------------------------------------------------------

    def submit_job(self, cpus: int, time_limit_s: float) -> tuple[int, list[JobEvent]]:
        """Submit one of ours now; it runs until cancelled or its time limit."""
        j = len(self.submit)
        self.submit.append(self.now)
        self.run.append(float(time_limit_s))
        self.req.append(float(time_limit_s))
        self.cpus.append(int(cpus))
        self.state.append(PENDING)
        self.start.append(math.nan)
        self.end.append(math.nan)
        self.ours.add(j)
        self.queue.append(j)
        out: list[JobEvent] = []
        self._schedule(out)
        return j, out

    def cancel(self, j: int) -> list[JobEvent]:
        """Cancel a job of ours now: dequeue it, or end it and let the queue move."""
        out: list[JobEvent] = []
        if self.state[j] == PENDING:
            self.queue.remove(j)
            self.state[j] = DONE
            self.end[j] = self.now
        elif self.state[j] == RUNNING:
            self._finish(j, self.now)
            self._schedule(out)
        return out

    # -- scheduling ----------------------------------------------------------------------------

    def _begin(self, j: int, out: list[JobEvent]) -> None:
        now = self.now
        self.state[j] = RUNNING
        self.start[j] = now
        self.free -= self.cpus[j]
        self.running[j] = now + self.req[j]
        heapq.heappush(self._ends, (now + self.run[j], j))
        if j in self.ours:
            self.ours_busy += self.cpus[j]
            out.append(JobEvent(j, now, True))

    def _finish(self, j: int, t: float) -> None:
        self.state[j] = DONE
        self.end[j] = t
        self.free += self.cpus[j]
        del self.running[j]
        if j in self.ours:
            self.ours_busy -= self.cpus[j]

    def _schedule(self, out: list[JobEvent]) -> None:
        q = self.queue
        cpus = self.cpus
        while q and cpus[q[0]] <= self.free:
            self._begin(q.pop(0), out)
        if len(q) < 2 or self.free <= 0:
            return
        # The head's reservation: the earliest requested end at which enough CPUs are free.
        need = cpus[q[0]]
        avail = self.free
        shadow, extra = math.inf, 0
        for e, j in sorted((e, j) for j, e in self.running.items()):
            avail += cpus[j]
            if avail >= need:
                shadow, extra = e, avail - need
                break
        now, req = self.now, self.req
        i = 1
        while i < len(q) and self.free > 0:
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
            i += 1

    def expected_wait(self, cpus: int, time_limit_s: float) -> float:
        """The scheduler's own estimate for a job submitted now (what ``sbatch --test-only`` says):
        0 when it would start at once (free CPUs, and it fits before the head's reservation or
        beside it), else when enough CPUs free up by the running jobs' requested ends, no earlier
        than the head's reservation (a lower bound: queued jobs behind the head are ignored)."""
        ends = sorted((e, j) for j, e in self.running.items())
        q = self.queue
        head_need = self.cpus[q[0]] if q else 0
        shadow, extra = math.inf, self.free - head_need
        if q:
            avail = self.free
            for e, j in ends:
                avail += self.cpus[j]
                if avail >= head_need:
                    shadow, extra = e, avail - head_need
                    break
        if cpus <= self.free and (not q or self.now + time_limit_s <= shadow or cpus <= extra):
            return 0.0
        # Otherwise: the first time from the head's reservation on when enough CPUs are free, with
        # the head itself running from its reservation for its requested time.
        changes = [(e, self.cpus[j]) for e, j in ends]
        if q:
            changes += [(shadow, -head_need), (shadow + self.req[q[0]], head_need)]
        avail = self.free
        changes.sort()
        for i, (t, d) in enumerate(changes):
            avail += d
            last_at_t = i + 1 == len(changes) or changes[i + 1][0] > t
            if last_at_t and avail >= cpus and t >= (shadow if q else -math.inf):
                return t - self.now
        return math.inf

    # -- what it recorded ----------------------------------------------------------------------

    def idle_series(self, upto: float | None = None) -> np.ndarray:
        """Mean idle CPUs per complete slot before ``upto`` (default: now)."""
        k = int(((self.now if upto is None else upto) - self.t0) // self.step_s)
        return np.asarray(self.idle_area[:k], dtype=np.float64) / self.step_s

    def others_idle_series(self, upto: float | None = None) -> np.ndarray:
        """Idle CPUs plus those our own jobs held: what the rest of the cluster left free."""
        k = int(((self.now if upto is None else upto) - self.t0) // self.step_s)
        a = np.asarray(self.idle_area[:k], dtype=np.float64) + np.asarray(self.ours_area[:k])
        return a / self.step_s

    def pending_trace_before(self, t: float) -> bool:
        """Some trace job submitted before ``t`` has not started yet."""
        if self._next_sub < self.n_trace and self.submit[self._next_sub] < t:
            return True
        return any(j < self.n_trace and self.submit[j] < t for j in self.queue)
