"""A real multi-node SLURM cluster on this machine (``tests/multinode/netns.sh``): a login side in
the root network namespace (munged, slurmctld, the balancer, the clients) and compute nodes, each a
network namespace with its own address on a bridge and its own ``slurmd``.

``multinode_cluster`` (session scope) starts it once per test session and tears it down at the end,
also when a test failed (the script's ``stop`` kills every process left in the namespaces and
deletes namespaces, veths and bridge). It skips, with the reason, when not root or when the
packages cannot be installed. By hand::

    TEST_MN_NODES=3 TEST_MN_CPUS=2 bash tests/multinode/netns.sh start /tmp/mn   # prints SLURM_CONF
    bash tests/multinode/netns.sh exec /tmp/mn node1 ip -br addr                # inside node1
    bash tests/multinode/netns.sh stop /tmp/mn

or from Python ``MultiNodeCluster.start(Path("/tmp/mn"), nodes=3, cpus=2)`` and ``.stop()``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.slurm.fixture import (
    BASH,
    ClusterUnavailable,
    SlurmCluster,
    _free_ports,
    session_cluster,
    start_script,
)

NETNS_SH = Path(__file__).resolve().with_name("netns.sh")


def _free_subnet() -> str:
    """The first ``10.77.N`` (N = 0..255) whose /24 no route of this machine overlaps (the default
    route aside): nothing real is ever reached at the test cluster's addresses."""
    if shutil.which("ip") is None:  # no iproute2 yet: netns.sh installs it and checks 10.77.0 itself
        return "10.77.0"
    res = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, timeout=10)
    routes = []
    for line in res.stdout.splitlines():
        dest = line.split()[0] if line.split() else "default"
        if dest != "default":
            routes.append(ipaddress.ip_network(dest, strict=False))
    for n in range(256):
        net = ipaddress.ip_network(f"10.77.{n}.0/24")
        if not any(net.overlaps(r) for r in routes):
            return f"10.77.{n}"
    raise ClusterUnavailable("no free 10.77.N.0/24 subnet for the test cluster")


@dataclass(frozen=True)
class Node:
    """One compute node: its SLURM name, network namespace, address and login-side veth."""

    name: str
    ns: str
    addr: str
    veth: str


@dataclass
class MultiNodeCluster(SlurmCluster):
    """A started multi-node cluster: ``SlurmCluster``'s commands (run, sbatch, jobs, ...) plus the
    nodes and what a test does to them (kill one, take its link down, run a command inside)."""

    nodes: list[Node] = field(default_factory=list)
    login_addr: str = ""

    @classmethod
    def start(  # type: ignore[override]
        cls,
        directory: Path,
        *,
        nodes: int = 3,
        cpus: int = 2,
        memory_mb: int = 2000,
        subnet: str | None = None,
        prefix: str | None = None,
        timeout: float = 240.0,
    ) -> MultiNodeCluster:
        """Start ``nodes`` compute nodes of ``cpus`` CPUs and ``memory_mb`` each in ``directory``
        (SLURM believes what they advertise: a trace's machine size fits on this one; free ports for
        the daemons, a free subnet). ``ClusterUnavailable`` when this machine cannot have one;
        ``RuntimeError`` with the script's message when a daemon fails to start."""
        if os.geteuid() != 0:
            raise ClusterUnavailable("the multi-node test cluster needs root (namespaces, daemons)")
        env = dict(os.environ)
        ctld, slurmd = _free_ports(2)
        env.update(
            TEST_SLURM_CTLD_PORT=str(ctld),
            TEST_SLURM_SLURMD_PORT=str(slurmd),
            TEST_MN_NODES=str(nodes),
            TEST_MN_CPUS=str(cpus),
            TEST_MN_MEMORY=str(memory_mb),
        )
        # A subnet with no route yet and names of this session's own: a cluster left over by a
        # killed session, or another session's, is never in the way.
        env["TEST_MN_SUBNET"] = subnet or env.get("TEST_MN_SUBNET") or _free_subnet()
        env["TEST_MN_PREFIX"] = prefix or env.get("TEST_MN_PREFIX") or f"ubm{os.getpid() % 100000}"
        directory = start_script(NETNS_SH, directory, env, timeout, "multi-node test cluster")
        net = dict(line.split("=", 1) for line in (directory / "net.env").read_text().split() if "=" in line)
        sub, pre = net["SUBNET"], net["PREFIX"]
        node_list = [
            Node(f"node{i}", f"{pre}-node{i}", f"{sub}.{10 + i}", f"{pre}-h{i}")
            for i in range(1, int(net["NODES"]) + 1)
        ]
        conf = directory / "slurm.conf"
        env["SLURM_CONF"] = str(conf)
        return cls(dir=directory, conf=conf, env=env, nodes=node_list, login_addr=f"{sub}.1")

    def stop(self) -> None:
        """Cancel the jobs, end the daemons, delete the network (idempotent)."""
        res = self._script("stop", timeout=90, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"multi-node test cluster did not stop: {res.stderr.strip()}")

    def _script(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [BASH, str(NETNS_SH), args[0], str(self.dir), *args[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"netns.sh {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
        return res

    # -- the nodes --------------------------------------------------------------------------------

    def node(self, name_or_addr: str) -> Node:
        for n in self.nodes:
            if name_or_addr in (n.name, n.addr, n.ns):
                return n
        raise KeyError(f"no node {name_or_addr!r}")

    def in_node(
        self, node: str, args: Sequence[str], *, timeout: float = 30.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside ``node``'s network namespace (the filesystem is shared)."""
        return self._script("exec", self.node(node).name, *args, timeout=timeout, check=check)

    def kill_node(self, node: str) -> None:
        """The node dies: its slurmd and every process in its namespace get SIGKILL at once."""
        self._script("node-kill", self.node(node).name)

    def revive_node(self, node: str) -> None:
        """Start the node's slurmd again and resume it in SLURM; wait until it is idle."""
        self._script("node-start", self.node(node).name, timeout=90)

    def set_link(self, node: str, up: bool) -> None:
        """The node's link on the bridge up or down (its processes keep running)."""
        self._script("link", self.node(node).name, "up" if up else "down")

    def ns_pids(self, node: str) -> list[int]:
        res = subprocess.run(
            ["ip", "netns", "pids", self.node(node).ns], capture_output=True, text=True, timeout=10
        )
        return [int(p) for p in res.stdout.split()]

    def node_states(self) -> dict[str, str]:
        """Each node's SLURM state (``idle``, ``mix``, ``alloc``, ``down*``, ...)."""
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout.split("\n")
        return dict(line.split() for line in out if line.strip())

    def heal(self, timeout: float = 60.0) -> None:
        """Every link up, every node's slurmd running and the node idle, no job left: the state the
        next test expects, whatever the last one did."""
        for n in self.nodes:
            self.set_link(n.name, True)
            self.revive_node(n.name)  # a no-op for a node whose slurmd runs
        if self.jobs():
            self.run(["scancel", "--quiet", f"--user={os.getuid()}"], check=False)
        deadline = time.monotonic() + timeout
        while self.jobs() or set(self.node_states().values()) != {"idle"}:
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster not idle: jobs {self.jobs()}, nodes {self.node_states()}")
            for n, st in self.node_states().items():
                if st.startswith(("down", "drain")):
                    self.run(["scontrol", "update", f"NodeName={n}", "State=RESUME"], check=False)
            time.sleep(0.1)


@pytest.fixture(scope="session")
def multinode_cluster() -> Iterator[MultiNodeCluster]:
    """One multi-node cluster for the session: 3 nodes of 2 CPUs, in a world-readable directory as
    a shared filesystem's run directory would be (``tests.slurm.fixture.session_cluster``)."""
    yield from session_cluster(MultiNodeCluster.start, "ub-mn-", "multi-node test cluster")


@pytest.fixture
def mn(multinode_cluster: MultiNodeCluster) -> Iterator[MultiNodeCluster]:
    """The session's cluster, healed after the test (links up, nodes back, no job left)."""
    yield multinode_cluster
    multinode_cluster.heal()
