"""The simulated cluster's job states and the events it reports about our own jobs."""

from __future__ import annotations

from dataclasses import dataclass

PENDING, RUNNING, DONE = 0, 1, 2
OURS_USER = -2  # our jobs' user (SWF's unknown user is -1)


@dataclass(frozen=True)
class JobEvent:
    """One of our jobs started or ended. ``killed``: it ran into its time limit; ``preempted``: a
    normal job took its CPUs (``notice``: the grace time starts now; the event without ``notice``
    is its end, at once after the notice when there is no grace time)."""

    job: int
    t: float
    started: bool
    killed: bool = False
    preempted: bool = False
    notice: bool = False
