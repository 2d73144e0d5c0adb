"""``balancer analyze`` as a process reports the forecast error of a run from the journal's capacity
samples (no samples, no error: unit/test_forecast_journal)."""

from __future__ import annotations

import subprocess
import sys

from balancer.analysis.load import load_run
from tests.unit.test_forecast_journal import _journal


def test_analyze_reports_the_forecast_error_of_a_run(tmp_path):
    j = tmp_path / "journal.jsonl"
    _journal(j, [(10, 12), (20, 14), (30, None), (40, 40)])  # errors +2, -6, (none), 0
    run = load_run(str(j), progress=False)
    assert run.warnings == []  # capacity.* and forecast.* are known events
    s = run.summary()
    assert s["capacity_samples"] == 4
    assert s["idle_cpus_mean"] == 25.0
    assert s["forecast_mae_cpus"] == 8 / 3
    assert s["forecast_bias_cpus"] == -4 / 3
    out = subprocess.run([sys.executable, "-m", "balancer.cli", "analyze", str(j)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("forecast error"))
    assert row.split()[-1] == "2.67"
