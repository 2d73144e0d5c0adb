"""The live replay's pure parts: slicing and compressing a trace (``sim/slice.py``), and turning what
SLURM recorded into the simulator's yardsticks (``sim/live.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from balancer.capacity.swf import SwfTrace, read_swf
from balancer.sim import live
from balancer.sim.replay import Replay
from balancer.sim.slice import as_trace, compressed_limit, plan_slice, sbatch_argv, swf_lines

TRACES = Path(__file__).resolve().parents[3] / "shared/data/traces"


def trace(submit, run, req, procs, max_procs=100) -> SwfTrace:
    n = len(submit)
    f = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    jobs = {
        "id": f(range(1, n + 1)),
        "submit": f(submit),
        "wait": f([-1] * n),
        "run": f(run),
        "procs": f(procs),
        "req_procs": f(procs),
        "req_time": f(req),
        "status": f([1] * n),
        "user": f(range(n)),
    }
    return SwfTrace("t.swf", max_procs, 1000.0, 0.0, jobs)


def test_compressed_limits_are_whole_minutes_rounded_up_at_least_one():
    got = compressed_limit(np.array([1.0, 3600.0, 36000.0, 36001.0, 21600.0]), 360.0)
    # 1 s -> 1 min; 3600/360 = 10 s -> 1 min; 36000/360 = 100 s -> 2 min; 21600/360 = 60 s -> 1 min
    assert got.tolist() == [60.0, 60.0, 120.0, 120.0, 60.0]


def test_a_slice_keeps_its_window_compresses_caps_and_sorts():
    t = trace(
        submit=[500, 100, 1000, 1100, 5000, 2000, 1500],
        run=[10, 50, 720, 7200, 10, 100, 30],
        req=[20, 60, 3600, 3600, -1, 100, 30],  # the 4th ran past its request; the 5th asked nothing
        procs=[1, 2, 150, 8, 4, 0, 3],  # 150 > the machine: the machine; 0: dropped
        max_procs=120,
    )
    sl = plan_slice(t, start_s=1000, span_s=1000, compression=10, cluster_cpus=16, warmup_s=600)
    # Window [400, 2000): rows 0 (500), 2 (1000), 3 (1100), 6 (1500); row 1 before, 4 after, 5 no CPUs.
    assert sl.index.tolist() == [0, 2, 3, 6]
    assert np.allclose(sl.submit, [(500 - 400) / 10, 60.0, 70.0, 110.0])
    assert np.allclose(sl.run, [1.0, 72.0, 360.0, 3.0])  # row 3 killed at its request (cap)
    assert sl.limit.tolist() == [60.0, 360.0, 360.0, 60.0]
    assert sl.cpus.tolist() == [1, 16, 8, 3] and sl.capped == 1  # 150 -> 120 (machine) -> 16
    assert sl.campaign_start == 60.0 and sl.length == 160.0
    assert sl.limits_raised == 2  # 2 s and 3 s requests became a minute


def test_the_slice_as_a_trace_and_as_swf_is_what_sbatch_gets():
    t = trace([0, 10, 20], [60, 120, 30], [120, 600, 60], [2, 4, 1])
    sl = plan_slice(t, start_s=0, span_s=100, compression=2, cluster_cpus=3)
    tr = as_trace(sl)
    assert tr.max_procs == 3 and len(tr) == 3
    assert tr.jobs["req_time"].tolist() == sl.limit.tolist() and tr.procs.tolist() == [2, 3, 1]
    lines = swf_lines(sl)
    body = [x for x in lines if not x.startswith(";")]
    assert len(body) == 3 and all(len(x.split()) == 18 for x in body)
    assert "; MaxProcs: 3" in lines
    argv = sbatch_argv(sl, 1, "debug", "trace-1", "/tmp")
    assert argv[:2] == ["sbatch", "--parsable"]
    assert "--ntasks=3" in argv and "--time=5" in argv and "--partition=debug" in argv  # 600/2 s = 5 min
    assert argv[-1] == "--wrap=sleep 60.000"


def test_a_slice_replays_in_the_simulator_as_planned():
    t = trace([0, 0, 5], [100, 100, 10], [200, 200, 20], [60, 60, 10])
    sl = plan_slice(t, start_s=0, span_s=50, compression=1, cluster_cpus=100)
    r = Replay(as_trace(sl), [0.0], step_s=10.0)
    # The second 60-CPU job waits for the first; the 10-CPU one backfills (ends before the reservation).
    assert r.start.tolist() == [0.0, 100.0, 5.0]


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"compression": 0}, "compression"),
        ({"span_s": 0}, "span"),
        ({"start_s": -5}, "outside"),
        ({"cluster_cpus": -1}, "at least 1 CPU"),
    ],
)
def test_bad_slices_are_one_clear_error(kw, msg):
    t = trace([0, 10], [5, 5], [10, 10], [1, 1])
    args = {"start_s": 0.0, "span_s": 10.0, "compression": 10.0, **kw}
    with pytest.raises(ValueError, match=msg):
        plan_slice(t, **args)


def test_a_real_trace_slice_by_path():
    path = TRACES / "KTH-SP2-1996-2.1-cln.swf.gz"
    if not path.exists():
        pytest.skip(f"the KTH SP2 trace is not at {path} (../shared/data/traces relative to the repo)")
    sl = plan_slice(read_swf(path), 15 * 86400 + 10 * 3600, 8 * 3600, 360, 100, 4 * 3600)
    assert len(sl) > 5 and sl.machine_cpus == 100
    assert (np.diff(sl.submit) >= 0).all() and (sl.submit < sl.length).all()
    assert (sl.limit >= 60).all() and (sl.limit % 60 == 0).all() and (sl.run <= sl.limit).all()


# -- what SLURM recorded ----------------------------------------------------------------------------


def test_the_poller_sees_starts_ends_and_array_elements():
    p = live.Poller({}, every_s=0.5)
    p.update("7|7|trace-0|PENDING|debug|4\n9|8_1|umbridge-x|RUNNING|scavenger|5\n", 10.0)
    p.update("7|7|trace-0|RUNNING|debug|4\n", 10.5)
    p.update("7|7|trace-0|COMPLETED|debug|4\n", 12.0)
    assert p.seen["7"].started == 10.5 and p.seen["7"].over == 12.0 and p.seen["7"].cpus == 4
    assert p.seen["9"].started == 10.0 and p.seen["9"].over == 10.5  # gone from squeue: over
    assert p.aliases == {"8_1": "9"} and p.polls == 3
    fresh = live.Poller({}, skip_earlier=True)  # what the first poll lists is an earlier run's
    fresh.update("5|5|old|COMPLETED|debug|1\n", 1.0)
    fresh.update("5|5|old|COMPLETED|debug|1\n6|6|new|RUNNING|debug|1\n", 2.0)
    assert list(fresh.seen) == ["6"]


def test_jobcomp_lines_and_the_merge_with_the_poll(tmp_path):
    comp = tmp_path / "jobcomp.txt"
    comp.write_text(
        "JobId=7 UserId=root(0) Name=trace-0 JobState=COMPLETED Partition=debug TimeLimit=1 "
        "StartTime=2026-12-05T01:43:00 EndTime=2026-12-05T01:43:02 NodeList=vm NodeCnt=1 ProcCnt=4 "
        "SubmitTime=2026-12-05T01:42:59 EligibleTime=2026-12-05T01:42:59\n"
        "JobId=8 UserId=root(0) Name=pend JobState=CANCELLED Partition=debug TimeLimit=1 "
        "StartTime=2026-12-05T01:43:00 EndTime=2026-12-05T01:43:00 NodeList=(null) NodeCnt=0 ProcCnt=0 "
        "SubmitTime=2026-12-05T01:43:00 EligibleTime=2026-12-05T01:43:00\n"
    )
    jobs = live.read_jobcomp(comp)
    s0 = jobs["7"].start
    assert jobs["7"].end - s0 == 2.0 and jobs["7"].cpus == 4 and jobs["7"].submit == s0 - 1
    assert math.isnan(jobs["8"].start)  # never ran
    seen = {"7": live.Seen("trace-0", "debug", 4, s0 - 1, s0 + 0.6, s0 + 2.9, "COMPLETED")}
    merged = live.records(seen, jobs, poll_s=0.5)
    assert merged["7"].start == pytest.approx(s0 + 0.35)  # the poll, less half a poll, in SLURM's second
    assert merged["7"].end == pytest.approx(s0 + 2.65)
    seen["7"].started = s0 + 5.0  # a poll far off SLURM's second is held within it
    assert live.records(seen, jobs, 0.5)["7"].start == s0 + 1.0
    with pytest.raises(live.ReplayError, match="cannot read"):
        live.read_jobcomp(tmp_path / "missing.txt")


def test_busy_series_splits_jobs_over_slots():
    area = live.busy_series([(1.0, 12.0, 2), (5.0, 6.0, 10), (math.nan, 3.0, 1)], 5.0, 3)
    assert area.tolist() == [8.0 + 0.0, 10.0 + 10.0, 4.0]


def _run(sl, starts, ends, t0=100.0):
    ids = {i: (str(i + 1), 0.0) for i in range(len(sl))}
    jobs = {str(i + 1): live.Job(str(i + 1), f"trace-{i}", "debug", int(sl.cpus[i]), 0.0, t0 + a, t0 + b)
            for i, (a, b) in enumerate(zip(starts, ends, strict=True))}  # fmt: skip
    return ids, jobs


def test_live_yardsticks_use_the_simulators_definitions():
    from balancer.sim.yardsticks import figures

    t = trace([0, 10, 20, 30], [40, 20, 20, 20], [60, 60, 60, 60], [50, 50, 10, 10])
    sl = plan_slice(t, start_s=10, span_s=40, compression=1, cluster_cpus=100, warmup_s=10)
    assert sl.campaign_start == 10.0
    ids, base_jobs = _run(sl, [0, 10, 20, 30], [40, 20, 40, 50])
    base = live.baseline(sl, base_jobs, ids, 100.0, step_s=10.0, grace_s=3.0)
    assert base.idle[:5].tolist() == [50.0, 0.0, 40.0, 30.0, 90.0]
    assert base.idle[-1] == 100.0  # idle beyond the last trace job
    # With the campaign: job 1 started 5 s late (50 CPUs), the others on time.
    ids, jobs = _run(sl, [0, 15, 20, 30], [40, 25, 40, 50])
    ours = live.Job("99", "umbridge-waiter", "debug", 10, 110.0, 110.0, 130.0, "CANCELLED")
    pend = live.Job("98", "umbridge-waiter", "debug", 10, 112.0, math.nan, 118.0, "CANCELLED")
    jobs.update({"99": ours, "98": pend})
    camp = live.Campaign(start=110.0, done=130.0, compute_s=np.array([10.0, 8.0]), calls_done=2)
    r = live.live_result("demand", sl, base, jobs, ids, 100.0, camp, 10, 2, 1.0, 1e9)
    assert r.makespan_s == 20.0 and r.jobs_submitted == 2 and r.jobs_never_started == 1
    assert r.harm_jobs.tolist() == [1, 2, 3]  # queued at the campaign's start or submitted after it
    f = figures(r, base)
    assert f["harm_cpu_h"] == pytest.approx(5.0 * 50 / 3600)
    assert f["harm_delayed"] == pytest.approx(1 / 3)
    # Ours held 10 CPUs over [10, 30): slot 1 had 0 idle, slot 2 had 40: half of it harvested.
    assert f["harvest_fraction"] == pytest.approx(0.5)
    assert f["pending_max"] == 1.0 and f["pending_mean"] == pytest.approx(6.0 / 20.0)


# -- what the live replay taught the simulator -------------------------------------------------------


@pytest.mark.parametrize("one_node", [False, True])
def test_on_one_node_nothing_starts_beside_a_waiting_head(one_node):
    from balancer.sim.cluster import Cluster

    # 100 CPUs: a 90-CPU job runs to 100 (request 200); a 95-CPU head waits for it; 10 CPUs idle.
    c = Cluster(100, [0, 1, 2], [100, 50, 50], [200, 200, 300], [90, 95, 5], step_s=10.0, one_node=one_node)
    c.advance_to(5.0)
    # The 5-CPU job (request 300) ends after the head's reservation (200, the 90-CPU job's planned
    # end) but fits beside the head then (100 - 95 = 5 spare): EASY on CPUs backfills it at once, a
    # whole-node reservation does not.
    assert (c.start[2] == 2.0) is (not one_node)
    ours, _ = c.submit_job(5, 1000.0, preemptible=True)  # a preemptible job is held the same way
    assert (c.start[ours] == 5.0) is (not one_node)
    c.advance_to(101.0)
    assert c.start[1] == 100.0  # the head starts when the node is free either way
    if one_node:  # beside the head once it runs; ours finds no CPU left
        assert c.start[2] == 100.0 and math.isnan(c.start[ours])


def test_the_cold_view_can_be_none_as_live():
    from balancer.sim.campaign import lognormal
    from balancer.sim.config import SimConfig
    from balancer.sim.forecasts import Learned
    from balancer.sim.loop import Loop

    t = trace([0, 10], [50, 50], [60, 60], [4, 4], max_procs=10)
    r = Replay(t, [20.0], step_s=10.0)
    for cold, want in ((True, "observed"), (False, None)):
        c = r.snapshots[20.0].clone()
        cfg = SimConfig(max_servers=2, step_s=10.0, observe_cold=cold)
        loop = Loop(c, 20.0, lognormal(2, 5.0), cfg, "harvest")
        view = loop._view(Learned(cfg.forecaster, 10.0, 10, t.unix_start, c.procs), 20.0)
        assert (view.source if view is not None else None) == want
