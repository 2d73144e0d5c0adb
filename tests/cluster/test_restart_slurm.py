"""A balancer restarted with the same run directory within the lease takes its SLURM jobs back:
their launchers register again, the backend follows their jobs, nothing is started anew."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import wait_until
from tests.system.test_restart import restart_adopts


def test_a_restarted_balancer_adopts_its_slurm_jobs(tmp_path: Path, slurm):
    restart_adopts(tmp_path, slurm.env, scheduler="slurm", host="127.0.0.1")
    wait_until(lambda: slurm.jobs() == [], 30, what="no job left after the stop")  # adopted jobs ended
