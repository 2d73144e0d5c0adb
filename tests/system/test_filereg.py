"""Registration through a shared directory (``registration = "file"``), for compute nodes that
cannot reach the login node: registration, lease, stop and exit reports all go through files
(on SLURM: cluster/test_filereg_slurm)."""

from __future__ import annotations

from pathlib import Path

import umbridge

from tests.helpers import BalancerProc, pid_alive, reap, stop_and_check, test_model_spec, wait_until


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


def test_local_servers_register_and_stop_through_files(tmp_path: Path):
    serve_through_files(tmp_path)


def test_launchers_stop_when_the_balancer_heartbeat_stops(tmp_path: Path):
    spec = test_model_spec(models=["forward"], min_servers=1, max_servers=1)
    b = BalancerProc(tmp_path, [spec], registration="file", lease_s=2)
    try:
        wait_until(lambda: b.events("server.ready"), 60, what="a server ready")
        pids = b.server_pids()
        b.kill()  # no stop file will come; balancer.alive stops changing
        wait_until(lambda: not any(pid_alive(p) for p in pids), 20, what="the lease to expire")
    finally:
        b.kill()
