"""Cluster-aware scaling on the real one-node SLURM cluster: other users' jobs fill the node, the
history says it stays full, and the balancer keeps one job in the queue instead of its backlog;
switched off (``balancer forecast disable``), it scales as it always did. And our own jobs filling
the node are capacity for us, not a full cluster: the pool does not shrink itself (issue 20)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import umbridge

from balancer.capacity.history import History
from balancer.capacity.sample import CapacitySample
from balancer.policy.types import StopReason
from tests.helpers import ROOT, test_model_spec, wait_until
from tests.slurm.fixture import SlurmCluster

pytestmark = pytest.mark.timeout(120)


def _ours(slurm: SlurmCluster, others: set[str]) -> list[tuple[str, str]]:
    out = slurm.run(["squeue", "-h", "-r", "-o", "%i %T"]).stdout.split("\n")  # -r: one line per array task
    rows = [tuple(line.split()) for line in out if line.strip()]
    return [(j, st) for j, st in rows if j.split("_")[0] not in others]  # type: ignore[misc]


def _cli(*args: str, run_dir) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "balancer.cli", "forecast", *args, "--run-dir", str(run_dir)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_full_cluster_gets_one_pending_job_and_disabled_means_demand_only(start_balancer, slurm, tmp_path):
    # Two days of history in which the node (2 CPUs) was always full: the forecast says it stays so.
    hist = tmp_path / "capacity.sqlite"
    now = time.time()
    with History(hist) as h:
        h.add([CapacitySample(now - k * 900, "slurm", "debug", 2, 0) for k in range(1, 193)])
    others = {slurm.sbatch("--cpus-per-task=1", "--output=/dev/null", wrap="sleep 300") for _ in range(2)}
    for j in others:
        slurm.wait_state(j, {"RUNNING"}, timeout=20)
    forecast = {
        "history": str(hist),
        "collect_interval_s": 1.0,
        "min_history_s": 86400.0,
        "policy": "forecast",
    }
    spec = test_model_spec(min_servers=4, max_servers=4, backlog=4)
    b = start_balancer(
        [spec], env=slurm.env, scheduler="slurm", host="127.0.0.1", tables={"forecast": forecast}
    )
    status = _cli("status", "--json", run_dir=b.run_dir)
    assert status.returncode == 0, status.stderr
    assert '"in_use": true' in status.stdout
    wait_until(lambda: _ours(slurm, others), 20, what="a first job of ours")
    # Three more capacity samples (3 s) and scaler passes: still one pending job, not the backlog of 4.
    n = len(b.events("capacity.sample"))
    wait_until(lambda: len(b.events("capacity.sample")) >= n + 3 or b._died(), 20, what="3 more samples")
    assert len(_ours(slurm, others)) == 1
    sample = b.events("capacity.sample")[-1]
    assert (sample["idle_cpus"], sample["total_cpus"]) == (0, 2)
    assert sample["pending_jobs"] >= 1
    starts = b.events("scale.decision")
    assert [(d["action"], d["count"], d["forecast"], d["admit_cpus"]) for d in starts] == [
        ("start", 1, "forecast", 0)
    ]
    # Switched off: min_servers and the backlog alone, as before this issue.
    off = _cli("disable", run_dir=b.run_dir)
    assert off.returncode == 0 and "disabled" in off.stdout, off.stderr
    wait_until(lambda: len(_ours(slurm, others)) == 4, 20, what="4 jobs of ours")
    b.wait_event("forecast.changed", change="disabled")
    slurm.run(["scancel", *others])
    wait_until(lambda: len(b.events("server.ready")) >= 2 or b._died(), 60, what="2 servers ready")
    assert b.stop() == 0  # before the cluster's own clean-up: a live pool would replace what it cancels
    assert _ours(slurm, others) == []


def test_our_own_jobs_holding_the_node_are_capacity_not_a_full_cluster(start_balancer, slurm, tmp_path):
    """Issue 20 on the real cluster: a burst from the official client fills the node (2 CPUs) with
    our two server jobs. sinfo then says 0 idle, but the collected capacity counts our jobs in
    (idle + ours = 2), the forecast view holds what we hold, and no idle server is stopped because
    "the cluster fills up" (polite after 1 s idle, no cool-down). History: two idle days."""
    hist = tmp_path / "capacity.sqlite"
    now = time.time()
    with History(hist) as h:
        h.add([CapacitySample(now - k * 900, "slurm", "debug", 2, 2) for k in range(1, 193)])
    forecast = {"history": str(hist), "collect_interval_s": 1.0, "min_history_s": 86400.0,
                "policy": "forecast", "polite_idle_s": 1.0, "cooldown": False}  # fmt: skip
    spec = test_model_spec(models=["forward"], min_servers=0, max_servers=2, backlog=2, idle_timeout_s=600,
                           env={"TEST_DELAY": "200"})  # fmt: skip
    b = start_balancer(
        [spec], env=slurm.env, scheduler="slurm", host="127.0.0.1", tables={"forecast": forecast}
    )
    model = umbridge.HTTPModel(b.url, "forward")
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda i: model([[float(i)]]), range(24)))
    assert outs == [[[2.0 * i]] for i in range(24)]
    wait_until(lambda: len(b.events("server.ready")) >= 2 or b._died(), 60, what="2 servers ready")
    wait_until(
        lambda: [st for _, st in _ours(slurm, set())] == ["RUNNING"] * 2, 20, what="our 2 jobs running"
    )
    seen = len(b.events("capacity.sample"))
    wait_until(lambda: len(b.events("capacity.sample")) >= seen + 3 or b._died(), 30, what="3 more samples")
    full = [e for e in b.events("capacity.sample") if e["ours_cpus"] == 2]
    assert full, "no sample was taken while our jobs held the node"
    assert all((e["idle_cpus"], e["capacity_cpus"], e["total_cpus"]) == (0, 2, 2) for e in full), full
    status = _cli("status", "--json", run_dir=b.run_dir)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["in_use"] and doc["held_cpus"] == 2 and doc["next"]["idle"][0] == 2
    polite = [e for e in b.events() if e.get("reason") == StopReason.POLITE.value]
    assert polite == [], polite
    assert not b.events("server.stopping") and len(_ours(slurm, set())) == 2
    assert b.stop() == 0
    assert _ours(slurm, set()) == []
