"""A real one-node SLURM cluster for tests and benchmarks (driven by ``tests/slurm/cluster.sh``).

``slurm_cluster`` (session scope) starts the cluster once per test session in a temporary directory
and stops it at the end; it skips, with the reason, only when not root or when the Debian packages
cannot be installed. ``slurm`` (function scope) is the same cluster, with every job the test left
behind cancelled afterwards so the next test finds both CPUs free.

Outside pytest: ``SlurmCluster.start(dir)`` / ``.stop()``, or ``cluster.sh start DIR``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from tests.helpers import pid_alive, wait_until  # noqa: F401 - re-exported for SLURM tests

CLUSTER_SH = Path(__file__).resolve().with_name("cluster.sh")
BASH = shutil.which("bash") or "/bin/bash"
# cluster.sh exit statuses that mean "no cluster possible here" (a skip, not a failure).
_EXIT_NOT_INSTALLABLE = 3
_EXIT_NOT_ROOT = 4
# Job states after which a job will not run again.
FINISHED = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
    }
)


C = TypeVar("C")


class ClusterUnavailable(RuntimeError):
    """No SLURM cluster can run on this machine (not root, packages not installable)."""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that are free right now (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SlurmCluster:
    """A started cluster: its directory, its ``slurm.conf`` and the environment for every client."""

    dir: Path
    conf: Path
    env: dict[str, str] = field(repr=False)

    # -- life cycle -------------------------------------------------------------------------------

    @classmethod
    def start(cls, directory: Path, *, pick_ports: bool = True, timeout: float = 180.0) -> SlurmCluster:
        """Install the packages if needed and start the cluster in ``directory``.

        Raises ``ClusterUnavailable`` when this machine cannot have one, ``RuntimeError`` (with the
        script's message and log tail) when a daemon fails to start. With ``pick_ports`` free
        loopback ports are used unless ``TEST_SLURM_CTLD_PORT`` / ``TEST_SLURM_SLURMD_PORT`` are set,
        so that two sessions never collide.
        """
        if os.geteuid() != 0:
            raise ClusterUnavailable("the SLURM test cluster needs root (its daemons run as root)")
        env = dict(os.environ)
        if pick_ports and not (env.get("TEST_SLURM_CTLD_PORT") or env.get("TEST_SLURM_SLURMD_PORT")):
            ctld, slurmd = _free_ports(2)
            env["TEST_SLURM_CTLD_PORT"], env["TEST_SLURM_SLURMD_PORT"] = str(ctld), str(slurmd)
        inst = subprocess.run(
            [BASH, str(CLUSTER_SH), "install"], env=env, capture_output=True, text=True, timeout=timeout
        )
        if inst.returncode in (_EXIT_NOT_INSTALLABLE, _EXIT_NOT_ROOT):
            raise ClusterUnavailable(inst.stderr.strip() or "SLURM packages cannot be installed")
        if inst.returncode != 0:
            raise RuntimeError(f"cluster.sh install failed ({inst.returncode}): {inst.stderr.strip()}")
        directory = start_script(CLUSTER_SH, directory, env, timeout, "SLURM test cluster")
        conf = directory / "slurm.conf"
        env["SLURM_CONF"] = str(conf)
        return cls(dir=directory, conf=conf, env=env)

    @classmethod
    def attach(cls, directory: Path) -> SlurmCluster:
        """A handle on a cluster already started in ``directory`` (e.g. by ``cluster.sh start``)."""
        directory = directory.resolve()
        conf = directory / "slurm.conf"
        if not conf.is_file():
            raise RuntimeError(f"no SLURM test cluster in {directory} (no slurm.conf)")
        return cls(dir=directory, conf=conf, env={**os.environ, "SLURM_CONF": str(conf)})

    def stop(self) -> None:
        """Cancel every job, end the daemons and wait until they are gone (idempotent)."""
        res = subprocess.run(
            [BASH, str(CLUSTER_SH), "stop", str(self.dir)], capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            raise RuntimeError(f"SLURM test cluster did not stop: {res.stderr.strip()}")

    # -- running commands -------------------------------------------------------------------------

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        stdin_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (``sbatch``, ``squeue``, a benchmark, ...) under the cluster's environment."""
        res = subprocess.run(
            list(args),
            env={**self.env, **(env or {})},
            cwd=cwd,
            input=stdin_text,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
        return res

    def sbatch(self, *args: str, wrap: str | None = None) -> str:
        """Submit a batch job (``--parsable``); returns its job id (``123`` or ``123_[0-3]`` arrays)."""
        cmd = ["sbatch", "--parsable", f"--chdir={self.dir / 'jobs'}", *args]
        if wrap is not None:
            cmd += ["--wrap", wrap]
        return self.run(cmd).stdout.strip().split(";")[0]

    def state(self, job_id: str) -> str:
        """The job's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ...); ``""`` once slurmctld forgot it."""
        res = self.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], check=False)
        return res.stdout.strip() if res.returncode == 0 else ""

    def wait_state(self, job_id: str, states: set[str] | frozenset[str], timeout: float = 30.0) -> str:
        """Poll until the job is in one of ``states`` (``""`` counts as finished); returns the state."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(job_id)
            if st in states or (not st and states & FINISHED):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} still {st or 'unknown'} after {timeout} s, wanted {states}"
                )
            time.sleep(0.02)

    def jobs(self) -> list[str]:
        """Ids of the jobs slurmctld still has pending, running or completing."""
        return self.run(["squeue", "-h", "-o", "%i"]).stdout.split()

    def cancel_all(self, timeout: float = 30.0) -> None:
        """Cancel every job and wait until none is left and the node is idle again."""
        if self.jobs():
            self.run(["scancel", "--quiet", f"--user={os.getuid()}"], check=False)
        deadline = time.monotonic() + timeout
        while self.jobs() or self.node_state() != "idle":
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs left after scancel: {self.jobs()}, node {self.node_state()}")
            time.sleep(0.02)

    def node_state(self) -> str:
        """The node's state (``idle``, ``mix``, ``alloc``); sinfo lists it once per partition."""
        return " ".join(sorted(set(self.run(["sinfo", "-h", "-N", "-o", "%t"]).stdout.split())))

    def log_tail(self, name: str = "slurmctld", lines: int = 30) -> str:
        """The last lines of ``log/<name>.log`` (``slurmctld``, ``slurmd``, ``munged``), for messages."""
        path = self.dir / "log" / f"{name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start_script(script: Path, directory: Path, env: dict[str, str], timeout: float, what: str) -> Path:
    """``script start DIR`` (cluster.sh, multinode/netns.sh): the resolved directory; a start this
    machine cannot have (not root, packages not installable) is ``ClusterUnavailable``, a skip."""
    directory.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        [BASH, str(script), "start", str(directory)], env=env, capture_output=True, text=True, timeout=timeout
    )
    if res.returncode in (_EXIT_NOT_INSTALLABLE, _EXIT_NOT_ROOT):
        raise ClusterUnavailable(res.stderr.strip())
    if res.returncode != 0:
        raise RuntimeError(f"{what} did not start:\n{res.stderr.rstrip()}")
    return directory.resolve()


def session_cluster(start: Callable[[Path], C], prefix: str, what: str) -> Iterator[C]:
    """Start a cluster once for the session in a fresh directory, skip (with the reason) where none
    can run, stop it and remove the directory after. The directory is not under pytest's owner-only
    temporary root (which every pytest session resets to 0700): slurmd runs a job script from its
    spool directory as the job's user, and another user's job (cluster/test_preempt_slurm) must be
    able to reach it, as on a shared filesystem."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    try:
        try:
            cluster = start(directory)
        except ClusterUnavailable as exc:
            pytest.skip(f"no {what}: {exc}")
        try:
            yield cluster
        finally:
            cluster.stop()  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One real SLURM cluster for the whole test session (2 CPUs here: two 1-CPU jobs at once)."""
    yield from session_cluster(SlurmCluster.start, "ub-slurm-", "SLURM test cluster")


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session's cluster; whatever jobs the test leaves behind are cancelled afterwards."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
