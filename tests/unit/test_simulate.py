"""The simulator: exact EASY backfilling on a hand-made trace, and the four policies on the KTH trace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from balancer.capacity.swf import read_swf
from balancer.cli.simulate import main
from balancer.sim.campaign import lognormal
from balancer.sim.cluster import Cluster
from balancer.sim.replay import Replay
from balancer.sim.report import metrics, table
from balancer.sim.run import POLICIES, SimConfig, simulate

KTH = Path(__file__).resolve().parents[3] / "shared/data/traces/KTH-SP2-1996-2.1-cln.swf.gz"
needs_kth = pytest.mark.skipif(not KTH.exists(), reason=f"KTH SP2 trace not found at {KTH} (shared data)")


def swf(tmp_path: Path, jobs: list[tuple[int, int, int, int]], procs: int = 4) -> Path:
    """An SWF file of (submit, procs, run, requested time) jobs."""
    lines = [f"; MaxProcs: {procs}", "; UnixStartTime: 0"]
    for i, (sub, p, run, req) in enumerate(jobs, 1):
        lines.append(f"{i} {sub} -1 {run} {p} -1 -1 {p} {req} -1 1 1 1 1 1 1 -1 -1")
    path = tmp_path / "tiny.swf"
    path.write_text("\n".join(lines) + "\n")
    return path


def starts_of(path: Path, overrun: str = "extend") -> list[float]:
    c = Cluster.from_trace(read_swf(path), overrun=overrun)
    while c.next_time() < math.inf:
        c.step()
    return c.start


def test_easy_backfills_only_what_does_not_delay_the_head(tmp_path):
    # 4 CPUs. A holds 2 until 100; B needs all 4 and gets the reservation at 100. C (1 CPU, asks
    # 50 s) ends before 100 and backfills; D (1 CPU, asks 500 s) would end after it and there is no
    # spare CPU at 100, so it waits although a CPU is free; E (asks 90 s) backfills past D.
    path = swf(tmp_path, [(0, 2, 100, 100), (1, 4, 50, 50), (2, 1, 30, 50), (3, 1, 10, 500), (4, 1, 90, 90)])
    assert starts_of(path) == [0, 100, 2, 150, 4]


def test_backfill_may_use_cpus_the_head_does_not_need(tmp_path):
    # 4 CPUs. A holds 3 until 100; B needs 2: reserved at 100, when 4 are free, 2 to spare. C (1 CPU,
    # asks 1000 s) ends long after 100 but uses a spare CPU, so it starts at once.
    path = swf(tmp_path, [(0, 3, 100, 100), (1, 2, 10, 10), (2, 1, 1000, 1000)])
    assert starts_of(path) == [0, 100, 2]


def test_a_job_past_its_request_runs_its_recorded_time_or_is_capped(tmp_path):
    path = swf(tmp_path, [(0, 4, 500, 100), (0, 4, 10, 10)])  # ran 500 s but asked for 100
    assert starts_of(path) == [0, 500]
    assert starts_of(path, "cap") == [0, 100]


def test_our_jobs_queue_backfill_and_die_at_their_time_limit(tmp_path):
    c = Cluster.from_trace(read_swf(swf(tmp_path, [(0, 3, 100, 100), (1, 4, 50, 50)])))
    c.advance_to(10.0)
    assert c.expected_wait(1, 50) == 0.0  # ends before the head's reservation at 100
    assert c.expected_wait(1, 200) == 140.0  # after the head ran (100 .. 150)
    long_job, evs = c.submit_job(1, 200)
    assert evs == [] and c.queue[-1] == long_job  # may not delay the head: it waits
    short, evs = c.submit_job(1, 50)
    assert [(e.job, e.started) for e in evs] == [(short, True)]
    c.cancel(long_job)
    assert long_job not in c.queue
    evs = c.advance_to(1000.0)
    assert [(e.job, e.t, e.killed) for e in evs] == [(short, 60.0, True)]  # killed at its limit


@pytest.fixture(scope="module")
def kth():
    if not KTH.exists():
        pytest.skip(f"KTH SP2 trace not found at {KTH} (shared data)")
    trace = read_swf(KTH)
    # Campaign starts in busy and quiet periods: a weekday, a weekend night, a weekday night.
    starts = [30 * 86400 + 10 * 3600, 47 * 86400 + 2 * 3600, 150 * 86400 + 22 * 3600]
    return Replay(trace, starts)


CAMPAIGN = lognormal(3000, 120.0, seed=3)
CFG = SimConfig(max_servers=16)


@needs_kth
def test_no_policy_beats_the_dedicated_bound_or_exceeds_max_servers(kth):
    from balancer.sim.yardsticks import figures

    for start in kth.snapshots:
        for p in POLICIES:
            f = figures(simulate(kth, start, CAMPAIGN, p, CFG), kth)
            assert math.isfinite(f["makespan_h"]) and f["makespan_D"] >= 1.0, (start, p, f)
            assert f["held_max"] <= CFG.max_servers and f["serving_max"] <= CFG.max_servers, (start, p)
            assert f["calls_missing"] == 0


@needs_kth
def test_the_forecast_aware_policy_submits_no_more_than_admitted(kth):
    cfg = SimConfig(max_servers=16)
    for start in kth.snapshots:
        r = simulate(kth, start, CAMPAIGN, "forecast", cfg)
        tl = r.timeline
        # Every tick: pending beyond what admission allows now never exceeds the backlog.
        assert r.beyond_max <= cfg.backlog
        assert np.all(tl["pending"] - tl["admitted"] <= cfg.backlog)
        assert r.pending_max <= cfg.max_servers


@needs_kth
def test_results_are_deterministic(kth):
    start = next(iter(kth.snapshots))
    a = [metrics(simulate(kth, start, CAMPAIGN, p, CFG), kth) for p in POLICIES]
    b = [metrics(simulate(kth, start, CAMPAIGN, p, CFG), kth) for p in POLICIES]
    assert a == b
    assert lognormal(100, 60.0, seed=7).compute.tolist() == lognormal(100, 60.0, seed=7).compute.tolist()
    text = table(dict(zip(POLICIES, a, strict=True)))
    assert "campaign makespan (h)" in text and "hybrid" in text and "makespan / H" in text


@needs_kth
def test_cli_prints_the_metrics_per_policy_and_plots(tmp_path, capsys):
    png = tmp_path / "sim.png"
    argv = [
        "simulate",
        "--trace",
        str(KTH),
        "--start-day",
        "40",
        "--calls",
        "500",
        "--max-servers",
        "8",
        "--time-limit",
        "1h",
        "--json",
        "--plot",
        str(png),
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["policies"]) == set(POLICIES)
    assert out["policies"]["harvest"]["makespan_h"] > 0
    assert out["policies"]["demand"]["beyond_admission_max"] <= 2
    assert out["overrun_cpu_h"] > 0
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--trace", "/nonexistent.swf"], "cannot read"),
        (["--time-limit", "soon"], "--time-limit"),
        (["--policies", "demand,psychic"], "psychic"),
        (["--forecaster", "crystal-ball"], "crystal-ball"),
        (["--calls", "0"], "--calls"),
        (["--start", "yesterday"], "--start"),
        (["--start-day", "9999"], "outside the trace"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, says):
    trace = swf(tmp_path, [(0, 2, 100, 100), (50, 1, 10, 10)])
    argv = ["simulate", "--trace", str(trace), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("balancer: error: ") and err.count("\n") == 1 and says in err


def test_cli_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--trace", "x", "--bogus"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("balancer: error: ")


# -- the replace-ahead rule the simulator motivated (balancer/policy/rules.py) ------------------------------


def _decide(servers, fv, waiting=100, max_servers=4):
    from balancer.config.schema import ForecastRules
    from balancer.policy.decide import decide
    from balancer.policy.types import Limits, Observed, SpecLimits, SpecObserved

    lim = SpecLimits("m", max_servers=max_servers, backlog=2, startup_timeout_s=3600, max_time_limit_s=14400)
    limits = Limits((lim,), 60.0, ForecastRules(policy="forecast"))
    return decide(limits, Observed({"m": SpecObserved(servers=servers, waiting=waiting)}, fv), 1000.0)


def test_with_a_forecast_successors_queue_ahead_only_within_max_servers():
    from balancer.policy.types import Drain, ForecastView, Start
    from tests.unit.test_policy import V

    fv = ForecastView(900.0, (8.0, 8.0))
    # Four busy servers of at most four, their jobs ending in 5 min (margin 60 s): every server not
    # stopping counts toward max_servers (issue 20), so a full pool queues no successor.
    full = [V(f"r{i}", outstanding=1, deadline_m=1300.0) for i in range(4)]
    assert _decide(full, fv) == []
    # Two such servers: their successors queue now, named in ``replaces``, while they still serve.
    half = full[:2]
    (a,) = _decide(half, fv)
    assert isinstance(a, Start) and a.count == 2 and set(a.replaces) == {"r0", "r1"}
    (b,) = _decide(half, None)  # without a forecast: demand starts, replacing nothing yet
    assert isinstance(b, Start) and b.replaces == ()
    # Successors ready beside replaced servers: the replaced ones drain, back to max_servers.
    old = [V(f"o{i}", outstanding=1, deadline_m=1300.0, replaced=True) for i in range(4)]
    new = [V(f"n{i}", outstanding=0, deadline_m=15000.0) for i in range(2)]
    drains = [x.server for x in _decide(old + new, fv, waiting=0) if isinstance(x, Drain)]
    assert drains == ["o0", "o1"]
