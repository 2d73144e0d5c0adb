"""Batch job scripts run for real (bash, fake scheduler commands): the SLURM script keeps the user's
directives and starts the launchers it should (the string-level parts: unit/test_backend_batch)."""

from __future__ import annotations

import os
import subprocess
import sys

from balancer.launcher.contract import ENV_SERVER_ID
from tests.unit.test_backend_batch import slurm


def test_slurm_job_script_keeps_the_users_directives_and_exports_what_the_launcher_needs(tmp_path):
    user = tmp_path / "job.sh"
    user.write_text("#!/bin/bash\n#SBATCH --time=5\n#SBATCH -J theirs\n#SBATCH --mem=1G\nexec model\n")
    be = slurm(tmp_path, {"name": "m", "job_script": str(user)})
    script = be.job_script(be.cfg.servers[0], tmp_path / "logs")
    lines = script.splitlines()
    assert lines[:3] == ["#!/bin/bash", "#SBATCH --time=5", "#SBATCH --mem=1G"]  # -J is ours
    assert "export UMBRIDGE_BALANCER_TASK_INDEX=$first" in lines
    assert lines[-1] == f"exec {sys.executable} -m balancer.launcher -- bash {user}"
    # The job id the launcher gets, as scancel and the reference's url-<job>.txt write it.
    export = next(x for x in lines if x.startswith("export UMBRIDGE_BALANCER_JOB_ID="))
    cases = (({"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"}, "7_3"), ({"SLURM_JOB_ID": "9"}, "9"))
    for env, want in cases:
        out = subprocess.run(
            ["bash", "-c", f"{export}; echo $UMBRIDGE_BALANCER_JOB_ID"],
            env={"PATH": os.environ["PATH"], **env},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == want


def test_slurm_several_servers_per_job_start_their_launchers_by_index(tmp_path):
    # The launcher's Python is configurable: a stand-in that logs what the launcher would get.
    fake_python = tmp_path / "python"
    fake_python.write_text(
        '#!/bin/bash\necho "index $UMBRIDGE_BALANCER_TASK_INDEX job $UMBRIDGE_BALANCER_JOB_ID: $*"\n'
    )
    fake_python.chmod(0o755)
    be = slurm(
        tmp_path, {"name": "m", "command": ["model"], "servers_per_job": 2}, {"python": str(fake_python)}
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    script = be.job_script(be.cfg.servers[0], logs)
    env = {
        "PATH": os.environ["PATH"],
        ENV_SERVER_ID: "a,b,c,d",
        "SLURM_ARRAY_JOB_ID": "7",
        "SLURM_ARRAY_TASK_ID": "1",
    }
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=30)
    # Array task 1 of two servers per job runs the launchers of c and d.
    assert sorted(p.name for p in logs.iterdir()) == ["c.log", "d.log"]
    assert (logs / "c.log").read_text() == "index 2 job 7_1: -m balancer.launcher -- model\n"
    assert (logs / "d.log").read_text().startswith("index 3 job 7_1")
