"""The simulator under the harvest and forecast policies on tiny hand-made clusters: preemption
absorbed by re-running calls, and max_servers never exceeded."""

from __future__ import annotations

import numpy as np
import pytest

from balancer.capacity.swf import read_swf
from balancer.sim.campaign import Campaign
from balancer.sim.replay import Replay
from balancer.sim.run import SimConfig, simulate
from tests.unit.test_simulate import swf


def test_a_normal_job_preempts_the_harvest_and_every_call_is_done_once(tmp_path):
    # 4 idle CPUs; a normal 4-CPU job arrives at 500 s and runs 300 s. Eight calls of 400 s on
    # harvested 1-CPU servers: those computing at 500 s get a notice, lose their call at 560 s
    # (grace 60 s), the call re-runs after the normal job; the campaign completes.
    replay = Replay(
        read_swf(swf(tmp_path, [(500, 4, 300, 300), (90000, 1, 10, 10)])), [0.0], preempt_grace_s=60.0
    )
    camp = Campaign(np.zeros(8), np.full(8, 400.0))
    cfg = SimConfig(max_servers=4, startup_delay_s=30.0, on_notice="hold")
    r = simulate(replay, 0.0, camp, "harvest", cfg)
    assert r.preempted >= 1 and r.requeued >= 1
    assert r.calls_done == 8 and r.calls_repeated == 0
    assert np.isfinite(r.makespan_s)
    assert r.killed_cpu_s > 0  # the lost part of the calls in flight: waste, not useful work
    assert r.useful_cpu_s == 8 * 400.0
    # The normal job started no later than the grace time after its arrival: harvesting cost it
    # at most the grace time.
    (j,) = np.flatnonzero(replay.submit == 500)
    k = list(r.harm_jobs).index(j)
    assert 500.0 <= r.harm_start[k] <= 560.0
    assert r.held_max <= 4 and r.serving_max <= 4


def test_forecast_policy_with_replace_ahead_never_exceeds_max_servers(tmp_path):
    # A quiet 8-CPU cluster with small jobs over 3 days (history for the forecaster); the campaign
    # starts on day 2 and outlives its servers' 1-hour time limit several times, so replace-ahead
    # queues successors while the old servers still serve.
    jobs = [(t, 1, 600, 900) for t in range(0, 3 * 86400, 3600)]
    replay = Replay(read_swf(swf(tmp_path, jobs, procs=8)), [2 * 86400.0])
    camp = Campaign(np.zeros(200), np.full(200, 300.0))
    cfg = SimConfig(max_servers=4, time_limit_s=3600.0, startup_delay_s=30.0)
    r = simulate(replay, 2 * 86400.0, camp, "forecast", cfg)
    assert r.forecasts  # the forecast was warm: the forecast-aware rules applied
    assert r.calls_done == 200 and r.calls_repeated == 0
    assert r.jobs_submitted > 4  # servers were replaced
    assert r.held_max <= cfg.max_servers
    assert r.serving_max <= cfg.max_servers  # concurrency 1
    assert r.timeline["serving"].max() <= cfg.max_servers


def test_a_server_that_leaves_at_the_notice_costs_the_normal_job_nothing(tmp_path):
    # The same cluster and campaign; the preempted servers hand their calls back and end their jobs
    # at the notice: the normal job starts on arrival, and still every call is done once.
    replay = Replay(
        read_swf(swf(tmp_path, [(500, 4, 300, 300), (90000, 1, 10, 10)])), [0.0], preempt_grace_s=60.0
    )
    camp = Campaign(np.zeros(8), np.full(8, 400.0))
    r = simulate(replay, 0.0, camp, "harvest", SimConfig(max_servers=4))  # on_notice="now": the default
    assert r.preempted >= 1 and r.calls_done == 8 and r.calls_repeated == 0
    (j,) = np.flatnonzero(replay.submit == 500)
    assert r.harm_start[list(r.harm_jobs).index(j)] == 500.0


def test_an_unknown_notice_mode_is_refused(tmp_path):
    replay = Replay(read_swf(swf(tmp_path, [(500, 4, 300, 300)])), [0.0])
    with pytest.raises(ValueError, match="on_notice"):
        simulate(replay, 0.0, Campaign(np.zeros(1), np.ones(1)), "harvest", SimConfig(on_notice="later"))
