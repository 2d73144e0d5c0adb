"""What the simulated cluster records as its clock moves: idle CPUs, and the CPUs our jobs (and our
preemptible jobs) held, integrated per grid slot of ``step_s`` (``Cluster`` mixes this in)."""

from __future__ import annotations

import numpy as np


class Recorder:
    """CPU-seconds per grid slot from ``t0``: idle (claimed CPUs are idle too), ours, ours
    preemptible. The series are means per complete slot, in CPUs."""

    now: float
    t0: float
    step_s: float
    free: int
    claimed: int
    ours_busy: int
    ours_pre_busy: int
    idle_area: list[float]
    ours_area: list[float]
    ours_pre_area: list[float]

    def _clock(self, t: float) -> None:
        """Integrate idle CPUs and our busy CPUs up to ``t``; the clock moves to ``t``."""
        now = self.now
        if t <= now:
            return
        step, t0 = self.step_s, self.t0
        idle, ours, pre = self.idle_area, self.ours_area, self.ours_pre_area
        free = self.free + self.claimed
        while now < t:
            k = int((now - t0) // step)
            while len(idle) <= k:
                idle.append(0.0)
                ours.append(0.0)
                pre.append(0.0)
            seg_end = min(t, t0 + (k + 1) * step)
            dt = seg_end - now
            idle[k] += free * dt
            ours[k] += self.ours_busy * dt
            pre[k] += self.ours_pre_busy * dt
            now = seg_end
        self.now = t

    def _slots(self, upto: float | None) -> int:
        return int(((self.now if upto is None else upto) - self.t0) // self.step_s)

    def idle_series(self, upto: float | None = None) -> np.ndarray:
        """Mean idle CPUs per complete slot before ``upto`` (default: now)."""
        return np.asarray(self.idle_area[: self._slots(upto)], dtype=np.float64) / self.step_s

    def others_idle_series(self, upto: float | None = None) -> np.ndarray:
        """Idle CPUs plus those our own jobs held: what the rest of the cluster left free."""
        k = self._slots(upto)
        a = np.asarray(self.idle_area[:k], dtype=np.float64) + np.asarray(self.ours_area[:k])
        return a / self.step_s

    def ours_pre_series(self, upto: float | None = None) -> np.ndarray:
        """Mean CPUs our preemptible jobs held per complete slot before ``upto``."""
        return np.asarray(self.ours_pre_area[: self._slots(upto)], dtype=np.float64) / self.step_s
