"""Capacity = idle + ours: what the monitor stores, what an old history still gives, what the
scaler's view says. Our own running jobs must never read as the cluster filling up."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from balancer.capacity.history import History
from balancer.capacity.monitor import CapacityMonitor, stamp_ours
from balancer.capacity.sample import CapacitySample
from balancer.capacity.series import Prediction
from balancer.capacity.service import ForecastService, Override, Trained
from balancer.observe.events import EventBus
from balancer.policy.admission import polite_shortfall

STEP = 900.0
T0 = (time.time() // 86400 - 3) * 86400


def _s(idle: float, total: float = 8.0, part: str = "p", t: float = T0, ours: float = 0.0) -> CapacitySample:
    return CapacitySample(t, "slurm", part, total, idle, ours_cpus=ours)


def test_capacity_is_idle_plus_ours_at_most_the_total() -> None:
    assert _s(2.0, ours=4.0).capacity_cpus == 6.0
    assert _s(6.0, ours=4.0).capacity_cpus == 8.0  # local: idle cores we were given count once
    assert _s(2.0).capacity_cpus == 2.0


def test_stamp_puts_each_partitions_own_and_the_rest_on_the_first() -> None:
    one = stamp_ours([_s(1.0, part="debug")], {"": 3.0})
    assert [s.ours_cpus for s in one] == [3.0]  # no partition named: the default one, the only sample
    two = stamp_ours([_s(1.0, part="a"), _s(1.0, part="b")], {"b": 2.0, "": 1.0, "elsewhere": 1.0})
    assert [s.ours_cpus for s in two] == [2.0, 2.0]
    assert stamp_ours([], {"": 5.0}) == []


class _Collector:
    source = "slurm"

    def __init__(self, idle: float) -> None:
        self.idle = idle

    async def sample(self) -> list[CapacitySample]:
        return [CapacitySample(time.time(), "slurm", "p", 8.0, self.idle)]


def _settings(**kw: Any) -> SimpleNamespace:
    base = {"enabled": True, "grid_s": STEP, "horizon_s": 4 * STEP, "collect_interval_s": 60.0,
            "partition": "", "min_history_s": 0.0, "forecaster": "auto", "train_every_s": 3600.0}  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def test_monitor_stores_and_journals_capacity_and_the_view_counts_our_jobs(tmp_path: Path) -> None:
    """The cluster's 8 CPUs: 6 held by our jobs, 2 idle. Capacity is 8, not 2; nothing to stop."""
    bus = EventBus()
    seen: list[dict[str, Any]] = []
    bus.subscribe(lambda e: seen.append(dict(e)))
    held = {"p": 6.0}
    service = ForecastService(_settings(), bus, held=lambda: held)
    with History(tmp_path / "h.sqlite") as h:
        mon = CapacityMonitor(_Collector(2.0), h, service, bus, 60.0, held=lambda: held)
        asyncio.run(mon.sample_once())
        series = h.series(STEP)
        assert series is not None and float(np.nanmax(series.values)) == 8.0
    ev = next(e for e in seen if e.get("ev") == "capacity.sample")
    assert (ev["idle_cpus"], ev["ours_cpus"], ev["capacity_cpus"], ev["total_cpus"]) == (2.0, 6.0, 8.0, 8.0)
    # A trained flat forecast of 8: slot 0 is the observed capacity, held what our jobs hold now.
    now = time.time()
    pred = Prediction(now - 60, STEP, np.full(8, 8.0), np.full(8, 7.0), np.full(8, 8.0))
    service.trained = Trained("last-value", pred, now, 86400.0, [])
    held["p"] = 7.0  # one more job of ours started since the sample
    fv = service.view()
    assert fv is not None and fv.source == "forecast"
    assert fv.idle[0] == 8.0 and fv.held_cpus == 7.0
    assert fv.idle[0] - fv.held_cpus == 1.0  # room for one more job, the one CPU still idle
    assert min(fv.hi) >= fv.held_cpus  # no polite stop: others do not want our CPUs
    status = service.status()
    assert (status["observed_capacity_cpus"], status["observed_idle_cpus"], status["held_cpus"]) == (
        8.0,
        2.0,
        7.0,
    )
    assert status["capacity"].startswith("idle + ours")


def test_our_servers_beyond_the_machine_are_no_reason_for_a_polite_stop() -> None:
    """Three 1-CPU servers of ours on a 2-core machine (local): capacity is 2, we hold 3."""
    bus = EventBus()
    service = ForecastService(_settings(), bus, held=lambda: {"": 3.0})
    now = time.time()
    service.latest, service.latest_t = [_s(0.0, total=2.0, part="", ours=3.0)], now
    pred = Prediction(now - 60, STEP, np.full(8, 2.0), np.full(8, 2.0), np.full(8, 2.0))
    service.trained = Trained("last-value", pred, now, 86400.0, [])
    fv = service.view()
    assert fv is not None and fv.idle[0] == 2.0 and fv.held_cpus == 2.0
    assert polite_shortfall(fv, 3600.0) == 0.0  # nothing to stop politely


def test_an_override_of_idle_cpus_adds_what_we_hold() -> None:
    held = {"": 3.0}
    service = ForecastService(_settings(), EventBus(), held=lambda: held)
    service.set_override(Override(0.0, time.time() + 600))
    fv = service.view()
    assert fv is not None and fv.source == "override"
    assert fv.idle[0] == 3.0 and fv.held_cpus == 3.0  # "0 idle": start nothing more, stop nothing
    held[""] = 5.0
    fv = service.view()
    assert fv is not None and fv.idle[0] == 5.0 and fv.held_cpus == 5.0  # the cache follows held


def test_an_old_history_keeps_imported_rows_and_skips_collected_ones_that_counted_us_as_busy(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # the schema before ours_cpus existed
    db.execute(
        "CREATE TABLE samples (t REAL, source TEXT, partition TEXT, total_cpus REAL, idle_cpus REAL,"
        " imported INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("INSERT INTO samples VALUES (?, 'swf', '', 100, 40, 1)", (T0 + 10,))
    db.execute("INSERT INTO samples VALUES (?, 'slurm', 'p', 8, 1, 0)", (T0 + STEP + 10,))
    db.commit()
    db.close()
    with History(path) as h:
        assert h.count() == 2  # kept in the file
        old = h.series(STEP, source=("slurm", "swf"))
        assert old is not None and old.values[0] == 40.0 and len(old.values) == 1
        assert h.series(STEP, source="slurm") is None  # no collected capacity yet: a fresh series
        h.add([CapacitySample(T0 + 2 * STEP + 10, "slurm", "p", 8.0, 1.0, ours_cpus=5.0)])
        new = h.series(STEP, source="slurm")
        assert new is not None and list(new.values) == [6.0]


@pytest.mark.parametrize("held", [0.0, 4.0])
def test_held_never_exceeds_the_observed_capacity_when_the_pool_is_the_one_truth(held: float) -> None:
    """Capacity at the sample = idle + what the pool held then, so capacity - held >= 0 at that
    moment: the polite rule can only fire when others' load rises, never on ours alone."""
    s = stamp_ours([_s(0.0, total=4.0, part="")], {"": held})[0]
    assert s.capacity_cpus - held >= 0.0


def test_forecast_status_text_labels_capacity_as_idle_plus_ours() -> None:
    from balancer.cli.forecast import format_status

    doc = {"state": "ok", "in_use": True, "model": "last-value", "trained_at": time.time(),
           "history_s": 86400.0, "backtest_mae": 1.5, "baseline_mae": 2.0, "baseline": "historic-mean",
           "observed_idle_cpus": 2.0, "observed_capacity_cpus": 8.0, "held_cpus": 6.0, "grid_s": 900,
           "next": {"idle": [8.0, 7.0]}}  # fmt: skip
    text = format_status(doc)
    assert "best baseline historic-mean 2.00" in text
    assert "observed now: capacity 8 CPUs = 2 idle + 6 ours" in text
    assert "capacity (idle + ours), next 2 x 15 min: 8 7" in text
