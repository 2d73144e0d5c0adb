"""Multifactor priority with fair-share, as Slurm's ``priority/multifactor`` computes it.

priority = age factor + fair-share factor, with age factor ``min(1, age / 7 days)`` and fair-share
factor ``2^(-U/S)``: U is the user's CPU-seconds decayed with a 7-day half-life, divided by all users'
decayed CPU-seconds, and S = 1 / (users with a job pending or running). A user who ran much lately
thus waits behind one who did not, even one who submitted later; a week's wait outweighs most usage.

Usage is kept in a growing scale (``2^(t/half-life)``) rather than decayed at every event: each
user's total is charged only when its running CPUs change, and ratios cancel the scale, so a
scheduling pass costs O(1) per queued job.

Preemptible ("scavenger") jobs are charged to their own user only: not to the total that every
user's share is divided by, and not to the users counted in S. Their usage thus lowers their user's
priority (for its normal jobs) but leaves every other user's priority exactly as without them, as
harvesting idle CPUs with no grace time must leave the other users' schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

HALF_LIFE_S = 7 * 86400.0
AGE_MAX_S = 7 * 86400.0
_RESCALE = 2.0**200  # keep the scale far from float overflow on traces of many years


class FairShare:
    """Decayed usage per user and the jobs each has pending or running."""

    def __init__(self, t0: float) -> None:
        self._t0 = float(t0)
        self._k = HALF_LIFE_S / math.log(2.0)  # integral of the scale per unit of its growth
        self.acc: dict[int, float] = {}  # user -> scaled usage as of its last charge
        self.w_last: dict[int, float] = {}  # user -> scale at its last charge
        self.running: dict[int, int] = {}  # user -> CPUs running now
        self.tot_acc = 0.0
        self.tot_w = 1.0
        self.tot_running = 0
        self.active: dict[int, int] = {}  # user -> jobs pending or running

    def copy(self) -> FairShare:
        c = object.__new__(FairShare)
        c.__dict__.update(self.__dict__)
        for name in ("acc", "w_last", "running", "active"):
            setattr(c, name, dict(getattr(self, name)))
        return c

    def _w(self, t: float) -> float:
        w = 2.0 ** ((t - self._t0) / HALF_LIFE_S)
        if w > _RESCALE:  # move the origin to t: every scaled figure shrinks by the same factor
            for d in (self.acc, self.w_last):
                for u in d:
                    d[u] /= w
            self.tot_acc /= w
            self.tot_w /= w
            self._t0 = t
            w = 1.0
        return w

    def _charge(self, user: int, w: float, total: bool = True) -> None:
        r = self.running.get(user, 0)
        if r:
            self.acc[user] = self.acc.get(user, 0.0) + r * self._k * (w - self.w_last[user])
        self.w_last[user] = w
        if not total:
            return
        if self.tot_running:
            self.tot_acc += self.tot_running * self._k * (w - self.tot_w)
        self.tot_w = w

    def started(self, user: int, cpus: int, t: float, scavenger: bool = False) -> None:
        """``scavenger``: a preemptible job, charged to its user alone (see the module's note)."""
        self._charge(user, self._w(t), total=not scavenger)
        self.running[user] = self.running.get(user, 0) + cpus
        if not scavenger:
            self.tot_running += cpus

    def stopped(self, user: int, cpus: int, t: float, scavenger: bool = False) -> None:
        self._charge(user, self._w(t), total=not scavenger)
        self.running[user] -= cpus
        if not scavenger:
            self.tot_running -= cpus

    def arrived(self, user: int, scavenger: bool = False) -> None:
        if not scavenger:
            self.active[user] = self.active.get(user, 0) + 1

    def left(self, user: int, scavenger: bool = False) -> None:
        if scavenger:
            return
        n = self.active[user] - 1
        if n:
            self.active[user] = n
        else:
            del self.active[user]

    def usage(self, user: int, t: float) -> float:
        """The user's share of all decayed usage at ``t`` (0 when nobody used anything yet)."""
        w = self._w(t)
        tot = self.tot_acc + self.tot_running * self._k * (w - self.tot_w)
        if tot <= 0.0:
            return 0.0
        mine = self.acc.get(user, 0.0)
        r = self.running.get(user, 0)
        if r:
            mine += r * self._k * (w - self.w_last[user])
        return mine / tot

    def order_key(
        self, t: float, submit: Sequence[float], users: Sequence[int]
    ) -> Callable[[int], tuple[float, float, int]]:
        """Sort key for the queue at ``t``: highest priority first, then submit order."""
        n = max(1, len(self.active))
        factor: dict[int, float] = {}

        def key(j: int) -> tuple[float, float, int]:
            u = users[j]
            f = factor.get(u)
            if f is None:
                f = factor[u] = 2.0 ** (-self.usage(u, t) * n)
            age = min(1.0, (t - submit[j]) / AGE_MAX_S)
            return (-(age + f), submit[j], j)

        return key

    def priority(self, j: int, t: float, submit: Sequence[float], users: Sequence[int]) -> float:
        """Job ``j``'s priority at ``t`` (for tests and reports)."""
        return -self.order_key(t, submit, users)(j)[0]
