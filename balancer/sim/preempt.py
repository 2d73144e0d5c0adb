"""The simulated cluster's preemptible partition: how a normal job takes the CPUs of preemptible
ones (``Cluster`` mixes this in; the state lives in ``Cluster``).

A normal job that fits only with preemptible jobs' CPUs preempts the newest ones, as few as cover
what the free CPUs lack. They get a notice at once and end ``preempt_grace_s`` later; meanwhile the
normal job holds the free CPUs it took (a *claim*: idle, counted as idle) and starts when the last
preempted CPUs are back, which then go to it and nobody else. With no grace time the preempted jobs
end at once and the normal job starts in the same scheduling pass, exactly as it would have on a
cluster without preemptible jobs: harvesting with no grace never moves a normal job.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from balancer.sim.jobs import JobEvent


@dataclass
class Claim:
    """A normal job waiting for the preemptible jobs it preempted: CPUs it holds already (idle
    meanwhile), the preempted jobs still in their grace time, and when the last grace ends."""

    got: int
    jobs: list[int]
    at: float


class Preemption:
    """Claims on preemptible jobs' CPUs; mixed into ``Cluster``, whose state it works on."""

    now: float
    free: int
    claimed: int
    cpus: list[int]
    ours: set[int]
    pre_running: dict[int, float]
    pre_cpus: int
    preempting: dict[int, tuple[float, int]]
    claims: dict[int, Claim]
    n_preempted: int
    preempt_grace_s: float
    _ends: list[tuple[float, int]]

    def _begin(self, j: int, out: list[JobEvent]) -> None:
        raise NotImplementedError

    def _finish(self, j: int, t: float, out: list[JobEvent]) -> None:
        raise NotImplementedError

    def _claim(self, x: int, out: list[JobEvent]) -> None:
        """Normal job ``x`` needs more than the free CPUs: it preempts the newest preemptible jobs,
        as few as cover the rest, and starts at once (no grace) or when their CPUs are back."""
        now, grace = self.now, self.preempt_grace_s
        short = self.cpus[x] - self.free
        victims: list[int] = []
        while short > 0:
            k, _ = self.pre_running.popitem()  # the newest
            c = self.cpus[k]
            self.pre_cpus -= c
            short -= c
            victims.append(k)
            self.n_preempted += 1
            if k in self.ours:
                out.append(JobEvent(k, now, False, preempted=True, notice=True))
        if grace <= 0:
            for k in victims:
                self.preempting[k] = (now, -1)  # ends now; its CPUs go back to the free ones
                self._finish(k, now, out)
                if k in self.ours:
                    out.append(JobEvent(k, now, False, preempted=True))
            self._begin(x, out)
            return
        at = now + grace
        for k in victims:
            self.preempting[k] = (at, x)
            heapq.heappush(self._ends, (at, k))
        self.claims[x] = Claim(self.free, victims, at)
        self.claimed += self.free
        self.free = 0

    def _given_back(self, k: int, owner: int, c: int, out: list[JobEvent]) -> bool:
        """Preempted job ``k``'s ``c`` CPUs are back: they go to the claim of ``owner`` (-1: none),
        which starts once it has them all. False when no claim takes them (they are free)."""
        claim = self.claims.get(owner) if owner >= 0 else None
        if claim is None:
            return False
        claim.got += c
        self.claimed += c
        claim.jobs.remove(k)
        if claim.got >= self.cpus[owner]:
            self._release(owner)
            self._begin(owner, out)
        return True

    def _release(self, x: int) -> None:
        """End ``x``'s claim: its CPUs become free; preempted jobs still ending free theirs later."""
        claim = self.claims.pop(x)
        self.claimed -= claim.got
        self.free += claim.got
        for k in claim.jobs:
            self.preempting[k] = (self.preempting[k][0], -1)
