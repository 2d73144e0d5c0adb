"""The local capacity collector follows psutil while a real process burns a CPU (the rest of the
capacity tests: unit/test_capacity, cluster/test_capacity_collectors)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import psutil
import pytest

from balancer.capacity.collect_local import LocalCollector
from tests.helpers import wait_until


def test_local_collector_follows_psutil():
    c = LocalCollector()
    (first,) = asyncio.run(c.sample())
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = psutil.Process(burner.pid)
        wait_until(lambda: sum(proc.cpu_times()[:2]) >= 0.5, 20, what="the burner to spin 0.5 s")
        burnt = sum(proc.cpu_times()[:2])  # CPU seconds it spent inside the collector's window
        (second,) = asyncio.run(c.sample())
    finally:
        burner.kill()
        burner.wait()
    cpus = psutil.cpu_count()
    for s in (first, second):
        assert (s.source, s.partition, s.total_cpus) == ("local", "", cpus)
        assert 0 <= s.idle_cpus <= cpus and s.alloc_cpus == pytest.approx(cpus - s.idle_cpus)
        assert s.mem_used_frac == pytest.approx(psutil.virtual_memory().percent / 100, abs=0.05)
        assert s.load == pytest.approx(os.getloadavg()[0] / cpus, abs=1.0)
    window = second.t - first.t + 0.05
    assert second.idle_cpus <= cpus - burnt / window + 0.05, "CPU time a spinning process took counts as busy"
