"""Registration through the shared directory with launchers on several nodes writing into it, and
a balancer killed and restarted on the login side within the lease adopting the servers of every
node (one node: system/test_filereg, cluster/test_restart_slurm)."""

from __future__ import annotations

import signal
from pathlib import Path

import umbridge

from tests.helpers import BalancerProc, pid_alive, reap, stop_and_check, wait_until
from tests.multinode.fixture import MultiNodeCluster
from tests.multinode.helpers import Load, hosts_of, spec, start
from tests.system.test_restart import free_port


def test_several_nodes_register_through_the_shared_directory(mn: MultiNodeCluster, tmp_path: Path):
    b = start(mn, tmp_path, [spec(3)], registration="file")
    pids: list[int] = []
    try:
        hosts = wait_until(lambda: len(hosts_of(b)) == 3 and hosts_of(b), 60, what="3 servers ready")
        assert sorted(hosts.values()) == sorted(n.addr for n in mn.nodes)
        pids = b.server_pids()
        reg = b.run_dir / "registration"
        assert not list(reg.glob("*.register.json"))  # every node's registration read and removed
        for sid in hosts:
            assert f"through {reg}" in (b.run_dir / "logs" / f"{sid}.log").read_text()
        with Load(b.url, threads=6) as load:
            wait_until(lambda: load.answered >= 60, 60, what="60 calls answered")
        assert not load.errors, load.errors[:5]
        assert {e["server"] for e in b.events("call.dispatched")} == set(hosts)
        stop_and_check(b, pids, set(hosts))  # stop files, read by each node's launcher
        wait_until(lambda: mn.jobs() == [], 30, what="no job left after the stop")
    finally:
        reap([b], pids)


def test_a_restarted_balancer_adopts_the_servers_of_every_node(mn: MultiNodeCluster, tmp_path: Path):
    port = free_port()  # the restart keeps the client port, and the control port (its run dir)
    servers = [spec(3)]
    b1 = start(mn, tmp_path, servers, port=port, lease_s=10)
    b2: BalancerProc | None = None
    pids: list[int] = []
    try:
        hosts = wait_until(lambda: len(hosts_of(b1)) == 3 and hosts_of(b1), 60, what="3 servers ready")
        pids = b1.server_pids()
        assert umbridge.HTTPModel(b1.url, "forward")([[1.0]]) == [[2.0]]
        b1.proc.send_signal(signal.SIGKILL)  # no shutdown: the servers live on under their leases
        b1.kill()
        assert all(pid_alive(p) for p in pids)
        b2 = start(mn, tmp_path, servers, port=port, lease_s=10)  # same run directory
        assert b2.control_url == b1.control_url
        adopted = wait_until(
            lambda: len(b2.events("server.adopted")) == 3 and b2.events("server.adopted"), 30
        )
        assert {e["server"] for e in adopted} == set(hosts)
        wait_until(lambda: len(b2.events("server.ready")) == 6, 30, what="the adopted servers ready again")
        with Load(b2.url, threads=6) as load:
            wait_until(lambda: load.answered >= 60, 60, what="60 calls answered")
        assert not load.errors, load.errors[:5]
        assert {e["server"] for e in b2.events("call.dispatched")} == set(hosts)  # every node's
        assert len(b2.events("server.requested")) == 3  # the first run's: nothing started anew
        stop_and_check(b2, pids, set(hosts))
    finally:
        reap([b1, b2], pids)
