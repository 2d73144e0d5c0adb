"""Registration through a shared directory (``registration = "file"``) on the SLURM test cluster:
registration, lease, stop and exit reports all go through files (local servers: system/test_filereg)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import wait_until
from tests.system.test_filereg import serve_through_files


def test_slurm_servers_register_and_stop_through_files(tmp_path: Path, slurm):
    serve_through_files(tmp_path, slurm.env, scheduler="slurm", host="127.0.0.1")
    wait_until(lambda: slurm.jobs() == [], 30, what="no job left after the stop")
