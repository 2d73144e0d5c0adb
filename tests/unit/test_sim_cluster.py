"""The simulated batch cluster: EASY, fair-share priority, the preemptible partition, pending
cancels, jobs that ran past their request, independent snapshots; on hand-made traces whose
schedule can be worked out by hand, and one smoke replay of the real KTH trace."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from balancer.capacity.swf import SwfTrace, read_swf
from balancer.sim.cluster import OURS_USER, PENDING, Cluster, JobEvent
from balancer.sim.replay import Replay

KTH = Path(__file__).resolve().parents[3] / "shared/data/traces/KTH-SP2-1996-2.1-cln.swf.gz"

Job = tuple[float, int, float, float]  # (submit, cpus, run, requested time)


def cluster(jobs: list[Job], procs: int = 4, users: list[int] | None = None, **kw) -> Cluster:
    sub, cpus, run, req = zip(*jobs, strict=True) if jobs else ((), (), (), ())
    return Cluster(procs, sub, run, req, cpus, users=users, **kw)


def trace(jobs: list[Job], procs: int = 4) -> SwfTrace:
    a = np.asarray(jobs, dtype=np.float64)
    n = len(jobs)
    cols = {
        "id": np.arange(1.0, n + 1),
        "submit": a[:, 0],
        "wait": np.full(n, -1.0),
        "run": a[:, 2],
        "procs": a[:, 1],
        "req_procs": a[:, 1],
        "req_time": a[:, 3],
        "status": np.ones(n),
        "user": np.ones(n),
    }
    return SwfTrace("tiny.swf", procs, 0.0, 0.0, cols)


def run_out(c: Cluster) -> list[JobEvent]:
    out: list[JobEvent] = []
    while c.next_time() < math.inf:
        out += c.step()
    return out


def busy_cpu_s(c: Cluster) -> float:
    return sum(c.cpus[j] * (c.end[j] - c.start[j]) for j in range(len(c.start)) if not math.isnan(c.start[j]))


@pytest.mark.parametrize("scheduler", ["easy", "fairshare"])
def test_easy_backfill_by_hand(scheduler):
    # 4 CPUs. A holds 2 until 100; B needs all 4: reserved at 100. C (asks 50 s) ends before 100
    # and backfills; D (asks 500 s) would delay B and waits; E (asks 90 s) backfills past D.
    # One user: fair-share orders by age alone, i.e. first come first served, the same schedule.
    c = cluster(
        [(0, 2, 100, 100), (1, 4, 50, 50), (2, 1, 30, 50), (3, 1, 10, 500), (4, 1, 90, 90)],
        scheduler=scheduler,
    )
    run_out(c)
    assert c.start == [0, 100, 2, 150, 4]


def test_cancelling_a_pending_job_lets_the_next_start_at_once():
    c = cluster([(0, 2, 100, 100)])
    c.advance_to(10.0)
    head, evs = c.submit_job(4, 1000)  # reserved at 100
    behind, evs2 = c.submit_job(1, 500)  # ends after 100 with no CPU to spare then: waits
    assert evs == evs2 == [] and c.queue == [head, behind]
    c.advance_to(20.0)
    assert c.cancel(head) == [JobEvent(behind, 20.0, True)]
    assert c.state[head] != PENDING and c.end[head] == 20.0 and c.queue == []


def test_fairshare_puts_a_heavy_users_job_after_a_light_users_later_one():
    # User 1 fills the machine until 10,000 s; then its next job (submitted at 100) and user 2's
    # (submitted at 200) compete for it. FCFS: user 1 first. Fair-share: user 1's usage is all
    # the usage, so user 2 (none) goes first although it came later.
    jobs: list[Job] = [(0, 4, 10_000, 10_000), (100, 4, 100, 100), (200, 4, 100, 100)]
    starts = {}
    for scheduler in ("easy", "fairshare"):
        c = cluster(jobs, users=[1, 1, 2], scheduler=scheduler)
        run_out(c)
        starts[scheduler] = c.start[1:]
    assert starts["easy"] == [10_000, 10_100]
    assert starts["fairshare"] == [10_100, 10_000]


@pytest.mark.parametrize("scheduler, ours_first", [("easy", True), ("fairshare", False)])
def test_our_own_usage_lowers_our_priority(scheduler, ours_first):
    c = cluster([(500, 4, 100, 100)], users=[5], scheduler=scheduler)
    first, _ = c.submit_job(4, 1000)  # runs 0 .. 1000: all the usage so far is ours
    c.advance_to(400.0)
    second, _ = c.submit_job(4, 1000)  # queued before the trace job (submitted at 500)
    evs = c.advance_to(1000.0)
    assert evs == [JobEvent(first, 1000.0, False, killed=True)] + (
        [JobEvent(second, 1000.0, True)] if ours_first else []
    )
    assert c.users[second] == OURS_USER and (c.start[0] == 1000.0) != ours_first


def test_fairshare_usage_decays_with_a_week_half_life():
    c = cluster([(0, 4, 86400.0, 86400.0), (0, 4, 86400.0, 86400.0)], users=[1, 2], scheduler="fairshare")
    run_out(c)  # user 1 ran on day 0, user 2 on day 1: user 2's usage is the more recent
    fs = c.fs
    assert fs is not None
    u1, u2 = fs.usage(1, c.now), fs.usage(2, c.now)
    assert u1 + u2 == pytest.approx(1.0)
    assert u2 / u1 == pytest.approx(2 ** (1 / 7), rel=1e-9)  # one day of a 7-day half-life apart


def test_a_preemptible_job_harvests_leftovers_and_is_preempted_with_grace():
    # 4 CPUs; a trace job holds 2 until 1000. Two preemptible jobs of ours take the other 2; a
    # third waits (no leftover CPUs, no reservation). A 1-CPU trace job at 100 takes the newest
    # one's CPU: notice at 100, end at 160, and the trace job starts exactly then.
    c = cluster([(0, 2, 1000, 1000), (100, 1, 50, 50)], preempt_grace_s=60.0)
    c.advance_to(10.0)
    assert c.expected_wait(1, 3600, preemptible=True) == 0.0
    p1, e1 = c.submit_job(1, 3600, preemptible=True)
    p2, e2 = c.submit_job(1, 3600, preemptible=True)
    p3, e3 = c.submit_job(1, 3600, preemptible=True)
    assert e1 == [JobEvent(p1, 10.0, True)] and e2 == [JobEvent(p2, 10.0, True)] and e3 == []
    assert c.expected_wait(1, 3600, preemptible=True) == math.inf
    assert c.expected_wait(1, 50) == 60.0  # a normal job could start, after the grace time
    assert c.step() == [JobEvent(p2, 100.0, False, preempted=True, notice=True)]
    assert c.claimed == 0 and c.state[1] == PENDING  # the trace job waits for the grace time
    assert c.step() == [JobEvent(p2, 160.0, False, preempted=True)]
    assert c.start[1] == 160.0 and c.end[p2] == 160.0 and c.state[p1] != PENDING
    # The trace job ends at 210: its CPU is left over again and the waiting preemptible job starts.
    assert c.step() == [JobEvent(p3, 210.0, True)]
    assert c.n_preempted == 1
    c.cancel(p1)
    c.cancel(p3)
    # Our preemptible CPU-seconds: p1 10..210, p2 10..160, p3 210..210.
    assert sum(c.ours_pre_area) == pytest.approx(200 + 150) and sum(c.ours_area) == pytest.approx(350)


def test_preemption_takes_the_newest_and_as_few_as_needed():
    c = cluster([(0, 1, 1000, 1000), (100, 2, 50, 50)], preempt_grace_s=30.0)
    c.advance_to(10.0)
    old, _ = c.submit_job(1, 3600, preemptible=True)
    c.advance_to(20.0)
    new, _ = c.submit_job(1, 3600, preemptible=True)
    # At 100 the trace job needs 2: the one free CPU and the newest job's; the older one stays.
    assert c.step() == [JobEvent(new, 100.0, False, preempted=True, notice=True)]
    assert c.step() == [JobEvent(new, 130.0, False, preempted=True)]
    assert c.start[1] == 130.0 and c.state[old] != PENDING and math.isnan(c.end[old])


def test_a_preempted_job_that_ends_early_lets_the_waiting_job_start_then():
    c = cluster([(0, 3, 1000, 1000), (100, 1, 50, 50)], preempt_grace_s=60.0)
    c.advance_to(10.0)
    p, _ = c.submit_job(1, 3600, preemptible=True)
    assert c.step() == [JobEvent(p, 100.0, False, preempted=True, notice=True)]
    c.advance_to(120.0)
    assert c.cancel(p) == []  # our server handed back its job on the notice
    assert c.start[1] == 120.0 and c.free == 0 and c.claimed == 0
    assert run_out(c) == []  # its stale grace end is ignored


def test_a_normal_job_of_ours_preempts_harvest_and_a_pending_preemptible_job_can_be_cancelled():
    c = cluster([(0, 2, 1000, 1000)])
    c.advance_to(10.0)
    pre, _ = c.submit_job(2, 3600, preemptible=True)
    waiting, _ = c.submit_job(1, 3600, preemptible=True)
    assert waiting in c.pre_queue
    assert c.cancel(waiting) == [] and c.pre_queue == []
    normal, evs = c.submit_job(1, 3600)
    assert evs == [JobEvent(pre, 10.0, False, preempted=True, notice=True)]
    assert c.state[normal] == PENDING and normal in c.claims
    assert c.cancel(normal) == []  # cancelled while waiting: its claim is released
    assert c.claims == {} and c.claimed == 0 and c.state[normal] != PENDING
    assert c.advance_to(100.0) == [JobEvent(pre, 70.0, False, preempted=True)]
    assert c.free == 2


def test_overrun_cap_and_extend():
    # A ran 500 s but asked for 100 (400 s x 2 CPUs past its request); B asks 10 s for all 4
    # and is reserved at A's requested end; under "extend" A's overrun moves it to 500.
    jobs: list[Job] = [(0, 2, 500, 100), (1, 4, 10, 10), (2, 1, 60, 60)]
    tr = trace(jobs)
    got = {}
    for overrun in ("cap", "extend"):
        c = Cluster.from_trace(tr, overrun=overrun)
        run_out(c)
        assert c.overrun_cpu_h == pytest.approx(800 / 3600) and c.overrun_jobs == 1
        assert busy_cpu_s(c) + sum(c.idle_area) == pytest.approx(c.procs * c.now)
        got[overrun] = (c.start, busy_cpu_s(c))
    assert got["cap"][0] == [0, 100, 2]  # C backfills (ends at 62, before 100)
    assert got["extend"][0] == [0, 500, 2]
    assert got["extend"][1] - got["cap"][1] == pytest.approx(800.0)  # exactly what "cap" drops
    r = Replay(tr, [50.0], step_s=100.0, overrun="extend")
    assert r.overrun_cpu_h == pytest.approx(800 / 3600) and r.overrun_jobs == 1
    assert r.run.tolist() == [500, 10, 60] and r.start.tolist() == [0, 500, 2]
    assert r.cpus.tolist() == [2, 4, 1] and r.users.tolist() == [1, 1, 1]
    assert r.idle[:2].tolist() == [pytest.approx(1.4), 2.0]  # slot 0: 4-2-1 until 62, then 2
    assert Replay(tr, []).run.tolist() == [100, 10, 60]  # "cap" is the default
    with pytest.raises(ValueError, match="overrun"):
        Cluster.from_trace(tr, overrun="maybe")


def _script(c: Cluster) -> list:
    """Drive ``c`` through preemption, a claim and cancels; return everything it recorded."""
    evs = c.advance_to(50.0)
    p, e = c.submit_job(1, 500, preemptible=True)
    evs += e
    _, e = c.submit_job(2, 300)
    evs += e
    evs += run_out(c)
    evs += c.cancel(p)
    return [evs, c.start, c.end, c.idle_area, c.ours_pre_area, c.n_preempted, c.fs.usage(OURS_USER, c.now)]


def test_clones_are_independent():
    jobs: list[Job] = [(0, 2, 100, 100), (10, 3, 200, 300), (20, 1, 50, 50), (120, 4, 30, 30)]
    c = cluster(jobs, users=[1, 2, 1, 3], scheduler="fairshare")
    c.advance_to(40.0)
    snap = c.clone()
    reference = _script(cluster(jobs, users=[1, 2, 1, 3], scheduler="fairshare"))
    assert _script(c) == reference
    assert _script(snap) == reference  # the original's run did not touch the snapshot
    # A snapshot taken during a claim: the trace job at 100 holds the free CPU and waits for our
    # preempted job; cancelling that in the clone starts it there, not in the original.
    d = cluster([(0, 1, 1000, 1000), (100, 3, 50, 50)])
    d.advance_to(10.0)
    p, _ = d.submit_job(2, 3600, preemptible=True)
    assert d.step() == [JobEvent(p, 100.0, False, preempted=True, notice=True)]
    e = d.clone()
    assert e.cancel(p) == [] and e.start[1] == 100.0 and e.claims == {}
    assert d.claims[1].jobs == [p] and d.claimed == 1 and math.isnan(d.start[1])
    assert run_out(d) == [JobEvent(p, 160.0, False, preempted=True)] and d.start[1] == 160.0


@pytest.fixture(scope="module")
def kth():
    if not KTH.exists():
        pytest.skip(f"KTH SP2 trace not found at {KTH} (shared data, ../shared/data/traces)")
    return read_swf(KTH)


@pytest.mark.parametrize("scheduler", ["easy", "fairshare"])
def test_a_whole_kth_replay_conserves_cpu_seconds(kth, scheduler):
    c = Cluster.from_trace(kth, scheduler=scheduler)
    run_out(c)
    assert all(not math.isnan(s) for s in c.start) and c.queue == []
    assert busy_cpu_s(c) + sum(c.idle_area) == pytest.approx(c.procs * c.now, rel=1e-9)
    assert c.overrun_jobs == 475 and c.overrun_cpu_h == pytest.approx(1691.5, abs=0.1)


# -- harvesting with no grace time never moves a normal job ------------------------------------


def _random_cluster(rng: np.random.Generator, n: int, procs: int, overrun: str, scheduler: str) -> Cluster:
    sub = np.sort(rng.uniform(0.0, 5000.0, n))
    cpus = rng.integers(1, procs + 1, n)
    req = rng.choice([30.0, 100.0, 300.0, 1000.0], n)
    run = req * rng.uniform(0.2, 2.0, n)  # about half run past their request
    if overrun == "cap":
        run = np.minimum(run, req)
    users = rng.integers(1, 4, n)
    return Cluster(procs, sub, run, req, cpus, users=users, scheduler=scheduler, preempt_grace_s=0.0)


def _harvest(c: Cluster, rng: np.random.Generator, procs: int) -> list[JobEvent]:
    """A stream of our preemptible jobs: submitted at random times, some cancelled at random."""
    evs: list[JobEvent] = []
    mine: list[int] = []
    for t in np.sort(rng.uniform(0.0, 7000.0, 60)):
        evs += c.advance_to(float(t))
        live = [j for j in mine if c.state[j] != 2]
        if live and rng.random() < 0.3:
            evs += c.cancel(live[int(rng.integers(len(live)))])
        else:
            j, e = c.submit_job(
                int(rng.integers(1, procs + 1)), float(rng.uniform(20.0, 3000.0)), preemptible=True
            )
            mine.append(j)
            evs += e
    return evs + run_out(c)


@pytest.mark.parametrize("scheduler", ["easy", "fairshare"])
@pytest.mark.parametrize("overrun", ["extend", "cap"])
def test_preemptible_jobs_with_no_grace_never_move_a_normal_job(overrun, scheduler):
    preempted = 0
    for seed in range(25):
        procs, n = 8, 40
        base = _random_cluster(np.random.default_rng(seed), n, procs, overrun, scheduler)
        run_out(base)
        c = _random_cluster(np.random.default_rng(seed), n, procs, overrun, scheduler)
        evs = _harvest(c, np.random.default_rng(1000 + seed), procs)
        assert c.start[:n] == base.start[:n] and c.end[:n] == base.end[:n], f"seed {seed}"
        if scheduler == "fairshare":  # our usage is ours alone: every trace user's share is as before
            assert c.fs is not None and base.fs is not None
            assert c.fs.active == base.fs.active
            assert [c.fs.usage(u, c.now) for u in (1, 2, 3)] == [base.fs.usage(u, c.now) for u in (1, 2, 3)]
            assert c.fs.usage(OURS_USER, c.now) > 0  # charged to us, though
        # Every notice is followed by the job's end at the same instant.
        notices = [(e.job, e.t) for e in evs if e.notice]
        assert notices == [(e.job, e.t) for e in evs if e.preempted and not e.notice]
        preempted += c.n_preempted
    assert preempted > 50  # the stream did get in the normal jobs' way


LANL = KTH.parent / "LANL-CM5-1994-4.1-cln.swf.gz"


@pytest.mark.parametrize("scheduler", ["easy", "fairshare"])
@pytest.mark.parametrize("overrun", ["extend", "cap"])
def test_harvesting_lanl_with_no_grace_moves_no_trace_job(overrun, scheduler):
    # The slice of LANL CM-5 around the 272.7-day start where a harvest campaign used to start a
    # trace job 6,804 s early (job 52931) under "extend": 2 days before to 3 days after.
    if not LANL.exists():
        pytest.skip(f"LANL CM-5 trace not found at {LANL} (shared data, ../shared/data/traces)")
    from balancer.sim.campaign import lognormal
    from balancer.sim.run import SimConfig, simulate

    tr = _lanl()
    s, day = 272.7 * 86400.0, 86400.0
    keep = (tr.jobs["submit"] >= s - 2 * day) & (tr.jobs["submit"] < s + 3 * day)
    cut = SwfTrace(
        "lanl-slice", tr.max_procs, tr.unix_start, tr.tz_offset_s, {k: v[keep] for k, v in tr.jobs.items()}
    )
    rp = Replay(cut, [s], preempt_grace_s=0.0, overrun=overrun, scheduler=scheduler)
    r = simulate(rp, s, lognormal(400, 120.0, seed=7), "harvest", SimConfig(max_servers=32, cpus=32))
    assert r.preempted > 10 and len(r.harm_jobs) > 700
    assert (r.harm_start == rp.start[r.harm_jobs]).all()


_LANL_CACHE: list[SwfTrace] = []


def _lanl() -> SwfTrace:
    if not _LANL_CACHE:
        _LANL_CACHE.append(read_swf(LANL))
    return _LANL_CACHE[0]
