"""Registration through a shared directory (``registration = "file"``) on the SLURM test cluster:
registration, lease, stop and exit reports all go through files (local servers: system/test_filereg)."""

from __future__ import annotations

from pathlib import Path

import umbridge

from tests.helpers import BalancerProc, reap, stop_and_check, test_model_spec, wait_until


def serve_through_files(tmp_path: Path, env: dict[str, str] | None = None, **balancer: object) -> None:
    spec = test_model_spec(models=["forward"], min_servers=2, max_servers=2)
    b = BalancerProc(tmp_path, [spec], env=env, registration="file", lease_s=3, **balancer)
    pids: list[int] = []
    try:
        wait_until(lambda: len(b.events("server.ready")) == 2 or b._died(), 60, what="2 servers ready")
        pids = b.server_pids()
        reg = b.run_dir / "registration"
        assert (reg / "balancer.alive").exists() and oct(reg.stat().st_mode & 0o777) == "0o700"
        assert not list(reg.glob("*.register.json"))  # read and removed
        logs = " ".join(p.read_text() for p in (b.run_dir / "logs").glob("s*.log"))
        assert f"through {reg}" in logs  # the launchers registered through the files
        model = umbridge.HTTPModel(b.url, "forward")
        assert [model([[float(i)]]) for i in range(6)] == [[[2.0 * i]] for i in range(6)]
        stop_and_check(b, pids, {"s1", "s2"})
    finally:
        reap([b], pids)


def test_slurm_servers_register_and_stop_through_files(tmp_path: Path, slurm):
    serve_through_files(tmp_path, slurm.env, scheduler="slurm", host="127.0.0.1")
    wait_until(lambda: slurm.jobs() == [], 30, what="no job left after the stop")
