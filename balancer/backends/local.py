"""Local backend: each server is a launcher subprocess on this machine, in its own process group.

The embedded default for one machine (a workstation, a single allocation). A launcher's exit is
the job's end; cancel is SIGTERM to its group (the launcher forwards it to the server), SIGKILL
after the launcher's own grace (``procgroup``).

Each server gets its ``resources.cpus`` cores (CPU affinity of its launcher, which the server
inherits) and its ``resources.gpus`` GPUs, exclusively, through its own ``CUDA_VISIBLE_DEVICES``
(``gpus``). A start waits, journaled once as ``server.deferred``, while too few GPUs are free or
while every core is held by a CPU-bound server (``workload``): a second CPU-bound server on one
core only halves both.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from balancer.backends.base import Backend, Launch
from balancer.backends.options import LocalOptions
from balancer.backends.states import JobState, local_state
from balancer.config.schema import BalancerConfig, ConfigError, ServerSpec
from balancer.launcher.contract import ENV_JOB_ID, ENV_SOCKET, ENV_TASK_INDEX, launcher_argv
from balancer.launcher.procgroup import OUTER_GRACE_S, end_child, end_group, group_alive
from balancer.profiling.gpus import CoreAllocator, GpuAllocator, discover

ADOPTED_POLL_S = 0.5  # an adopted launcher is not our child: its exit is noticed by polling
ENV_GPUS = "CUDA_VISIBLE_DEVICES"


class LocalBackend(Backend):
    name = "local"
    Options = LocalOptions

    def __init__(self, cfg: BalancerConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.adopted: dict[str, int] = {}  # server -> launcher pid (= its group), after a restart
        self._waiters: set[asyncio.Task[None]] = set()
        self.gpus = GpuAllocator([])
        self.gpu_source = "none"
        self.cores = CoreAllocator(sorted(os.sched_getaffinity(0)))
        # spec name -> its workload class (measured, else the prior), from use_workload; "cpu" pins.
        self.workload_of: Callable[[str], str | None] = lambda spec: None
        self.assigned: dict[str, dict[str, list[Any]]] = {}  # server -> {"cpus": [...], "gpus": [...]}
        # Starts waiting for resources, oldest first: a freed GPU goes to the start that waited longest.
        self._wakers: dict[asyncio.Future[None], None] = {}
        self._cancelled: set[str] = set()  # cancelled while waiting for resources
        self._deferred: set[str] = set()
        self._sockets: Path | None = None  # the directory of isolate = "socket" servers, made once

    async def start(self) -> None:
        """Find the GPUs; a spec asking more than exist could never start: a ConfigError now."""
        configured = getattr(self.cfg.backend_options, "gpus", None)
        devices, self.gpu_source = await asyncio.to_thread(discover, configured)
        held = self.gpus.held  # adopted servers' devices, if any came back before the start
        self.gpus = GpuAllocator(devices)
        self.gpus.held.update(held)
        await self.check_specs(self.cfg.servers)

    async def check_specs(self, specs: Sequence[ServerSpec]) -> None:
        """A spec asking more GPUs than the devices found at start could never start."""
        n = len(self.gpus.devices)
        for spec in specs:
            if spec.resources.gpus > n:
                raise ConfigError(
                    f"servers.{spec.name}.resources.gpus",
                    f"asks for {spec.resources.gpus} GPUs but this machine has {n} "
                    f"(from {self.gpu_source}; set [backend] gpus to list them)",
                )

    async def submit(self, launches: list[Launch]) -> None:
        for i, launch in enumerate(launches):
            if i and self.cfg.delay_ms:
                await asyncio.sleep(self.cfg.delay_ms / 1000)
            if await self._reserve(launch):
                await self._spawn(launch)

    def use_workload(self, workload_of: Callable[[str], str | None]) -> None:
        self.workload_of = workload_of

    def server_resources(self, server_id: str) -> dict[str, list[Any]] | None:
        """The cores and GPUs a live server holds (for ``balancer servers`` and the dashboard)."""
        return self.assigned.get(server_id)

    def _try_reserve(self, server_id: str, launch: Launch) -> str | None:
        """Take cores and GPUs for a server; None when done, else why it must wait."""
        res, spec = launch.spec.resources, launch.spec.name
        cpu_bound = self.workload_of(spec) == "cpu"
        cores = self.cores.allocate(server_id, res.cpus, cpu_bound)
        if cores is None:
            return f"CPU-bound servers hold all {len(self.cores.cores)} cores"
        gpus: list[str] = []
        if res.gpus:
            got = self.gpus.allocate(server_id, res.gpus)
            if got is None:
                self.cores.release(server_id)
                return f"needs {res.gpus} GPUs, {len(self.gpus.free)} of {len(self.gpus.devices)} free"
            gpus = got
        self.assigned[server_id] = {"cpus": cores, "gpus": gpus}
        return None

    async def _reserve(self, launch: Launch) -> bool:
        """Wait until the server's cores and GPUs are free; False if it was cancelled meanwhile."""
        sid = launch.server_id
        while sid not in self._cancelled:
            why = self._try_reserve(sid, launch)
            if why is None:
                self._deferred.discard(sid)
                return True
            if sid not in self._deferred:  # journaled once per server, not per retry
                self._deferred.add(sid)
                self.events.job_deferred(sid, why)
            waker = asyncio.get_running_loop().create_future()
            self._wakers[waker] = None
            try:
                await waker
            finally:
                self._wakers.pop(waker, None)
        self._cancelled.discard(sid)
        self._deferred.discard(sid)
        self.events.job_ended(sid, "cancelled while waiting for cores or GPUs", False)
        return False

    def _release(self, server_id: str) -> None:
        """The server's job is gone: its cores and GPUs go to the starts that wait."""
        self.assigned.pop(server_id, None)
        self.cores.release(server_id)
        self.gpus.release(server_id)
        self._wake()

    def _wake(self) -> None:
        """Every waiting start tries again, in the order they began to wait."""
        for w in list(self._wakers):
            if not w.done():
                w.set_result(None)

    async def _spawn(self, launch: Launch) -> None:
        launch.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # "python" in a server command means the balancer's own environment (its venv), as a user
        # who started the balancer from an activated venv expects.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # The launcher's job id is its pid (the id reported below), never one inherited from a
        # balancer that itself runs inside a job.
        for k in (ENV_JOB_ID, ENV_TASK_INDEX):
            env.pop(k, None)
        env.update(launch.env)
        if launch.spec.isolate == "socket":
            env[ENV_SOCKET] = self._socket_path(launch.server_id)
        held = self.assigned.get(launch.server_id, {"cpus": [], "gpus": []})
        if held["gpus"]:
            env[ENV_GPUS] = ",".join(held["gpus"])
        elif self.gpus.devices and ENV_GPUS not in launch.env:
            env[ENV_GPUS] = ""  # asked for none: it may not touch another server's GPUs
        # The launcher's cores, inherited by the server it starts (set in the child, before exec).
        pin = functools.partial(os.sched_setaffinity, 0, held["cpus"]) if held["cpus"] else None
        argv = launcher_argv(launch.spec.server_command())
        # Opening a local log file does not block in any way that matters.
        with open(launch.log_dir / f"{launch.server_id}.log", "ab") as log:  # noqa: ASYNC230
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env=env,
                    cwd=launch.spec.cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=pin,
                )
            except OSError as exc:
                self._release(launch.server_id)
                self.events.job_ended(launch.server_id, f"cannot start launcher: {exc}", True)
                return
        self.procs[launch.server_id] = proc
        self.events.job_started(launch.server_id, str(proc.pid), "localhost")
        self._keep(self._watch(launch.server_id, proc))

    def _socket_path(self, server_id: str) -> str:
        """Where an isolated server listens: ``RUN_DIR/sockets/<server>.sock`` in an owner-only
        directory (other users cannot connect), or a private temporary directory when that path
        would exceed the 107 bytes a Unix socket address holds."""
        if self._sockets is None:
            d = self.run_dir / "sockets"
            if len(os.fsencode(d / f"{server_id}-000000.sock")) > 100:
                d = Path(tempfile.mkdtemp(prefix="ub-sockets-"))  # created 0700
            d.mkdir(mode=0o700, exist_ok=True)
            d.chmod(0o700)
            self._sockets = d
        return str(self._sockets / f"{server_id}.sock")

    def _keep(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

    async def adopt(self, server_id: str, job: str, doc: dict[str, Any]) -> bool:
        """A launcher of a previous balancer (no longer our child): watch its pid, end its group."""
        pid = doc.get("launcher_pid")
        if not isinstance(pid, int) or not await asyncio.to_thread(group_alive, pid):
            return False
        self.adopted[server_id] = pid
        cores, gpus = await asyncio.to_thread(_held_by, pid)
        self._hold(server_id, cores, gpus, doc.get("spec"))
        self.events.job_started(server_id, str(pid), "localhost")
        self._keep(self._watch_adopted(server_id, pid))
        return True

    def _hold(self, server_id: str, cores: list[int], gpus: list[str], spec: Any) -> None:
        """An adopted launcher keeps the cores and GPUs it was given: no new start gets them too."""
        gpus = [g for g in gpus if g in self.gpus.devices or not self.gpus.devices]
        if gpus:
            self.gpus.held[server_id] = gpus
        if cores and set(cores) != set(self.cores.cores):
            cpu_bound = isinstance(spec, str) and self.workload_of(spec) == "cpu"
            self.cores.held[server_id] = (cores, cpu_bound)
        self.assigned[server_id] = {"cpus": cores, "gpus": gpus}

    async def _watch_adopted(self, server_id: str, pid: int) -> None:
        while True:  # not our child: no wait(), so poll /proc (off the event loop)
            if not await asyncio.to_thread(group_alive, pid):
                break
            await asyncio.sleep(ADOPTED_POLL_S)
        self.adopted.pop(server_id, None)
        self._release(server_id)
        self.events.job_ended(server_id, "launcher exited", False)

    async def _watch(self, server_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.procs.pop(server_id, None)
        self._release(server_id)
        state = local_state(code)
        self.events.job_ended(server_id, f"launcher exited with code {code}", state is not JobState.COMPLETED)

    async def cancel(self, server_id: str) -> None:
        if server_id in self._deferred:  # still waiting for resources: it never starts
            self._cancelled.add(server_id)
            self._wake()
            return
        proc = self.procs.get(server_id)
        if proc is not None and proc.returncode is None:
            await end_child(proc, OUTER_GRACE_S)
        elif server_id in self.adopted:
            await end_group(self.adopted[server_id], OUTER_GRACE_S)

    async def close(self) -> None:
        await asyncio.gather(*(self.cancel(sid) for sid in [*self.procs, *self.adopted]))
        # Let the watchers report the exits before the pool goes away.
        if self._waiters:
            await asyncio.wait(self._waiters, timeout=2)
        d = self._sockets
        if d is not None and not d.is_relative_to(self.run_dir):  # the /tmp fallback: ours to remove
            await asyncio.to_thread(shutil.rmtree, d, True)


def _held_by(pid: int) -> tuple[list[int], list[str]]:
    """The cores and CUDA_VISIBLE_DEVICES of a running launcher (ours, from before a restart)."""
    try:
        cores = sorted(os.sched_getaffinity(pid))
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = dict(x.split(b"=", 1) for x in fh.read().split(b"\0") if b"=" in x)
    except OSError:
        return [], []
    visible = env.get(ENV_GPUS.encode(), b"").decode(errors="replace")
    return cores, [g for g in visible.split(",") if g]
