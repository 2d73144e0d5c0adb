"""A capacity time series on a regular grid and a forecaster's prediction of its continuation.

Every forecaster takes a ``Series`` and returns a ``Prediction``; the backtest, the live service
and the simulator speak only these two types, so a forecaster is one small class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # numpy only in annotations here: importing the types costs a balancer's start nothing
    import numpy as np

DAY_S = 86400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class Series:
    """Idle CPUs on a regular grid: ``values[i]`` covers ``[start + i*step_s, start + (i+1)*step_s)``.

    NaN marks a slot with no observation. ``total`` is the capacity, used to clip forecasts."""

    start: float  # epoch seconds of the first slot
    step_s: float
    values: np.ndarray
    total: float

    @property
    def end(self) -> float:
        """Epoch seconds just after the last slot: where a forecast begins."""
        return self.start + len(self.values) * self.step_s

    def head(self, n: int) -> Series:
        """The first ``n`` slots (a backtest's training part)."""
        return Series(self.start, self.step_s, self.values[:n], self.total)

    def slots_per(self, period_s: float) -> int:
        return max(1, round(period_s / self.step_s))


@dataclass(frozen=True)
class Prediction:
    """Predicted idle CPUs from ``start`` on, one value per grid step; ``lo``/``hi`` bound an
    interval (80 % unless the forecaster says otherwise) where the model gives one."""

    start: float
    step_s: float
    mean: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    model: str = ""


class Forecaster(Protocol):
    """Fit on a history, predict the next ``horizon`` slots after its end.

    ``fit`` may be slow (it runs in a worker thread or process, never on the event loop);
    ``predict`` is cheap. A forecaster that needs more history than it got raises ``ValueError``."""

    name: str

    def fit(self, history: Series) -> None: ...

    def predict(self, horizon: int) -> Prediction: ...
