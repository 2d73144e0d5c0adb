"""The forecast CLI as a process: bad input is one line and exit code 2; a backtest on a real trace
as JSON (the forecasters themselves: unit/test_forecast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from balancer.capacity.forecasters import BASELINE

ROOT = Path(__file__).resolve().parents[2]
KTH = Path(__file__).resolve().parents[3] / "shared/data/traces/KTH-SP2-1996-2.1-cln.swf.gz"
needs_kth = pytest.mark.skipif(not KTH.is_file(), reason=f"KTH SP2 trace not found at {KTH}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "balancer.capacity.backtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args, says",
    [
        # one duration parser for the whole package now (balancer/units.py): its message names the forms
        (["--grid", "fortnightly", "x"], "not a duration: 'fortnightly'"),
        (["--grid", "0", "x"], "positive"),
        (["--origins", "0", "x"], "--origins"),
        (["--models", "seasonal-naive-day,nope", "x"], "unknown forecaster 'nope'"),
        (["/nonexistent/history.db"], "no such file"),
        (["pyproject.toml"], "pyproject.toml"),
        (["x", "--bogus"], "unrecognized arguments"),
        (["--json"], "required: HISTORY|TRACE"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    p = _cli(*args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("balancer: error: ") and says in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


@needs_kth
def test_cli_backtest_json_on_kth() -> None:
    p = _cli(
        str(KTH),
        "--grid",
        "1h",
        "--horizon",
        "24h",
        "--origins",
        "4",
        "--json",
        "--models",
        "seasonal-naive-day,blend",
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["baseline"] == BASELINE and doc["grid_s"] == 3600
    assert [r["name"] for r in doc["results"]] == ["seasonal-naive-day", "blend"]
    assert all(r["origins"] == 4 and r["mae"] > 0 for r in doc["results"])
    assert doc["chosen"] in ("seasonal-naive-day", "blend")
