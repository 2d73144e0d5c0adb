"""The SLURM test cluster itself (tests/slurm): jobs run, share the two CPUs, and scancel ends them."""

from __future__ import annotations

import os
import subprocess
import time

from tests.slurm import fixture as slurm_fixture
from tests.slurm.fixture import BASH, CLUSTER_SH, FINISHED, SlurmCluster, pid_alive, wait_until

# The fixtures, without importing their names (tests/conftest.py may also provide them).
slurm_cluster = slurm_fixture.slurm_cluster
slurm = slurm_fixture.slurm


def test_job_runs_and_writes_its_output(slurm: SlurmCluster):
    out = slurm.dir / "jobs" / "hello.out"
    job = slurm.sbatch(f"--output={out}", wrap='echo "hello from $SLURM_JOB_ID on $SLURM_JOB_NODELIST"')
    assert slurm.wait_state(job, FINISHED, timeout=20) in ("COMPLETED", "")
    text = wait_until(lambda: out.exists() and out.read_text(), timeout=5, what="job output")
    assert text.startswith(f"hello from {job} on ")
    # The client environment and the exec helper agree on the configuration.
    assert (slurm.dir / "env.sh").read_text().strip() == f"export SLURM_CONF={slurm.conf}"
    res = subprocess.run(
        [BASH, str(CLUSTER_SH), "exec", str(slurm.dir), "squeue", "-h", "-t", "all", "-j", job, "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() in ("COMPLETED", "")


def test_two_one_cpu_jobs_run_concurrently_third_waits(slurm: SlurmCluster):
    a = slurm.sbatch("--cpus-per-task=1", wrap="sleep 60")
    b = slurm.sbatch("--cpus-per-task=1", wrap="sleep 60")
    assert slurm.wait_state(a, {"RUNNING"}, timeout=20) == "RUNNING"
    assert slurm.wait_state(b, {"RUNNING"}, timeout=20) == "RUNNING"
    c = slurm.sbatch("--cpus-per-task=1", wrap="sleep 60")
    time.sleep(1.5)  # more than one scheduling tick: c must stay pending while a and b hold both CPUs
    assert slurm.state(c) == "PENDING"
    assert {slurm.state(a), slurm.state(b)} == {"RUNNING"}
    slurm.run(["scancel", a])
    assert slurm.wait_state(c, {"RUNNING"}, timeout=20) == "RUNNING"


def test_scancel_ends_a_running_job_and_its_processes(slurm: SlurmCluster):
    pidfile = slurm.dir / "jobs" / "sleeper.pid"
    job = slurm.sbatch("--output=/dev/null", wrap=f"echo $$ > {pidfile}; exec sleep 300")
    assert slurm.wait_state(job, {"RUNNING"}, timeout=20) == "RUNNING"
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=10, what="pid"))
    assert pid_alive(pid)
    t0 = time.monotonic()
    slurm.run(["scancel", job])
    assert slurm.wait_state(job, FINISHED, timeout=20) in ("CANCELLED", "")
    wait_until(lambda: not pid_alive(pid), timeout=10, what=f"job process {pid} to end")
    wait_until(lambda: slurm.node_state() == "idle", timeout=10, what="node idle after scancel")
    assert time.monotonic() - t0 < 10
    assert os.path.exists(slurm.conf)
