"""Optional forecasters behind the same fit/predict interface: statsforecast's MSTL and AutoETS,
and NeuralProphet (the model TaskShift used).

None of these libraries is imported until a model is fitted: ``available()`` only asks whether
the package can be found, so ``balancer`` starts as fast without them as with them, and a model
whose library is absent is simply not registered (``MISSING`` says which extra brings it).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from balancer.capacity.series import DAY_S, WEEK_S, Forecaster, Prediction, Series

LEVEL = 80  # interval, percent
SEED = 0

STATS_HINT = "pip install 'umbridge-balancer[forecast-stats]'"
NP_HINT = "`make neuralprophet` builds .venv-np, its own environment (numpy<2)"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _filled(history: Series) -> np.ndarray:
    """Values without NaN (these libraries reject gaps): a missing slot takes the slot a day
    earlier, then linear interpolation between its neighbours, then the mean."""
    v = np.array(history.values, dtype=np.float64)
    day = history.slots_per(DAY_S)
    for i in np.flatnonzero(np.isnan(v)):
        if i >= day and np.isfinite(v[i - day]):
            v[i] = v[i - day]
    bad = np.isnan(v)
    if bad.any():
        if (~bad).sum() == 0:
            raise ValueError("the history holds no observation")
        idx = np.arange(len(v))
        v[bad] = np.interp(idx[bad], idx[~bad], v[~bad])
    return v


def _clipped(history: Series, mean: np.ndarray, lo: Any, hi: Any, name: str) -> Prediction:
    total = history.total

    def clip(a: Any) -> np.ndarray:
        return np.clip(np.asarray(a, dtype=np.float64), 0.0, total)

    lo_c = None if lo is None else clip(lo)
    hi_c = None if hi is None else clip(hi)
    return Prediction(history.end, history.step_s, clip(mean), lo_c, hi_c, model=name)


class StatsForecastModel:
    """A statsforecast model fitted on the last ``window_s`` of history (its fit time grows with
    the window; older weeks add little to a daily/weekly pattern), with its own 80 % interval."""

    def __init__(
        self, name: str, build: Callable[[int, int], Any], need_s: float, window_s: float = 28 * DAY_S
    ) -> None:
        self.name = name
        self._build = build  # (slots per day, slots per week) -> an unfitted statsforecast model
        self.need_s = need_s
        self.window_s = window_s
        self._h: Series | None = None
        self._model: Any = None

    def fit(self, history: Series) -> None:
        n = history.slots_per(self.window_s)
        h = Series(
            history.end - min(n, len(history.values)) * history.step_s,
            history.step_s,
            history.values[-n:],
            history.total,
        )
        if len(h.values) < h.slots_per(self.need_s):
            raise ValueError(f"{self.name} needs {self.need_s / 3600:g} h of history")
        model = self._build(h.slots_per(DAY_S), h.slots_per(WEEK_S))
        model.fit(_filled(h))
        self._h, self._model = h, model

    def predict(self, horizon: int) -> Prediction:
        if self._model is None or self._h is None:
            raise RuntimeError(f"{self.name}: fit() first")
        out = self._model.predict(horizon, level=[LEVEL])
        return _clipped(self._h, out["mean"], out.get(f"lo-{LEVEL}"), out.get(f"hi-{LEVEL}"), self.name)


def _mstl(day: int, week: int) -> Any:
    from statsforecast.models import MSTL, AutoETS

    # Daily and weekly seasons removed by STL, the rest (trend) by an ETS without seasonality.
    return MSTL(season_length=[day, week], trend_forecaster=AutoETS(model="ZZN"))


def _autoets(day: int, week: int) -> Any:
    from statsforecast.models import AutoETS

    return AutoETS(season_length=day)


class NeuralProphetModel:
    """NeuralProphet with daily and weekly seasonality and 10 %/90 % quantiles, on the last
    ``window_s`` of history; no trend (idle capacity has none, and a slope fitted to four weeks
    extrapolates noise), seeded, a fixed learning rate (its learning-rate finder fails to unpickle
    with torch >= 2.6) and epochs, CPU only, lightning's logs in a temporary directory."""

    name = "neuralprophet"

    def __init__(self, window_s: float = 28 * DAY_S, epochs: int = 20) -> None:
        self.window_s = window_s
        self.epochs = epochs
        self._h: Series | None = None
        self._model: Any = None
        self._df: Any = None

    def fit(self, history: Series) -> None:
        import logging

        import pandas as pd
        from neuralprophet import NeuralProphet, set_log_level, set_random_seed

        set_log_level("ERROR")
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        logging.getLogger("lightning").setLevel(logging.ERROR)
        n = history.slots_per(self.window_s)
        v = history.values[-n:]
        start = history.end - len(v) * history.step_s
        if len(v) < history.slots_per(WEEK_S):
            raise ValueError(f"{self.name} needs {WEEK_S / 3600:g} h of history")
        self._h = Series(start, history.step_s, v, history.total)
        ds = pd.to_datetime(start + history.step_s * np.arange(len(v)), unit="s")
        self._df = pd.DataFrame({"ds": ds, "y": v})
        freq = f"{int(history.step_s)}s"
        set_random_seed(SEED)
        with tempfile.TemporaryDirectory(prefix="neuralprophet-") as logs:
            m = NeuralProphet(
                growth="off",
                collect_metrics=False,
                yearly_seasonality=False,
                weekly_seasonality=True,
                daily_seasonality=True,
                learning_rate=0.05,
                epochs=self.epochs,
                batch_size=128,
                quantiles=[0.1, 0.9],
                trainer_config={"accelerator": "cpu", "logger": False, "default_root_dir": logs},
            )
            m.fit(self._df, freq=freq, progress=None)
        self._model = m

    def predict(self, horizon: int) -> Prediction:
        if self._model is None or self._h is None:
            raise RuntimeError(f"{self.name}: fit() first")
        future = self._model.make_future_dataframe(self._df, periods=horizon)
        fc = self._model.predict(future)
        tail = fc.iloc[-horizon:]
        return _clipped(
            self._h,
            tail["yhat1"].to_numpy(float),
            tail["yhat1 10.0%"].to_numpy(float),
            tail["yhat1 90.0%"].to_numpy(float),
            self.name,
        )


_STATS: dict[str, Callable[[], Forecaster]] = {
    "mstl": lambda: StatsForecastModel("mstl", _mstl, need_s=2 * WEEK_S),
    "autoets": lambda: StatsForecastModel("autoets", _autoets, need_s=2 * DAY_S),
}
_NP: dict[str, Callable[[], Forecaster]] = {"neuralprophet": NeuralProphetModel}


def available() -> dict[str, Callable[[], Forecaster]]:
    """The optional forecasters whose library can be found in this environment."""
    out: dict[str, Callable[[], Forecaster]] = {}
    if _installed("statsforecast"):
        out.update(_STATS)
    if _installed("neuralprophet"):
        out.update(_NP)
    return out


MISSING: dict[str, str] = {name: STATS_HINT for name in _STATS} | {name: NP_HINT for name in _NP}
