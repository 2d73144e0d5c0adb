"""The forecasters by name: the built-in ones (numpy only) and the optional extras where installed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .series import DAY_S, Prediction, Series


class SeasonalNaive:
    """Tomorrow (or next week) repeats today: the baseline every other model must beat."""

    def __init__(self, period_s: float = DAY_S, name: str = "seasonal-naive-day") -> None:
        self.period_s = period_s
        self.name = name
        self._h: Series | None = None

    def fit(self, history: Series) -> None:
        if len(history.values) < history.slots_per(self.period_s):
            raise ValueError(f"{self.name} needs {self.period_s / 3600:g} h of history")
        self._h = history

    def predict(self, horizon: int) -> Prediction:
        h = self._h
        assert h is not None, "fit() first"
        p = h.slots_per(self.period_s)
        last = _fill(h.values[-p:])
        mean = np.resize(last, horizon)
        return Prediction(h.end, h.step_s, mean, model=self.name)


def _fill(v: np.ndarray) -> np.ndarray:
    """Missing slots (NaN) take the mean of the rest (0 when all are missing)."""
    if np.isnan(v).any():
        m = np.nanmean(v) if np.isfinite(v).any() else 0.0
        v = np.where(np.isnan(v), m, v)
    return v


FORECASTERS: dict[str, Callable[[], object]] = {
    "seasonal-naive-day": lambda: SeasonalNaive(DAY_S, "seasonal-naive-day"),
}
BASELINE = "seasonal-naive-day"


def make(name: str) -> object:
    """A new forecaster by name; ``KeyError`` names the known ones."""
    try:
        return FORECASTERS[name]()
    except KeyError:
        raise KeyError(f"unknown forecaster {name!r} (known: {', '.join(FORECASTERS)})") from None
