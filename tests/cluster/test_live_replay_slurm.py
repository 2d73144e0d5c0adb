"""A tiny slice of the KTH SP2 trace replayed live onto the real SLURM test cluster (issue 24):
sleep jobs of the trace's sizes (capped at the cluster's CPUs) submitted at their compressed times,
once alone and once while a campaign runs through a real balancer; the simulator's yardsticks are
computed from what SLURM recorded (``balancer.sim.live``). ``bench/live_replay.py`` is the full
comparison with the simulator; this checks that the parts work together on a real controller."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import umbridge

from balancer.capacity.swf import read_swf
from balancer.sim import live
from balancer.sim.slice import Slice, plan_slice
from balancer.sim.yardsticks import figures
from tests.slurm.fixture import SlurmCluster

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
KTH = ROOT.parent / "shared/data/traces/KTH-SP2-1996-2.1-cln.swf.gz"
POLL_S = 0.25


def _value(text: str, key: str) -> str:
    for line in text.splitlines():
        k, sep, v = line.partition(" = ")
        if sep and k.strip() == key:
            return v.strip()
    raise AssertionError(f"no {key} in scontrol show config")


Calls = tuple[float, float, int]  # first call sent, last answered, answered right


async def _replay(
    sl: Slice, env: dict[str, str], chdir: Path, campaign: Callable[[], Calls] | None = None
) -> tuple[float, dict[int, tuple[str, float]], live.Poller, Calls | None]:
    """The slice (and the campaign at its start, if given); until every trace job started."""
    poller = live.Poller(env, POLL_S, skip_earlier=True)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    t0 = time.time() + 0.5
    calls = None
    if campaign is not None:
        loop = asyncio.get_running_loop()

        async def run() -> Calls:
            await asyncio.sleep(max(0.0, t0 + sl.campaign_start - time.time()))
            return await loop.run_in_executor(None, campaign)

        calls = asyncio.create_task(run())
    ids = await live.replay(sl, env, t0, str(chdir))
    done = await calls if calls is not None else None
    deadline = time.time() + 30
    while time.time() < deadline:
        seen = [poller.seen.get(v[0]) for v in ids.values()]
        if all(s is not None and not (math.isnan(s.started) and math.isnan(s.over)) for s in seen):
            break
        await asyncio.sleep(POLL_S)
    stop.set()
    await task
    return t0, ids, poller, done


def test_a_trace_slice_runs_live_and_its_yardsticks_are_computed(start_balancer, slurm: SlurmCluster):
    if not KTH.exists():
        pytest.skip(f"the KTH SP2 trace is not at {KTH} (../shared/data/traces relative to the repo)")
    cpus = int(slurm.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%c"]).stdout.split()[0])
    jobcomp = _value(slurm.run(["scontrol", "show", "config"]).stdout, "JobCompLoc")
    # Day 15 of KTH SP2, 06:00-12:00, 3600x: four jobs in 6 s, the campaign 2 s in.
    sl = plan_slice(read_swf(KTH), 15 * 86400 + 8 * 3600, 4 * 3600, 3600.0, cpus, 2 * 3600)
    assert 3 <= len(sl) <= 8 and sl.capped >= 1 and sl.cpus.max() <= cpus
    chdir = slurm.dir / "jobs"
    begin = time.time()

    # The slice alone: what harm and harvest are measured against.
    t0, ids, poller, _ = asyncio.run(_replay(sl, slurm.env, chdir))
    slurm.cancel_all()
    jobs = live.records(poller.seen, live.read_jobcomp(jobcomp, poller.seen), POLL_S)
    for i, (jid, _) in ids.items():  # every trace job ran, as planned, in the normal partition
        j = jobs[jid]
        assert j.name == f"trace-{i}" and j.partition == "debug" and j.cpus == sl.cpus[i], j
        assert not math.isnan(j.start) and j.start >= j.submit
        if j.state == "COMPLETED":  # the rest were still running when every job had started
            assert j.end - j.start == pytest.approx(sl.run[i], abs=1.5), (j, sl.run[i])
        else:
            assert j.state == "CANCELLED" and j.end - j.start < sl.run[i] + 1.5, j
    base = live.baseline(sl, jobs, ids, t0, step_s=1.0, grace_s=3.0)
    assert np.isfinite(base.start).all() and (base.idle <= cpus).all()

    # The slice again while a campaign runs through a balancer (demand, one 1-CPU server).
    spec = {
        "name": "waiter",
        "command": [sys.executable, str(ROOT / "models/waiter.py")],
        "models": ["waiter"],
        "max_servers": 1,
        "idle_timeout_s": 1.0,  # the node back to the trace soon after the campaign
        "env": {"WAITER_S": "1"},
        "resources": {"cpus": 1, "time_limit": "00:05:00"},
    }
    b = start_balancer(
        [spec],
        env=slurm.env,
        scheduler="slurm",
        host="127.0.0.1",
        backend={"poll_interval_s": POLL_S, "fast_poll_s": POLL_S},
        tables={"forecast": {"policy": "demand", "collect": False}},
    )
    compute = np.array([1.0, 0.5, 1.5])

    def campaign() -> Calls:
        model = umbridge.HTTPModel(b.url, "waiter")
        t = time.time()
        with ThreadPoolExecutor(len(compute)) as pool:
            out = list(pool.map(lambda x: model([[float(x)]])[0][0], compute))
        return t, time.time(), sum(abs(o - x) < 1.0 for o, x in zip(out, compute, strict=True))

    t0, ids, poller, calls = asyncio.run(_replay(sl, slurm.env, chdir, campaign))
    assert b.stop() == 0
    slurm.cancel_all()
    comp = {k: v for k, v in live.read_jobcomp(jobcomp).items() if v.submit >= begin - 1}
    jobs = live.records(poller.seen, comp, POLL_S)
    assert calls is not None and calls[2] == len(compute)  # every call answered, and right
    camp = live.Campaign(start=calls[0], done=calls[1], compute_s=compute, calls_done=calls[2])
    r = live.live_result("demand", sl, base, jobs, ids, t0, camp, 1, 1, 1.0, 1e9)
    f = figures(r, base)

    assert all(not math.isnan(jobs[jid].start) for jid, _ in ids.values())  # the trace jobs ran again
    ours = [j for j in jobs.values() if not j.name.startswith(live.TRACE_PREFIX)]
    assert ours and all(j.name.startswith("umbridge-waiter") and j.cpus == 1 for j in ours), ours
    assert f["submissions"] == len(ours) >= 1
    assert 0 < f["makespan_h"] * 3600 < 30 and f["makespan_h"] * 3600 >= compute.max()
    assert 0.0 <= f["harvest_fraction"] <= 1.0
    assert math.isfinite(f["harm_cpu_h"]) and 0.0 <= f["harm_delayed"] <= 1.0
    assert f["pending_max"] >= 0 and math.isfinite(f["pending_mean"])
