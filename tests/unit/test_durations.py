"""``balancer.units``: the one reading of durations, time limits and sizes every command line,
job script directive and configuration key goes through."""

from __future__ import annotations

import pytest

from balancer.units import format_time_limit, human_duration, parse_duration, parse_time_limit, scale_memory


def test_every_duration_form_the_balancer_takes() -> None:
    forms = {
        "900": 900,  # plain seconds (backtest, forecast override, simulate)
        "90s": 90,
        "15m": 900,
        "15min": 900,
        "2H": 7200,
        "1h 5m": 3900,  # HQ's --time-request
        "1.5h": 5400,
        "7d": 7 * 86400,
        "2w": 14 * 86400,
        "2:30": 150,  # clock times read as SLURM reads them
        "01:00:00": 3600,
        "1-12:00:00": 36 * 3600,
    }
    assert {t: parse_duration(t) for t in forms} == forms


@pytest.mark.parametrize("bad", ["", "-5", "0", "0s", "15 parsecs", "1e3", "1-", "abc"])
def test_a_bad_duration_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_time_limits_round_up_to_whole_minutes() -> None:
    assert parse_time_limit("90") == 5400.0 and parse_time_limit(None) is None
    limits = [format_time_limit(s) for s in (0, 61, 5400, 90000)]
    assert limits == ["00:01:00", "00:02:00", "01:30:00", "1-01:00:00"]
    assert [human_duration(s) for s in (45, 600, 9000)] == ["45 s", "10 min", "2.5 h"]
    assert scale_memory("2G", 3) == "6G" and scale_memory("lots", 2) == "lots"
