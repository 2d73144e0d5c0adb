"""Cluster capacity collectors against the real schedulers: SLURM's sinfo/squeue, embedded and binary
HyperQueue (the history, imports and CLI: unit/test_capacity)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from balancer.backends.batch.slurm import SlurmBackend, parse_slurm_time
from balancer.capacity.collect import CollectError
from balancer.capacity.collect_hq import HqCollector
from balancer.capacity.collect_slurm import SlurmCollector
from balancer.capacity.collectors import make_collector
from balancer.capacity.sample import CapacitySample
from balancer.config.parse import parse_config
from tests.helpers import wait_until
from tests.slurm.fixture import SlurmCluster


# -- collectors ------------------------------------------------------------------------------------
def _sinfo_cpus(slurm: SlurmCluster) -> list[float]:
    """allocated/idle/other/total CPUs of the test cluster, as sinfo prints them."""
    a_i_o_t = slurm.run(["sinfo", "-h", "-o", "%C"]).stdout.strip()
    return [float(x) for x in a_i_o_t.split("/")]


def _pending(slurm: SlurmCluster) -> tuple[int, float]:
    cpus = slurm.run(["squeue", "-h", "-r", "-t", "PD", "-o", "%C"]).stdout.split()
    return len(cpus), sum(float(c) for c in cpus)


def test_slurm_collector_matches_sinfo_and_squeue(
    slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    cfg = parse_config(
        {
            "balancer": {"scheduler": "slurm"},
            "servers": [
                {"name": "m", "command": ["true"], "resources": {"cpus": 1, "time_limit": "00:02:00"}}
            ],
        },
        base_dir=tmp_path,
    )
    backend = SlurmBackend(cfg, tmp_path / "run")

    async def main() -> None:
        collector = make_collector(cfg, backend)  # before start: it follows the job names given then
        await backend.start()
        try:
            await check(collector, backend.job_names["m"])
        finally:
            await backend.close()

    async def check(collector: Any, our_name: str) -> None:
        assert isinstance(collector, SlurmCollector) and collector.default_only
        # An idle node: everything free, and the will-run test says a job of ours starts now.
        (idle,) = await collector.sample()
        assert (idle.partition, idle.total_cpus, idle.idle_cpus, idle.alloc_cpus) == ("debug", 2, 2, 0)
        assert idle.pending_jobs == 0 and idle.our_pending == 0
        assert idle.expected_wait_s is not None and idle.expected_wait_s < 5
        # Other users' jobs take both CPUs; one more of theirs and one of ours wait.
        running = [
            slurm.sbatch("-J", "other", "-c", "1", "-t", "5", "--output=/dev/null", wrap="sleep 300")
            for _ in range(2)
        ]
        for job in running:
            slurm.wait_state(job, {"RUNNING"})
        slurm.sbatch("-J", "other", "-c", "2", "-t", "3", "--output=/dev/null", wrap="sleep 300")
        ours = slurm.sbatch("-J", our_name, "-c", "1", "-t", "2", "--output=/dev/null", wrap="sleep 300")
        t0 = time.perf_counter()
        (full,) = await collector.sample()
        took = time.perf_counter() - t0
        a, i, o, t = _sinfo_cpus(slurm)
        assert (
            (full.alloc_cpus, full.idle_cpus, full.other_cpus, full.total_cpus)
            == (a, i, o, t)
            == (2, 0, 0, 2)
        )
        assert (full.pending_jobs, full.pending_cpus) == _pending(slurm) == (2, 3)
        assert full.our_pending == 1
        print(f"slurm collector sample: {took * 1000:.0f} ms")

        # The backfill scheduler's expected start of our job (squeue --start) becomes the wait.
        def our_start() -> float | None:
            return parse_slurm_time(slurm.run(["squeue", "-h", "-j", ours, "-o", "%S"]).stdout)

        before = wait_until(our_start, timeout=60, interval=0.25, what="backfill's expected start of our job")
        (known,) = await collector.sample()
        after = our_start()  # backfill may have run again in between
        assert known.expected_wait_s is not None
        assert any(
            known.expected_wait_s == pytest.approx(max(0.0, t - known.t), abs=1e-3) for t in (before, after)
        )
        assert 0 < known.expected_wait_s <= 600
        # A partition filter, and a partition that does not exist.
        (named,) = await SlurmCollector(partitions=["debug"]).sample()
        assert (named.partition, named.total_cpus, named.pending_jobs) == ("debug", 2, 2)
        with pytest.raises(CollectError, match="no partition"):
            await SlurmCollector(partitions=["nosuch"]).sample()

    asyncio.run(main())


def test_hq_embedded_collector_sees_its_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("hyperqueue")
    from balancer.backends.base import Launch
    from balancer.backends.hyperqueue import backend as hqb
    from balancer.launcher.contract import ENV_SERVER_ID

    monkeypatch.setattr(hqb, "launcher_argv", lambda command, python=None: list(command))
    raw = {
        "balancer": {"scheduler": "hyperqueue"},
        "servers": [{"name": "m", "command": ["sleep", "60"]}],
        "backend": {"workers": 1, "cpus_per_worker": 2, "poll_interval_s": 0.05},
    }
    cfg = parse_config(raw, base_dir=tmp_path)
    be = hqb.HyperQueueBackend(cfg, tmp_path / "run")
    started: set[str] = set()
    be.bind(
        type(
            "Ev",
            (),
            {
                "job_started": lambda self, sid, job, host: started.add(sid),
                "job_ended": lambda self, *a: None,
                "job_deadline": lambda self, *a: None,
            },
        )()
    )

    async def main() -> list[CapacitySample]:
        collector = make_collector(cfg, be)  # as the app does: before the backend starts
        with pytest.raises(CollectError, match="not started"):
            await collector.sample()
        await be.start()
        try:
            got = await collector.sample()
            launches = [
                Launch(f"s{i}", cfg.servers[0], {ENV_SERVER_ID: f"s{i}"}, be.run_dir / "logs")
                for i in range(3)
            ]
            await be.submit(launches)
            await until_async(lambda: len(started) == 2)
            return got + await collector.sample()
        finally:
            await be.close()

    empty, busy = asyncio.run(main())
    assert (empty.total_cpus, empty.idle_cpus, empty.pending_jobs, empty.workers) == (2, 2, 0, 1)
    assert (busy.total_cpus, busy.idle_cpus, busy.alloc_cpus, busy.pending_jobs) == (2, 0, 2, 1)


async def until_async(pred: Any, timeout: float = 20.0) -> None:
    await asyncio.to_thread(wait_until, pred, timeout)


@pytest.mark.skipif(shutil.which("hq") is None, reason="the hq binary is not on PATH (HPC users download it)")
def test_hq_binary_collector_lists_workers_and_tasks(tmp_path: Path):
    hq = shutil.which("hq") or "hq"
    d = str(tmp_path / "hq")
    procs = [
        subprocess.Popen(
            [hq, "--server-dir", d, "server", "start"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    ]
    try:
        wait_until(
            lambda: (
                subprocess.run([hq, "--server-dir", d, "server", "info"], capture_output=True).returncode == 0
            ),
            30,
            0.1,
            "hq server",
        )
        procs.append(
            subprocess.Popen(
                [hq, "--server-dir", d, "worker", "start", "--cpus", "2"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for _ in range(3):
            subprocess.run(
                [hq, "--server-dir", d, "submit", "--cpus", "1", "--", "sleep", "60"],
                check=True,
                capture_output=True,
            )
        collector = HqCollector(d, hq)

        def full() -> CapacitySample | None:
            (s,) = asyncio.run(collector.sample())
            return s if s.pending_jobs == 1 and s.idle_cpus == 0 else None

        s = wait_until(full, 30, 0.1, "two tasks running, one waiting")
        assert (s.workers, s.total_cpus, s.alloc_cpus, s.alloc_queues, s.our_pending) == (1, 2, 2, 0, 0)
    finally:
        subprocess.run([hq, "--server-dir", d, "server", "stop"], capture_output=True, timeout=30)
        for p in procs:
            p.kill()
            p.wait()
