"""One job state for every backend, and each scheduler's native states mapped onto it by a table.

The pool never sees a scheduler's own vocabulary: SLURM's ``squeue`` codes, HyperQueue's task
counters and a local launcher's exit status all become ``JobState`` here, so "did the job fail, end
or just wait?" is answered in one place per scheduler, as data a test can read (Parsl keeps one
such table per provider). A native state missing from a table is ``UNKNOWN``: it waits, like a
pending job, rather than ending a server on a word nobody mapped.
"""

from __future__ import annotations

import enum
import signal


class JobState(enum.Enum):
    """One job's state, whatever the scheduler."""

    PENDING = "pending"  # queued, may still start
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"  # ended by the scheduler for another job: a lost server, not a failed start
    HELD = "held"  # suspended, requeued, ...: waits, neither running nor ended
    UNKNOWN = "unknown"


TERMINAL = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.PREEMPTED}
)

#: SLURM's job states (``squeue -o %T``; ``sacct`` adds a few) -> JobState.
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SUSPENDED": JobState.HELD,
    "REQUEUED": JobState.HELD,
    "REQUEUE_HOLD": JobState.HELD,
    "RESIZING": JobState.HELD,
    "COMPLETED": JobState.COMPLETED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "FAILED": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "PREEMPTED": JobState.PREEMPTED,  # PreemptMode=CANCEL (REQUEUE shows REQUEUED; we submit --no-requeue)
    "REVOKED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
}

#: HyperQueue's Python API reports per job only (completed, failed) counters, not a state name; with
#: whether our launcher has written its pid (the task runs) and whether we asked for a cancel, that
#: is the native state: (known to HQ, completed, failed, started, cancelling) -> JobState.
HQ_STATES: dict[tuple[bool, bool, bool, bool, bool], JobState] = {}
for _started in (False, True):
    for _cancelling in (False, True):
        HQ_STATES[(False, False, False, _started, _cancelling)] = JobState.FAILED  # vanished from HQ
        HQ_STATES[(True, False, False, _started, _cancelling)] = (
            JobState.RUNNING if _started else JobState.PENDING
        )
        HQ_STATES[(True, True, False, _started, _cancelling)] = (
            JobState.CANCELLED if _cancelling else JobState.COMPLETED
        )
        HQ_STATES[(True, True, True, _started, _cancelling)] = (
            JobState.CANCELLED if _cancelling else JobState.FAILED
        )


def hq_state(status: dict[str, object] | None, started: bool, cancelling: bool) -> JobState:
    """A HyperQueue job's state from its status counters (``None``: HQ does not know the job)."""
    if status is None:
        return HQ_STATES[(False, False, False, started, cancelling)]
    key = (True, bool(status.get("completed")), bool(status.get("failed")), started, cancelling)
    return HQ_STATES.get(key, JobState.UNKNOWN)


def local_state(returncode: int | None, cancelled: bool = False) -> JobState:
    """A local launcher's state from its exit status: running while it has none, completed on 0, failed
    otherwise, cancelled when we ended it (SIGTERM/SIGKILL after our cancel)."""
    if returncode is None:
        return JobState.RUNNING
    if returncode == 0:
        return JobState.COMPLETED
    if cancelled and returncode in (-signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM):
        return JobState.CANCELLED
    return JobState.FAILED
