"""What each simulated policy is told about the cluster's capacity for our jobs, as a ``ForecastView``.

The quantity is the one the live collector reports (issue 20): the CPUs a job of ours could use,
i.e. the idle CPUs *plus* those our own running jobs hold (``Cluster.others_idle_series``), so our
own load never reads as the cluster filling up; ``held_cpus`` says what our running jobs hold now,
and what a new job can start on is ``idle[i] - held_cpus``. Index 0 is what a collector observes
now. ``Learned`` is the live path: a forecaster from ``balancer.capacity.forecasters`` trained on
the history the simulated collector has seen, retrained once a virtual day. ``observed_view`` is the
current observation alone (one slot): what the harvest rules need while the forecaster is cold.
"""

from __future__ import annotations

import numpy as np

from balancer.capacity.forecasters import make
from balancer.capacity.series import DAY_S, Series
from balancer.policy.types import ForecastView
from balancer.sim.cluster import Cluster

HISTORY_SLOTS_DAYS = 56  # the forecaster sees the last 8 weeks: weekly seasons and then some


def capacity_now(c: Cluster) -> float:
    """CPUs a job of ours could use now: idle plus what our own running jobs hold."""
    return float(c.free + c.ours_busy)


def observed_view(c: Cluster, step_s: float) -> ForecastView:
    """The current observation only (one slot): no prediction, no bounds beyond it."""
    now = (capacity_now(c),)
    return ForecastView(step_s, now, now, now, source="observed", held_cpus=float(c.ours_busy))


class Learned:
    """A named forecaster, fit on the collector's history and retrained every ``retrain_s``."""

    source = "forecast"

    def __init__(
        self, name: str, step_s: float, horizon: int, epoch: float, total: float, retrain_s: float = DAY_S
    ) -> None:
        self.name = name
        self.step_s = step_s
        self.horizon = horizon
        self.epoch = epoch  # the trace's Unix start: seasons align with real days and weeks
        self.total = total
        self.retrain_s = retrain_s
        self._next_train = -np.inf
        self._k0 = 0  # slot of the prediction's first value
        self._mean: np.ndarray | None = None
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None
        self.made: list[tuple[float, np.ndarray]] = []  # (start, the next retrain_s predicted): plots
        self._key: tuple[int, int, int, int] | None = None
        self._view: ForecastView | None = None

    def _train(self, c: Cluster, now: float) -> None:
        self._next_train = now + self.retrain_s
        hist = c.others_idle_series(now)
        k = len(hist)
        keep = int(HISTORY_SLOTS_DAYS * DAY_S // self.step_s)
        first = max(0, k - keep)
        series = Series(self.epoch + c.t0 + first * self.step_s, self.step_s, hist[first:], self.total)
        model = make(self.name)
        try:
            model.fit(series)
            p = model.predict(self.horizon + int(self.retrain_s // self.step_s) + 1)
        except ValueError:
            self._mean = None  # too little history: no forecast (as live)
            return
        self._k0 = k
        self._mean = np.clip(np.asarray(p.mean, dtype=np.float64), 0.0, self.total)
        self._lo = None if p.lo is None else np.asarray(p.lo, dtype=np.float64)
        self._hi = None if p.hi is None else np.asarray(p.hi, dtype=np.float64)
        day = int(self.retrain_s // self.step_s)
        self.made.append((c.t0 + k * self.step_s, self._mean[:day].copy()))

    def view(self, c: Cluster, now: float) -> ForecastView | None:
        """The forecast from now on, index 0 the capacity observed now; None while cold."""
        if now >= self._next_train:
            self._train(c, now)
        if self._mean is None:
            return None
        off = int((now - c.t0) // self.step_s) - self._k0
        key = (off, self._k0, c.free, c.ours_busy)
        if key == self._key:
            return self._view  # unchanged since the last tick: ticks are many, changes few
        self._key = key
        cap = capacity_now(c)

        def part(a: np.ndarray | None) -> tuple[float, ...]:
            if a is None:
                return ()
            fut = np.maximum(0.0, a[off + 1 : off + self.horizon])
            return (cap, *fut.tolist())

        self._view = ForecastView(
            self.step_s,
            part(self._mean),
            part(self._lo),
            part(self._hi),
            source=self.name,
            held_cpus=float(c.ours_busy),
        )
        return self._view
