"""The forecasters by name: the built-in ones (numpy only) and the optional extras where installed.

Built in: the baselines every model must beat (seasonal-naive over a day and over a week, the
historic mean, the last value) and a blend of averaged daily and weekly profiles with the current
level. Each gives an 80 % interval
from the empirical quantiles of its own errors at recent past origins, so a backtest can check
coverage and the policy can act on a bound instead of a point.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from balancer.capacity import forecasters_extra as extras
from balancer.capacity.series import DAY_S, WEEK_S, Forecaster, Prediction, Series

LEVEL = 0.8  # the interval's nominal coverage
RESIDUAL_ORIGINS = 14  # past origins, one a day, whose errors size the interval


class _Profiled:
    """A forecaster whose point forecast is a pure function of the recent values.

    Subclasses give ``_point`` and ``need_s`` (history it cannot do without). The interval comes
    from replaying ``_point`` at daily origins inside the history: its errors there, by quantile,
    are the band around today's forecast. No distribution is assumed, so the skew of a
    bounded series (idle CPUs near 0 or near the total) comes through as it is."""

    name: str = ""
    need_s: float = DAY_S

    def __init__(self) -> None:
        self._h: Series | None = None
        self._bands: dict[int, tuple[float, float] | None] = {}

    def _point(self, v: np.ndarray, horizon: int, step_s: float) -> np.ndarray:
        raise NotImplementedError

    def fit(self, history: Series) -> None:
        need = history.slots_per(self.need_s)
        if len(history.values) < need:
            raise ValueError(
                f"{self.name} needs {self.need_s / 3600:g} h of history, got "
                f"{len(history.values) * history.step_s / 3600:g} h"
            )
        if not np.isfinite(history.values[-need:]).any():
            raise ValueError(f"{self.name}: the last {self.need_s / 3600:g} h of history are all missing")
        self._h = history
        self._bands = {}

    def predict(self, horizon: int) -> Prediction:
        h = self._h
        if h is None:
            raise RuntimeError(f"{self.name}: fit() first")
        mean = np.clip(self._point(h.values, horizon, h.step_s), 0.0, h.total)
        if horizon not in self._bands:
            self._bands[horizon] = self._band(h, horizon)
        band = self._bands[horizon]
        lo = hi = None
        if band is not None:
            lo = np.clip(mean + band[0], 0.0, h.total)
            hi = np.clip(mean + band[1], 0.0, h.total)
        return Prediction(h.end, h.step_s, mean, lo, hi, model=self.name)

    def _band(self, h: Series, horizon: int) -> tuple[float, float] | None:
        """Quantiles of (actual - forecast) at up to ``RESIDUAL_ORIGINS`` daily origins in ``h``."""
        v, n = h.values, len(h.values)
        need, day = h.slots_per(self.need_s), h.slots_per(DAY_S)
        errors = []
        for i in range(RESIDUAL_ORIGINS):
            o = n - horizon - i * day
            if o < need:
                break
            actual = v[o : o + horizon]
            fc = np.clip(self._point(v[:o], horizon, h.step_s), 0.0, h.total)
            ok = np.isfinite(actual)
            errors.append(actual[ok] - fc[ok])
        e = np.concatenate(errors) if errors else np.empty(0)
        if len(e) < 2 * day:
            return None  # too few errors to say anything about the tails
        q = (1 - LEVEL) / 2
        return float(np.quantile(e, q)), float(np.quantile(e, 1 - q))


class SeasonalNaive(_Profiled):
    """Tomorrow (or next week) repeats today: the baseline every other model must beat."""

    def __init__(self, period_s: float = DAY_S, name: str = "seasonal-naive-day") -> None:
        super().__init__()
        self.period_s = period_s
        self.need_s = period_s
        self.name = name

    def _point(self, v: np.ndarray, horizon: int, step_s: float) -> np.ndarray:
        p = max(1, round(self.period_s / step_s))
        last = _fill(v[-p:], v[-2 * p : -p] if len(v) >= 2 * p else None)
        return np.resize(last, horizon)


class Blend(_Profiled):
    """Half the mean of the last 7 days at this time of day, half the mean of the last 4 weeks at
    this time of week, plus the current deviation from that (mean of the last hour) decaying with
    a 6 h half-life.

    Why this mix: averaging several periods removes most of one day's noise that seasonal-naive
    copies forward, the weekly half keeps weekends apart, and idle capacity is persistent (a big
    job holds its CPUs for hours), so the present level matters for the first hours. On the KTH
    SP2 and LANL CM-5 traces (15-min grid, 48 h horizon, 40 weekly origins) it beat seasonal-naive,
    the daily or weekly profile alone and the level-free mix (bench/forecast_backtest.py)."""

    name = "blend"
    need_s = WEEK_S
    days, weeks = 7, 4
    half_life_s = 6 * 3600.0
    level_s = 3600.0

    def _profiles(self, v: np.ndarray, horizon: int, step_s: float) -> np.ndarray:
        day, week = max(1, round(DAY_S / step_s)), max(1, round(WEEK_S / step_s))
        return 0.5 * _profile(v, day, self.days, horizon) + 0.5 * _profile(v, week, self.weeks, horizon)

    def _point(self, v: np.ndarray, horizon: int, step_s: float) -> np.ndarray:
        base = self._profiles(v, horizon, step_s)
        k = max(1, round(self.level_s / step_s))
        recent = v[-k:]
        if len(v) > k and np.isfinite(recent).any():
            anomaly = float(np.nanmean(recent - self._profiles(v[:-k], k, step_s)))
            if np.isfinite(anomaly):
                phi = 0.5 ** (step_s / self.half_life_s)
                base = base + anomaly * phi ** np.arange(1, horizon + 1)
        return base


class HistoricMean(_Profiled):
    """Every future slot is the mean of the whole history: the baseline a model that only
    chases noise loses to (a flat series, or a pattern too weak to repeat)."""

    name = "historic-mean"
    need_s = 3600.0  # an hour with an observation in it will do

    def _point(self, v: np.ndarray, horizon: int, step_s: float) -> np.ndarray:
        ok = np.isfinite(v)
        return np.full(horizon, float(v[ok].mean()) if ok.any() else 0.0)


class LastValue(_Profiled):
    """Persistence: every future slot is the last observed value. Capacity moves like a random
    walk where big jobs hold their CPUs for hours; there it beats every seasonal profile."""

    name = "last-value"
    need_s = 3600.0

    def _point(self, v: np.ndarray, horizon: int, step_s: float) -> np.ndarray:
        ok = np.flatnonzero(np.isfinite(v))
        return np.full(horizon, float(v[ok[-1]]) if len(ok) else 0.0)


def _profile(v: np.ndarray, period: int, count: int, horizon: int) -> np.ndarray:
    """Mean over the last ``count`` periods (as many as ``v`` holds) of the value at the same
    phase as each future slot; missing slots are skipped, and a phase missing in all of them
    takes the mean of the last period."""
    n = len(v)
    j = np.arange(horizon)
    latest = n + j - period * ((j + period) // period)  # the most recent slot of the same phase
    rows = [v[latest - period * m] for m in range(count) if latest.min() - period * m >= 0]
    stack = np.stack(rows)
    with np.errstate(all="ignore"):
        ok = np.isfinite(stack)
        cnt = ok.sum(axis=0)
        out = np.where(ok, stack, 0.0).sum(axis=0) / np.maximum(cnt, 1)
    if (cnt == 0).any():
        last = v[-period:]
        fallback = float(np.nanmean(last)) if np.isfinite(last).any() else 0.0
        out = np.where(cnt == 0, fallback, out)
    return out


def _fill(v: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
    """Missing slots (NaN) take the slot one period earlier, else the mean of the rest (0 when
    all are missing)."""
    if np.isnan(v).any():
        if before is not None and len(before) == len(v):
            v = np.where(np.isnan(v), before, v)
        if np.isnan(v).any():
            m = float(np.nanmean(v)) if np.isfinite(v).any() else 0.0
            v = np.where(np.isnan(v), m, v)
    return v


FORECASTERS: dict[str, Callable[[], Forecaster]] = {
    "seasonal-naive-day": lambda: SeasonalNaive(DAY_S, "seasonal-naive-day"),
    "seasonal-naive-week": lambda: SeasonalNaive(WEEK_S, "seasonal-naive-week"),
    "historic-mean": HistoricMean,
    "last-value": LastValue,
    "blend": Blend,
}
BUILTIN = tuple(FORECASTERS)
BASELINE = "seasonal-naive-day"  # the one shown beside a model's error where a single one is shown
# The naive forecasts: the automatic choice never takes a model that loses to any of them.
BASELINES = ("seasonal-naive-day", "seasonal-naive-week", "historic-mean", "last-value")
FORECASTERS.update(extras.available())


def make(name: str) -> Forecaster:
    """A new forecaster by name; ``KeyError`` names the known ones, or the extra that brings it."""
    try:
        return FORECASTERS[name]()
    except KeyError:
        hint = extras.MISSING.get(name)
        if hint:
            raise KeyError(f"forecaster {name!r} is not installed: {hint}") from None
        raise KeyError(f"unknown forecaster {name!r} (known: {', '.join(FORECASTERS)})") from None
