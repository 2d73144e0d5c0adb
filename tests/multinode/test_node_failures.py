"""A compute node dies, or drops off the network while its processes live on, during a campaign:
the calls in flight are retried on other nodes, the lost servers are replaced on other nodes,
every call is answered, and a server given up is never used again, not even when its node's link
comes back."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers import pid_alive, wait_until
from tests.multinode.fixture import MultiNodeCluster
from tests.multinode.helpers import LEASE_S, Load, balancer, hosts_of, spec

DELAY = {"TEST_DELAY": "100"}  # 100 ms per call: several calls are always in flight on each server


def test_a_dead_nodes_calls_are_retried_and_its_server_replaced(mn: MultiNodeCluster, tmp_path: Path):
    with balancer(mn, tmp_path, [spec(2, env=DELAY)]) as b:
        hosts = wait_until(lambda: len(hosts_of(b)) == 2 and hosts_of(b), 60, what="2 servers ready")
        with Load(b.url, threads=6) as load:
            wait_until(lambda: load.answered >= 30, 60, what="calls answered")
            victim_sid, victim_addr = sorted(hosts.items())[0]
            victim = mn.node(victim_addr)
            t0 = time.monotonic()
            mn.kill_node(victim.name)  # slurmd, slurmstepd, launcher and model server at once
            failed = b.wait_event("server.failed", 30, server=victim_sid)
            given_up_s = time.monotonic() - t0
            new = wait_until(
                lambda: len(hosts_of(b)) == 2 and victim_sid not in hosts_of(b) and hosts_of(b),
                60,
                what="a replacement server ready",
            )
            replaced_s = time.monotonic() - t0
            done = load.answered
            wait_until(lambda: load.answered >= done + 30, 60, what="calls answered after the loss")
        assert not load.errors, load.errors[:5]
        assert victim_addr not in new.values()  # replaced on another node
        assert b.events("call.requeued")  # calls in flight were retried elsewhere
        assert all(e["server"] == victim_sid for e in b.events("call.requeued"))
        print(
            f"\nnode death: server given up after {given_up_s:.2f} s ({failed['reason']}), "
            f"replacement ready after {replaced_s:.2f} s; {load.answered} calls, all answered"
        )


def test_a_node_off_the_network_is_given_up_on_both_sides_and_never_used_again(
    mn: MultiNodeCluster, tmp_path: Path
):
    with balancer(mn, tmp_path, [spec(2, env=DELAY)]) as b:
        hosts = wait_until(lambda: len(hosts_of(b)) == 2 and hosts_of(b), 60, what="2 servers ready")
        with Load(b.url, threads=6) as load:
            wait_until(lambda: load.answered >= 30, 60, what="calls answered")
            victim_sid, victim_addr = sorted(hosts.items())[0]
            victim = mn.node(victim_addr)
            pids = [int(b.find("server.registered", server=victim_sid)[k]) for k in ("pid", "launcher_pid")]
            t0 = time.monotonic()
            mn.set_link(victim.name, False)  # its processes keep running
            failed = b.wait_event("server.failed", 5 * LEASE_S, server=victim_sid)
            given_up_s = time.monotonic() - t0
            assert failed["reason"].startswith("lease expired")  # the balancer's side of the lease
            wait_until(
                lambda: not any(pid_alive(p) for p in pids), 5 * LEASE_S, what="the server to stop itself"
            )
            stopped_s = time.monotonic() - t0
            log = (b.run_dir / "logs" / f"{victim_sid}.log").read_text()
            assert "lease expired" in log  # the launcher's side of the lease
            wait_until(
                lambda: len(hosts_of(b)) == 2 and victim_sid not in hosts_of(b), 60, what="a replacement"
            )
            given_up = len(b.events())
            mn.set_link(victim.name, True)
            done = load.answered
            wait_until(lambda: load.answered >= done + 30, 60, what="calls answered after the link came back")
        assert not load.errors, load.errors[:5]
        assert b.find("call.requeued", server=victim_sid)  # its calls in flight were retried elsewhere
        late = [e for e in b.events()[given_up:] if e.get("server") == victim_sid]
        assert not [e for e in late if e["ev"] in ("call.dispatched", "server.ready", "server.registered")]
        print(
            f"\nlink down: server given up after {given_up_s:.2f} s ({failed['reason']}), "
            f"stopped itself after {stopped_s:.2f} s; {load.answered} calls, all answered"
        )
