"""One observation of a cluster's capacity, the unit every collector returns and the history stores."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CapacitySample:
    """Capacity of one partition (or worker set, or machine) at one moment.

    ``idle_cpus`` is what the forecast is about: CPUs a new job of ours could start on now.
    Counts a source does not know are ``None``; ``expected_wait_s`` is the scheduler's own
    estimate of how long a job of our size would wait (``squeue --start``), when it gives one.
    """

    t: float  # epoch seconds
    source: str  # "slurm", "hyperqueue", "local", or an import: "swf", "sacct"
    partition: str  # partition / queue / "" for the whole machine
    total_cpus: float
    idle_cpus: float
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
