"""Latency of the SLURM test cluster: lone-job submit-to-start, freed-CPU refill, cold start.

    .venv/bin/python -m tests.slurm.bench_latency [--dir DIR] [--jobs 10] [--refills 5]

Without ``--dir`` it starts (and afterwards stops) its own cluster in a temporary directory; with
``--dir`` it uses the cluster already running there. Each job writes its own start time
(``date +%s.%N``), so the figures do not depend on how often this script polls.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tests.slurm.fixture import FINISHED, SlurmCluster, wait_until


def _start_time(marker: Path, timeout: float = 30.0) -> float:
    text = wait_until(
        lambda: marker.exists() and marker.read_text().strip(), timeout=timeout, what=str(marker)
    )
    return float(str(text))


def lone_jobs(c: SlurmCluster, n: int) -> dict[str, list[float]]:
    """``n`` lone ``sleep 0`` jobs, one after the other, each submitted at a random tick phase."""
    submit_to_start, sbatch_call = [], []
    for i in range(n):
        marker = c.dir / "jobs" / f"lone{i}.start"
        marker.unlink(missing_ok=True)
        time.sleep(random.uniform(0.0, 1.0))  # decorrelate from slurmctld's 1 s tick
        t0 = time.time()
        job = c.sbatch("--output=/dev/null", wrap=f"date +%s.%N > {marker}; sleep 0")
        sbatch_call.append(time.time() - t0)
        submit_to_start.append(_start_time(marker) - t0)
        c.wait_state(job, FINISHED)
        wait_until(lambda: c.node_state() == "idle", timeout=10, what="idle node")
    return {"submit_to_start": submit_to_start, "sbatch_call": sbatch_call}


def refills(c: SlurmCluster, n: int) -> dict[str, list[float]]:
    """Two 1-CPU jobs run, a third waits; cancel one: time until the third starts."""
    to_start, to_running = [], []
    for i in range(n):
        a = c.sbatch("--output=/dev/null", wrap="sleep 300")
        b = c.sbatch("--output=/dev/null", wrap="sleep 300")
        c.wait_state(a, {"RUNNING"})
        c.wait_state(b, {"RUNNING"})
        marker = c.dir / "jobs" / f"refill{i}.start"
        marker.unlink(missing_ok=True)
        third = c.sbatch("--output=/dev/null", wrap=f"date +%s.%N > {marker}; sleep 300")
        time.sleep(random.uniform(1.1, 2.0))
        assert c.state(third) == "PENDING", c.state(third)
        t0 = time.time()
        c.run(["scancel", a])
        c.wait_state(third, {"RUNNING"})
        to_running.append(time.time() - t0)
        to_start.append(_start_time(marker) - t0)
        c.cancel_all()
    return {"cancel_to_job_start": to_start, "cancel_to_squeue_running": to_running}


def srun_calls(c: SlurmCluster, n: int) -> dict[str, list[float]]:
    """Wall time of ``srun true`` (allocation + step), for comparison with batch jobs."""
    times = []
    for _ in range(n):
        t0 = time.time()
        c.run(["srun", "--quiet", "true"])
        times.append(time.time() - t0)
        wait_until(lambda: c.node_state() == "idle", timeout=10, what="idle node")
    return {"srun_true": times}


def _show(name: str, xs: list[float]) -> None:
    print(
        f"{name:28s} n={len(xs):3d}  median {statistics.median(xs) * 1000:7.1f} ms"
        f"  min {min(xs) * 1000:7.1f}  max {max(xs) * 1000:7.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="use the cluster already running in DIR")
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--refills", type=int, default=5)
    ap.add_argument("--sruns", type=int, default=5)
    args = ap.parse_args()
    own = args.dir is None
    if own:
        t0 = time.monotonic()
        c = SlurmCluster.start(Path(tempfile.mkdtemp(prefix="slurm-bench-")))
        print(f"{'cold start':28s} {time.monotonic() - t0:.2f} s ({c.dir})")
    else:
        c = SlurmCluster.attach(args.dir)
    try:
        c.cancel_all()
        for name, xs in {
            **lone_jobs(c, args.jobs),
            **refills(c, args.refills),
            **srun_calls(c, args.sruns),
        }.items():
            _show(name, xs)
    finally:
        if own:
            c.stop()
            shutil.rmtree(c.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
