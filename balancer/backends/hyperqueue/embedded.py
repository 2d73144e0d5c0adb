"""An embedded HyperQueue cluster in a helper process.

``hyperqueue.LocalCluster`` runs the HQ server and its workers as threads of the Python process that
creates it, and its task processes become that process's children. Running it in the balancer
would put the cluster's start/stop and its children next to the event loop, so it lives in a
helper: ``python -m balancer.backends.hyperqueue.embedded --server-dir D --workers N --cpus C``. The helper
prints one JSON line when the cluster is up and then waits for SIGTERM/SIGINT or for its stdin to
close (the balancer died). On the way out it ends every task's process group first: HQ itself
only kills a task's direct process, so a model server the launcher started would survive.

Each HQ task is started by HQ with ``setsid``, so its pid is also its process-group id; everything
here that ends a task signals that group (``balancer.procgroup``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import sys
import time
from pathlib import Path

from balancer.launcher.procgroup import OUTER_GRACE_S, child_pids, end_child, end_groups

READY_TIMEOUT_S = 30.0
_ROOT = str(Path(__file__).resolve().parents[3])  # the helper must import this package, even from a checkout
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


# -- the helper process ----------------------------------------------------------------------------
def _wait_for_stop(watch_stdin: bool) -> str:
    """Block until SIGTERM/SIGINT/SIGHUP or, with ``watch_stdin``, until stdin closes (which it does
    when the balancer exits, however it exits). Handlers plus a wakeup fd rather than a blocked
    signal mask: task processes inherit the mask, and a task with SIGTERM blocked cannot be stopped."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda *_: None)
    signal.set_wakeup_fd(w)
    fds = [r, 0] if watch_stdin else [r]
    while True:
        ready, _, _ = select.select(fds, [], [])
        if r in ready:
            return f"signal {os.read(r, 1)[0]}"
        try:
            if not os.read(0, 65536):
                return "stdin closed"
        except OSError:
            return "stdin closed"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server-dir", required=True, type=Path)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="cores per worker")
    p.add_argument("--grace", type=float, default=OUTER_GRACE_S, help="SIGTERM-to-SIGKILL for tasks")
    p.add_argument("--ignore-stdin", action="store_true", help="do not stop when stdin closes")
    args = p.parse_args(argv)
    # HQ prints its server table on fd 1: keep fd 1 for our one ready line, send the rest to stderr.
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    t0 = time.perf_counter()
    from hyperqueue.cluster import LocalCluster, WorkerConfig

    args.server_dir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(server_dir=str(args.server_dir))
    try:
        for _ in range(args.workers):
            cluster.start_worker(WorkerConfig(cores=args.cpus))
        ready = {
            "ready": True,
            "server_dir": str(cluster.cluster.server_dir),
            "pid": os.getpid(),
            "workers": args.workers,
            "cpus": args.cpus,
            "start_s": round(time.perf_counter() - t0, 4),
        }
        proto.write(json.dumps(ready) + "\n")
        proto.flush()
        # After the cluster started, so that these handlers replace any HQ installed.
        why = _wait_for_stop(not args.ignore_stdin)
        print(f"hq_embedded: stopping ({why})", file=sys.stderr, flush=True)
        end_groups(child_pids(os.getpid()), args.grace)
    finally:
        cluster.stop()
    return 0


# -- the balancer side -----------------------------------------------------------------------------
class EmbeddedCluster:
    """Starts and stops the helper process from the event loop; never imports ``hyperqueue``."""

    def __init__(self, server_dir: Path, workers: int, cpus: int, log_path: Path, python: str | None = None):
        self.server_dir = server_dir
        self.workers = workers
        self.cpus = cpus
        self.log_path = log_path
        self.python = python or sys.executable
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, object] = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, object]:
        """Spawn the helper and wait for its ready line; RuntimeError (with its log) on failure."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [self.python, "-m", "balancer.backends.hyperqueue.embedded"]
        argv += ["--server-dir", str(self.server_dir)]
        argv += ["--workers", str(self.workers), "--cpus", str(self.cpus)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - a local file, opened once
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the balancer, not HQ
            )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
            self.info = json.loads(line) if line else {}
        except (asyncio.TimeoutError, ValueError):
            self.info = {}
        if not self.info.get("ready"):
            await self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"embedded HyperQueue cluster did not start; its log ends with:\n{tail}")
        return self.info

    async def stop(self, timeout_s: float = OUTER_GRACE_S + 10) -> None:
        """Ask the helper to end its tasks and the cluster; SIGKILL it if it hangs. The default
        outlasts the helper's own grace for its tasks (OUTER_GRACE_S) plus the cluster's stop."""
        if self.proc is not None:
            await end_child(self.proc, timeout_s)  # its own session: the group is the helper alone


if __name__ == "__main__":
    sys.exit(main())
