"""Forecast error over a run: a run without capacity samples shows none (``balancer analyze`` as a
process on a run with samples: system/test_forecast_journal_cli)."""

from __future__ import annotations

import json

from balancer.analysis.load import load_run


def _journal(path, samples):
    lines = [{"v": 1, "ev": "balancer.started", "t": 1000.0, "m": 0.0, "url": "http://127.0.0.1:1"}]
    for i, (idle, pred) in enumerate(samples, 1):
        ev = {"v": 1, "ev": "capacity.sample", "t": 1000.0 + 60 * i, "m": 60.0 * i, "source": "slurm",
              "idle_cpus": idle, "total_cpus": 64}  # fmt: skip
        if pred is not None:
            ev["predicted_idle_cpus"] = pred
        lines.append(ev)
    lines.append({"v": 1, "ev": "forecast.changed", "t": 2000.0, "m": 1000.0, "change": "disabled"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_run_without_capacity_samples_shows_no_forecast_error(tmp_path):
    j = tmp_path / "journal.jsonl"
    _journal(j, [])
    s = load_run(str(j), progress=False).summary()
    assert s["capacity_samples"] is None and s["forecast_mae_cpus"] is None  # shown as "-"
