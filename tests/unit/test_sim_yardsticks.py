"""The simulator's yardsticks on hand-computable cases: bounds D and H, harm on one fixed set of
trace jobs, harvest fraction, waste in CPU-seconds, and the paired bootstrap."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from balancer.capacity.swf import read_swf
from balancer.sim.campaign import Campaign
from balancer.sim.replay import Replay
from balancer.sim.run import Result, SimConfig, harm_set, simulate
from balancer.sim.stats import bootstrap_mean, paired
from balancer.sim.yardsticks import dedicated_bound_s, harm, harvest_bound_s, harvest_fraction, waste
from tests.unit.test_simulate import swf

KTH = Path(__file__).resolve().parents[3] / "shared/data/traces/KTH-SP2-1996-2.1-cln.swf.gz"


def result(**kw: Any) -> Result:
    """A ``Result`` with neutral fields, ``kw`` overriding."""
    base: dict[str, Any] = dict(
        policy="demand",
        start=0.0,
        makespan_s=0.0,
        work_s=0.0,
        cpus=1,
        max_servers=1,
        startup_delay_s=0.0,
        step_s=900.0,
        call_wait_s=np.zeros(0),
        job_wait_s=np.zeros(0),
        jobs_submitted=0,
        jobs_never_started=0,
        calls_done=0,
        calls_repeated=0,
        useful_cpu_s=0.0,
        held_cpu_s=0.0,
        startup_cpu_s=0.0,
        killed_cpu_s=0.0,
        pending_max=0,
        pending_mean=0.0,
        beyond_max=0,
        held_max=0,
        serving_max=0,
        preempted=0,
        requeued=0,
        harm_jobs=np.zeros(0, dtype=int),
        harm_start=np.zeros(0),
        harm_cpus=np.zeros(0),
        harm_run=np.zeros(0),
        ours_cpu_s=np.zeros(0),
    )
    base.update(kw)
    return Result(**base)


def test_dedicated_bound_is_work_over_max_servers_plus_startup():
    assert dedicated_bound_s(result(work_s=3600.0, max_servers=4, startup_delay_s=30.0)) == 930.0


def test_harvest_bound_runs_the_work_on_the_idle_cpus_alone():
    # Idle 2, 4, 0, 4 CPUs per 900 s slot; at most 3 servers; the start is half-way through slot 0.
    # 450 s x 2 = 900, then 900 s x 3 = 2700 (3600), slot 2 gives nothing, 300 more take 100 s of
    # slot 3: the work ends at 2 x 900 + 900 + 100 = 2800 s, 2350 s after the start, + 30 s start-up.
    idle = np.array([2.0, 4.0, 0.0, 4.0])
    r = result(start=450.0, work_s=3900.0, max_servers=3, startup_delay_s=30.0)
    assert harvest_bound_s(r, idle) == pytest.approx(2380.0)
    assert harvest_bound_s(result(start=0.0, work_s=1800.0, max_servers=4), idle) == pytest.approx(900.0)
    assert harvest_bound_s(result(start=0.0, work_s=1e9, max_servers=4), idle) == math.inf
    # Two-CPU servers: half as many fit in the same idle CPUs.
    assert harvest_bound_s(result(start=0.0, work_s=900.0, max_servers=4, cpus=2), idle) == pytest.approx(
        900.0
    )


def test_harm_against_the_replay_on_the_fixed_set():
    # Three jobs: 1 CPU 10 s late, 4 CPUs on time, 2 CPUs 3600 s late.
    replay = SimpleNamespace(submit=np.array([0.0, 0.0, 100.0]), start=np.array([0.0, 50.0, 100.0]))
    r = result(
        harm_jobs=np.array([0, 1, 2]),
        harm_start=np.array([10.0, 50.0, 3700.0]),
        harm_cpus=np.array([1.0, 4.0, 2.0]),
        harm_run=np.array([5.0, 100.0, 3600.0]),
    )
    h = harm(r, replay)  # type: ignore[arg-type]
    assert h["harm_cpu_h"] == pytest.approx((10 * 1 + 0 + 3600 * 2) / 3600)
    # Bounded slowdown (threshold 10 s): job 0 (10 + 5) / 10 = 1.5 vs max(1, 5/10) = 1; job 1 both
    # (50 + 100) / 100 = 1.5; job 2 (3600 + 3600) / 3600 = 2 vs 1.
    assert h["harm_bsld"] == pytest.approx(((1.5 - 1) + 0 + (2 - 1)) / 3)
    assert h["harm_delayed"] == pytest.approx(2 / 3)
    assert h["harm_p95_s"] == pytest.approx(np.percentile([10.0, 0.0, 3600.0], 95))


def test_harvest_fraction_counts_our_cpu_seconds_on_idle_cpus_slot_by_slot():
    # Our jobs held 900 CPU-s in each of two slots; the replay left 0.5 and 2 CPUs idle there.
    r = result(start=0.0, ours_cpu_s=np.array([900.0, 900.0]))
    assert harvest_fraction(r, np.array([0.5, 2.0])) == pytest.approx((450 + 900) / 1800)
    assert math.isnan(harvest_fraction(result(ours_cpu_s=np.zeros(2)), np.ones(2)))


def test_waste_is_cpu_seconds_per_useful_cpu_second_in_parts():
    r = result(useful_cpu_s=1000.0, held_cpu_s=1300.0, startup_cpu_s=100.0, killed_cpu_s=50.0)
    w = waste(r)
    assert w == pytest.approx({"waste": 0.3, "waste_idle": 0.15, "waste_startup": 0.1, "waste_killed": 0.05})


def test_waste_units_in_a_run_of_two_cpu_servers(tmp_path):
    # An empty 4-CPU cluster (one tiny trace job far away); one call of 100 s on a 2-CPU server.
    replay = Replay(read_swf(swf(tmp_path, [(90000, 1, 10, 10)])), [0.0])
    cfg = SimConfig(max_servers=1, cpus=2, startup_delay_s=30.0, idle_timeout_s=60.0, tick_s=30.0)
    camp = Campaign(np.zeros(1), np.array([100.0]))
    r = simulate(replay, 0.0, camp, "demand", cfg)
    assert r.useful_cpu_s == 200.0  # 100 s on 2 CPUs
    assert r.startup_cpu_s == 60.0  # 30 s on 2 CPUs
    assert r.killed_cpu_s == 0.0
    # Held: started at 0, ready at 30, done at 130; the campaign is over and the pool shut down at
    # the last tick (180) before the idle timeout would have stopped it (190).
    assert r.held_cpu_s == 2 * 180.0
    assert waste(r)["waste"] == pytest.approx((360 - 200) / 200)
    assert waste(r)["waste_idle"] == pytest.approx((360 - 200 - 60) / 200)
    assert r.makespan_s == 130.0


def test_bootstrap_interval_covers_a_known_mean_and_is_seeded():
    # Over 200 seeded samples of 30 starts x 3 seeds from a known mean, the 95 % interval covers it
    # about 95 % of the time (a percentile bootstrap on 30 units runs a little narrow).
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(200):
        v = rng.normal(5.0, 1.0, size=(30, 3))
        m, lo, hi = bootstrap_mean(v, resamples=2000)
        covered += lo < 5.0 < hi
        assert lo < m < hi
    assert 0.88 <= covered / 200 <= 0.99
    assert bootstrap_mean(v) == bootstrap_mean(v)
    d, dlo, dhi = paired(v + 0.5, v)
    assert d == pytest.approx(0.5) and dlo == pytest.approx(0.5) and dhi == pytest.approx(0.5)
    assert all(math.isnan(x) for x in bootstrap_mean(np.full((3, 2), np.nan)))


def test_every_policy_runs_the_same_campaign_on_the_same_snapshot_and_fixed_harm_set(tmp_path):
    # A busy 4-CPU cluster: our jobs delay some trace jobs, differently per policy; the harm set
    # is the same for every policy and the snapshot is not changed by a run.
    jobs = [(t, 1 + (t // 300) % 4, 600, 900) for t in range(0, 20000, 300)]
    replay = Replay(read_swf(swf(tmp_path, jobs)), [3000.0])
    snap = replay.snapshots[3000.0]
    before = (list(snap.start), list(snap.queue), snap.now)
    camp = Campaign(np.zeros(12), np.full(12, 300.0))
    cfg = SimConfig(max_servers=3, harm_window_s=10000.0)
    want = harm_set(replay, 3000.0, 10000.0)
    assert len(want) > 10
    results = {p: simulate(replay, 3000.0, camp, p, cfg) for p in ("demand", "harvest", "hybrid")}
    for r in results.values():
        assert np.array_equal(r.harm_jobs, want)
        assert r.calls_done == 12 and r.calls_repeated == 0
        assert np.all(np.isfinite(r.harm_start))
    assert (list(snap.start), list(snap.queue), snap.now) == before
    again = simulate(replay, 3000.0, camp, "demand", cfg)
    assert np.array_equal(again.harm_start, results["demand"].harm_start)


@pytest.mark.skipif(not KTH.exists(), reason=f"KTH SP2 trace not found at {KTH} (shared data)")
def test_smoke_on_the_kth_trace():
    from balancer.sim.yardsticks import figures

    trace = read_swf(KTH)
    start = 40 * 86400.0
    replay = Replay(trace, [start])
    camp = Campaign(np.zeros(200), np.full(200, 300.0))
    cfg = SimConfig(max_servers=20)
    for p in ("demand", "forecast", "harvest", "hybrid"):
        f = figures(simulate(replay, start, camp, p, cfg), replay)
        assert f["makespan_D"] >= 1.0 and f["calls_missing"] == 0
        assert f["held_max"] <= 20 and f["serving_max"] <= 20
