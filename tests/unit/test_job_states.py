"""The one job-state table: every backend's native states map onto ``JobState`` the same way."""

import itertools
import signal

from balancer.backends.batch.slurm import SlurmBackend
from balancer.backends.states import HQ_STATES, SLURM_STATES, TERMINAL, JobState, hq_state, local_state


def test_slurm_backend_reads_the_shared_table():
    assert SlurmBackend.STATES is SLURM_STATES
    assert SLURM_STATES["REQUEUED"] is JobState.HELD


def test_a_preempted_job_has_its_own_terminal_state():
    """PreemptMode=CANCEL ends a job as PREEMPTED: a lost server, not a failed start (the batch base
    reports ``job_preempted`` then ``job_ended(failed=False)``: test_backend_batch)."""
    assert SLURM_STATES["PREEMPTED"] is JobState.PREEMPTED and JobState.PREEMPTED in TERMINAL
    assert JobState.FAILED in TERMINAL and JobState.HELD not in TERMINAL


def test_hq_table_covers_every_combination_of_its_inputs():
    keys = set(itertools.product((False, True), repeat=5))
    # not observable: counters for a job HQ does not know, or a failed one-task job not yet completed
    observable = {k for k in keys if (k[0] or not (k[1] or k[2])) and (k[1] or not k[2])}
    assert observable <= set(HQ_STATES)


def test_hq_states():
    assert hq_state(None, started=True, cancelling=False) is JobState.FAILED  # vanished
    assert hq_state({"completed": False, "failed": False}, False, False) is JobState.PENDING
    assert hq_state({"completed": False, "failed": False}, True, False) is JobState.RUNNING
    assert hq_state({"completed": True, "failed": False}, True, False) is JobState.COMPLETED
    assert hq_state({"completed": True, "failed": True}, True, False) is JobState.FAILED
    assert hq_state({"completed": True, "failed": True}, True, True) is JobState.CANCELLED


def test_local_states():
    assert local_state(None) is JobState.RUNNING
    assert local_state(0) is JobState.COMPLETED
    assert local_state(1) is JobState.FAILED
    assert local_state(-signal.SIGTERM) is JobState.FAILED  # ended by someone else
    assert local_state(-signal.SIGTERM, cancelled=True) is JobState.CANCELLED
    assert {local_state(c) for c in (0, 1)} <= TERMINAL
