"""The live forecast: trained on the site's capacity history, switched and overridden by its owner.

The service holds what the scaler asks for on each pass (``view()``, a cheap slice of the last
prediction) and does the slow part, choosing and fitting a forecaster, on a schedule in a worker
thread, so the event loop never waits on numpy. Without enough history, disabled, or after a
failed training, ``view()`` is None and the policy scales by demand alone; ``status()`` says why.

What it forecasts is capacity for our jobs, idle CPUs plus what our own pool holds (see
``CapacitySample.capacity_cpus``); ``held`` tells it what our running jobs hold now, and the view
carries both, so the policy starts new jobs on ``idle[i] - held_cpus`` and stops politely only when
capacity falls below what we hold (others want our CPUs), never because of our own load.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from balancer.capacity.sample import CapacitySample
from balancer.observe.events import Ev, EventBus
from balancer.policy.types import ForecastView

if TYPE_CHECKING:  # numpy's: imported where a forecast is trained, never by a run without one
    from balancer.capacity.series import Prediction, Series

MAX_OVERRIDE_S = 30 * 86400.0  # an override forgotten by its owner ends within a month
BACKTEST_ORIGINS = 14  # daily origins over the last two weeks of the site's history


@dataclass(frozen=True)
class Override:
    """The owner's word on idle CPUs (as they see them: CPUs nobody, us included, uses), in force
    until ``expires_at`` (epoch seconds). The view's capacity is that plus what our pool holds, so
    "0 idle" means "start nothing more", not "stop what runs"."""

    idle_cpus: float
    expires_at: float
    idle_gpus: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"idle_cpus": self.idle_cpus, "idle_gpus": self.idle_gpus, "expires_at": self.expires_at,
                "reason": self.reason}  # fmt: skip


@dataclass(frozen=True)
class Trained:
    """The outcome of one training: the chosen model's prediction and its backtest figures."""

    model: str
    prediction: Prediction
    trained_at: float
    history_s: float
    backtest: list[dict[str, Any]]
    mae: float | None = None
    baseline_mae: float | None = None  # the best baseline's, the bar the model had to clear
    baseline: str | None = None  # which baseline that was


class ForecastService:
    def __init__(
        self,
        settings: Any,  # config.ForecastSettings
        bus: EventBus,
        history: Any = None,  # cluster.history.History; None: nothing to train on
        wall: Callable[[], float] = time.time,
        sources: tuple[str, ...] | None = None,
        held: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        self.settings = settings
        # partition -> CPUs our running jobs hold now ("" = default partition / whole machine)
        self.held = held or dict
        self.bus = bus
        self.history = history
        self.wall = wall
        self.enabled = bool(settings.enabled)
        self.override: Override | None = None
        self.trained: Trained | None = None
        self.state = "cold: not trained yet"
        self.latest: list[CapacitySample] = []
        self.latest_t = 0.0
        self._task: asyncio.Task[None] | None = None
        self._retrain = asyncio.Event()
        self._view: ForecastView | None = None
        self._view_key: Any = None
        # The history is shared by every run of its owner: train on this scheduler's samples and
        # on imported traces, never on a local demo's samples mixed into a cluster's.
        self.sources = sources

    # -- what the scaler sees -------------------------------------------------------------------
    def view(self) -> ForecastView | None:
        """The forecast from now on, or None (disabled, cold, stale): then the policy is demand-only.

        The scaler asks on every pass (up to every 10 ms under load); the view only changes with
        the grid slot, a new sample, a training or a switch, so it is built once per such change."""
        if not self.enabled:
            return None
        now = self.wall()
        tr = self.trained
        slot = int(now // self.settings.grid_s)
        self._live_override(now)  # an expired override ends (and is journaled) before the cache
        held = self.held_cpus()
        key = (slot, self.latest_t, tr and tr.trained_at, self.override, self.observed_capacity(now) is None,
               held)  # fmt: skip
        if self._view_key == key:
            return self._view
        self._view = self._build_view(now, held)
        self._view_key = key
        return self._view

    def _build_view(self, now: float, held: float) -> ForecastView | None:
        step = self.settings.grid_s
        n = max(1, int(self.settings.horizon_s // step))
        ov = self._live_override(now)
        wait = self._expected_wait()
        if ov is not None:
            v = (float(ov.idle_cpus) + held,) * n
            return ForecastView(step, v, v, v, wait, "override", held_cpus=held)
        tr = self.trained
        if tr is None:
            return None
        p = tr.prediction
        i = int((now - p.start) // p.step_s)
        if i >= len(p.mean):
            return None
        i = max(0, i)
        idle = [float(x) for x in p.mean[i : i + n]]
        lo = [float(x) for x in (p.lo if p.lo is not None else p.mean)[i : i + n]]
        hi = [float(x) for x in (p.hi if p.hi is not None else p.mean)[i : i + n]]
        observed = self.observed_capacity(now)
        if observed is not None:  # the current slot is what the collector sees, not a guess
            idle[0] = lo[0] = hi[0] = observed
            # Capacity is at most the machine: what we hold beyond it (local: more servers than
            # cores) is our own oversubscription, never others wanting our CPUs.
            held = min(held, observed)
        return ForecastView(p.step_s, tuple(idle), tuple(lo), tuple(hi), wait, "forecast", held_cpus=held)

    def _fresh(self, now: float | None) -> bool:
        now = self.wall() if now is None else now
        return bool(self.latest) and now - self.latest_t <= 2 * self.settings.collect_interval_s

    def observed_capacity(self, now: float | None = None) -> float | None:
        """Capacity (idle + ours) in the latest samples, if fresh (two collection intervals)."""
        return float(sum(s.capacity_cpus for s in self.latest)) if self._fresh(now) else None

    def observed_idle(self, now: float | None = None) -> float | None:
        """Plain idle CPUs in the latest samples, if fresh."""
        return float(sum(s.idle_cpus for s in self.latest)) if self._fresh(now) else None

    def held_cpus(self) -> float:
        """CPUs our running jobs hold now: in the watched partition where one is set (jobs submitted
        without a partition count there: they run in the default one, as a rule the one watched)."""
        held = self.held()
        part = self.settings.partition
        return float(held.get(part, 0.0) + held.get("", 0.0) if part else sum(held.values()))

    def predicted_capacity(self, at: float) -> float | None:
        """What the current model predicted for time ``at`` (for the journal's forecast error)."""
        tr = self.trained
        if tr is None:
            return None
        p = tr.prediction
        i = int((at - p.start) // p.step_s)
        return float(p.mean[i]) if 0 <= i < len(p.mean) else None

    def _expected_wait(self) -> float | None:
        waits = [s.expected_wait_s for s in self.latest if s.expected_wait_s is not None]
        return min(waits) if waits else None

    def _live_override(self, now: float) -> Override | None:
        ov = self.override
        if ov is not None and now >= ov.expires_at:
            self.override = None
            self.bus.emit(Ev.FORECAST_CHANGED, change="override expired", override=ov.as_dict())
            return None
        return ov

    def observe(self, samples: Sequence[CapacitySample], t: float) -> None:
        """The collector's latest samples (the nowcast); only the watched partition counts."""
        part = self.settings.partition
        self.latest = [s for s in samples if not part or s.partition == part]
        self.latest_t = t

    # -- the owner's switches -------------------------------------------------------------------
    def set_enabled(self, enabled: bool) -> None:
        if enabled != self.enabled:
            self.enabled = enabled
            self.bus.emit(Ev.FORECAST_CHANGED, change="enabled" if enabled else "disabled")

    def reconfigure(self, settings: Any, retrain: bool) -> None:
        """A reloaded ``[forecast]``: switched on or off (journaled), the new settings from the next
        view on, and a training now when ``retrain`` (a setting of the model or its grid changed)."""
        self.set_enabled(bool(settings.enabled))
        self.settings = settings
        if retrain:
            self.retrain()

    def set_override(self, ov: Override) -> None:
        self.override = ov
        self.bus.emit(Ev.FORECAST_CHANGED, change="override set", override=ov.as_dict())

    def clear_override(self) -> bool:
        ov, self.override = self.override, None
        if ov is not None:
            self.bus.emit(Ev.FORECAST_CHANGED, change="override cleared", override=ov.as_dict())
        return ov is not None

    def status(self) -> dict[str, Any]:
        now = self.wall()
        ov = self._live_override(now)
        tr = self.trained
        view = self.view()
        if not self.enabled:
            state = "disabled: scaling by demand only"
        elif ov is not None:
            state = "override"
        elif view is None:
            state = self.state if tr is None or self.state.startswith("error") else "stale: demand only"
        else:
            state = "ok"
        return {
            "enabled": self.enabled,
            "state": state,
            "in_use": view is not None,
            "model": tr.model if tr else None,
            "trained_at": tr.trained_at if tr else None,
            "history_s": tr.history_s if tr else None,
            "backtest_mae": tr.mae if tr else None,
            "baseline_mae": tr.baseline_mae if tr else None,
            "baseline": tr.baseline if tr else None,
            "backtest": tr.backtest if tr else [],
            "override": ov.as_dict() if ov else None,
            "capacity": "idle + ours: CPUs a job of ours could use (idle ones and those our pool holds)",
            "observed_idle_cpus": self.observed_idle(now),
            "observed_capacity_cpus": self.observed_capacity(now),
            "held_cpus": self.held_cpus(),
            "expected_wait_s": self._expected_wait(),
            "grid_s": self.settings.grid_s,
            "horizon_s": self.settings.horizon_s,
            "next": {
                "idle": list(view.idle[:8]) if view else [],
                "lo": list(view.lo[:8]) if view else [],
                "hi": list(view.hi[:8]) if view else [],
            },
        }

    # -- training -------------------------------------------------------------------------------
    def start(self, first_done: bool = False) -> None:
        self._task = asyncio.create_task(self._loop(first_done), name="forecast-training")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def retrain(self) -> None:
        self._retrain.set()

    async def _loop(self, first_done: bool) -> None:
        if first_done:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._retrain.wait(), self.settings.train_every_s)
        while True:
            await self.train_once()
            self._retrain.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._retrain.wait(), self.settings.train_every_s)

    async def train_once(self) -> Trained | None:
        """Choose and fit a forecaster on the history, in a worker thread; never raises."""
        if self.history is None:
            self.state = "cold: no history"
            return None
        try:
            series = await asyncio.to_thread(
                self.history.series, self.settings.grid_s, self.sources, self.settings.partition or None
            )
            tr, why = await asyncio.to_thread(train, series, self.settings, self.wall())
        except Exception as exc:  # a broken history or model must not end the balancer
            self.state = f"error: {type(exc).__name__}: {exc}"
            self.bus.emit(Ev.FORECAST_TRAINED, ok=False, error=self.state)
            return None
        if tr is None:
            self.state = why
            self.bus.emit(Ev.FORECAST_TRAINED, ok=False, error=why)
            return None
        self.trained, self.state = tr, "ok"
        self.bus.emit(
            Ev.FORECAST_TRAINED, ok=True, model=tr.model, mae=tr.mae, baseline_mae=tr.baseline_mae,
            history_s=tr.history_s, start=tr.prediction.start, step_s=tr.prediction.step_s,
            mean=[round(float(x), 2) for x in tr.prediction.mean],
        )  # fmt: skip
        return tr


def train(series: Series | None, settings: Any, now: float) -> tuple[Trained | None, str]:
    """Pick the forecaster (the configured one, or the best backtest that beats every baseline, else
    the best baseline) and predict the horizon from the end of the history. Runs in a worker thread."""
    import numpy as np

    from balancer.capacity import backtest as bt
    from balancer.capacity import forecasters as models
    from balancer.capacity.series import DAY_S

    if series is None or not len(series.values):
        return None, "cold: no history yet"
    finite = np.isfinite(series.values)
    span = float(finite.sum()) * series.step_s
    if span < settings.min_history_s:
        return None, (f"cold: {span / 3600:.1f} h of history, forecasts start at "
                      f"{settings.min_history_s / 3600:g} h")  # fmt: skip
    horizon = max(1, int(settings.horizon_s // series.step_s))
    # Auto: the built-in models compete (extras are used when named, once a backtest shows they win).
    auto = settings.forecaster == "auto"
    names = list(models.BUILTIN) if auto else [*models.BASELINES, settings.forecaster]
    names = list(dict.fromkeys(names))
    try:
        day, week = series.slots_per(DAY_S), series.slots_per(7 * DAY_S)
        results = bt.backtest(series, names, horizon, origins=BACKTEST_ORIGINS, every=day, min_train=week)
    except ValueError:  # less than a week plus the horizon: nothing to compare, the baseline it is
        results = []
    rows = [_finite(asdict(r)) for r in results]
    by_name = {r.name: r for r in results}
    name = bt.choose(results) if settings.forecaster == "auto" else settings.forecaster
    base = bt.best_baseline(results)
    baseline = base.mae if base else None
    mae = by_name[name].mae if name in by_name else None
    model = models.make(name)
    model.fit(series)
    # Predict from the end of the history to ``horizon`` slots past now (history may lag now).
    lag = max(0, int((now - series.end) // series.step_s))
    pred = model.predict(horizon + lag + 1)
    return Trained(name, pred, now, span, rows, mae, baseline, base.name if base else None), "ok"


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: NaN and infinities become None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
