"""The local capacity collector follows psutil while a real process burns a CPU, and our own burst
does not shrink the pool (capacity = idle + ours; the rest of the capacity tests:
unit/test_capacity, unit/test_capacity_ours, cluster/test_capacity_collectors)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest
import umbridge

from balancer.capacity.collect_local import LocalCollector
from balancer.capacity.history import History
from balancer.capacity.sample import CapacitySample
from balancer.policy.types import StopReason
from tests.helpers import ROOT, test_model_spec, wait_until


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


def _forecast_status(b: Any) -> dict[str, Any]:
    argv = [sys.executable, "-m", "balancer.cli", "forecast", "status", "--json", "--run-dir", str(b.run_dir)]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.timeout(180)
def test_our_own_burst_does_not_shrink_the_pool(start_balancer, tmp_path):
    """Issue 20: a burst from the official client fills the machine with our servers; capacity is
    idle + ours, so the forecast view stays at the machine's size and no idle server is stopped
    because "the cluster fills up" (polite after 1 s idle, no cool-down: a wrong capacity would
    stop one within seconds). The collector is the real one (psutil); the history is two days of
    an otherwise idle machine, so the forecast is trained from the first second."""
    total = int(LocalCollector().cpus)
    hist = tmp_path / "capacity.sqlite"
    now = time.time()
    with History(hist) as h:
        h.add([CapacitySample(now - k * 900, "local", "", total, total) for k in range(1, 193)])
    forecast = {"history": str(hist), "collect_interval_s": 0.5, "min_history_s": 86400.0,
                "policy": "forecast", "polite_idle_s": 1.0, "cooldown": False}  # fmt: skip
    spec = test_model_spec(models=["forward"], min_servers=0, max_servers=total, backlog=total,
                           idle_timeout_s=600, env={"TEST_DELAY": "200"})  # fmt: skip
    b = start_balancer([spec], tables={"forecast": forecast})
    model = umbridge.HTTPModel(b.url, "forward")
    n = 10 * total
    with ThreadPoolExecutor(4 * total) as ex:
        outs = list(ex.map(lambda i: model([[float(i)]]), range(n)))
    assert outs == [[[2.0 * i]] for i in range(n)]
    wait_until(lambda: len(b.events("server.ready")) >= total or b._died(), 60, what=f"{total} servers ready")
    # The pool is full and idle: wait past polite_idle_s for a few more samples, then look.
    seen = len(b.events("capacity.sample"))
    wait_until(lambda: len(b.events("capacity.sample")) >= seen + 4 or b._died(), 30, what="4 more samples")
    status = _forecast_status(b)
    assert status["in_use"] and status["held_cpus"] == total
    assert status["next"]["idle"][0] >= status["held_cpus"]  # capacity counts our servers in
    full = [e for e in b.events("capacity.sample") if e["ours_cpus"] == total]
    assert full, "no sample was taken while our servers held the machine"
    assert all(e["capacity_cpus"] == total for e in full), [e["capacity_cpus"] for e in full]
    polite = [e for e in b.events() if e.get("reason") == StopReason.POLITE.value]
    assert polite == [], polite
    assert not b.events("server.stopping") and len(b.events("server.ready")) == total
    assert b.stop() == 0
