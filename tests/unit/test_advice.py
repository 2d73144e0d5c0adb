"""The mismatch advice as pure functions (balancer/profiling/advice.py); the profiler journals it
once per run (tests/unit/test_profiles.py)."""

from balancer.profiling.advice import cpu_advice, memory_advice
from balancer.profiling.store import util_bin
from balancer.units import MIB


def _busy(util: float, n: int = 10) -> dict[str, object]:
    return {"util_hist": {util_bin(util): n}, "rss_peak_bytes": 0}


def test_cpus_given_at_least_twice_the_p90_used_get_advice():
    a = cpu_advice(8, _busy(1.0))
    assert a is not None and a.resource == "cpus" and a.given == 8 and 'cpus = 1 (or "auto")' in a.text
    assert cpu_advice(2, _busy(1.9)) is None  # uses what it has
    assert cpu_advice(1, _busy(0.0)) is None  # one CPU is never too many


def test_memory_far_above_or_near_the_peak_gets_advice():
    low = memory_advice("4G", {"rss_peak_bytes": 512 * MIB}, headroom=1.5)
    assert low is not None and "less memory" in low.text and 'memory = "768M"' in low.text
    high = memory_advice("1G", {"rss_peak_bytes": 1000 * MIB}, headroom=1.5)
    assert high is not None and "more memory" in high.text
    assert memory_advice("1G", {"rss_peak_bytes": 600 * MIB}, headroom=1.5) is None
    assert memory_advice("lots", {"rss_peak_bytes": 600 * MIB}, headroom=1.5) is None  # unreadable: no advice
