"""One observation of a cluster's capacity, the unit every collector returns and the history stores."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CapacitySample:
    """Capacity of one partition (or worker set, or machine) at one moment.

    What the forecast is about is ``capacity_cpus`` = ``idle_cpus`` + ``ours_cpus``: the CPUs a
    job of ours could use, the idle ones plus those our own pool's running jobs hold (SLURM: our
    jobs, HyperQueue: our workers' tasks, local: the cores the local backend gave our servers).
    Our own load is not the cluster filling up; counting it as busy would make the pool shrink
    itself. ``idle_cpus`` stays the scheduler's plain idle count. Counts a source does not know are
    ``None``; ``expected_wait_s`` is the scheduler's own
    estimate of how long a job of our size would wait (``squeue --start``), when it gives one.
    """

    t: float  # epoch seconds
    source: str  # "slurm", "hyperqueue", "local", or an import: "swf", "sacct"
    partition: str  # partition / queue / "" for the whole machine
    total_cpus: float
    idle_cpus: float  # idle now, as the scheduler (or the machine) says
    alloc_cpus: float | None = None
    other_cpus: float | None = None  # down, drained, reserved
    total_gpus: float | None = None
    idle_gpus: float | None = None
    pending_jobs: int | None = None  # everybody's pending jobs in this partition
    pending_cpus: float | None = None  # and the CPUs they ask for
    our_pending: int | None = None  # our own pending server jobs
    expected_wait_s: float | None = None
    load: float | None = None  # local: 1-minute load average / CPUs
    mem_used_frac: float | None = None  # local: fraction of memory in use
    workers: int | None = None  # hyperqueue: live workers
    alloc_queues: int | None = None  # hyperqueue: allocation queues (our_pending: their queued allocations)
    ours_cpus: float = 0.0  # CPUs our own pool's running jobs hold here (the monitor stamps it)

    @property
    def capacity_cpus(self) -> float:
        """Idle plus ours, at most the total: what a job of ours could use."""
        return min(self.total_cpus, self.idle_cpus + self.ours_cpus)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
