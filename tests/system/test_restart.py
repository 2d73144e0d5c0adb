"""A balancer restarted with the same run directory within the lease takes its servers back:
their launchers register again, the backend follows their jobs, nothing is started anew
(SLURM jobs: cluster/test_restart_slurm)."""

from __future__ import annotations

import socket
from pathlib import Path

import umbridge

from tests.helpers import BalancerProc, pid_alive, reap, stop_and_check, test_model_spec, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def restart_adopts(tmp_path: Path, env: dict[str, str] | None = None, **balancer: object) -> None:
    port = free_port()  # the launchers know the balancer by its URL: the restart keeps the port
    spec = test_model_spec(models=["forward"], min_servers=2, max_servers=2)
    b1 = BalancerProc(tmp_path, [spec], env=env, port=port, lease_s=10, **balancer)
    pids: list[int] = []
    b2 = None
    try:
        wait_until(lambda: len(b1.events("server.ready")) == 2, 60, what="2 servers ready")
        pids = b1.server_pids()
        assert umbridge.HTTPModel(b1.url, "forward")([[1.0]]) == [[2.0]]
        b1.kill()  # SIGKILL: no shutdown, the servers live on under their leases
        assert all(pid_alive(p) for p in pids)
        b2 = BalancerProc(tmp_path, [spec], env=env, port=port, lease_s=10, **balancer)  # same run dir
        adopted = wait_until(lambda: b2.events("server.adopted")[1:] and b2.events("server.adopted"), 30)
        assert {e["server"] for e in adopted} == {"s1", "s2"}
        wait_until(lambda: len(b2.events("server.ready")) == 4, 30, what="the adopted servers ready again")
        model = umbridge.HTTPModel(b2.url, "forward")
        assert [model([[float(i)]]) for i in range(10)] == [[[2.0 * i]] for i in range(10)]
        assert len(b2.events("server.requested")) == 2  # nothing started anew
        stop_and_check(b2, pids, {"s1", "s2"})  # the adopted servers stop with it
    finally:
        reap([b1, b2], pids)


def test_a_restarted_balancer_adopts_its_local_servers(tmp_path: Path):
    restart_adopts(tmp_path)
