"""Local backend: each server is a launcher subprocess on this machine, in its own process group.

The embedded default for one machine (a workstation, a single allocation). A launcher's exit is
the job's end; cancel is SIGTERM to its group (the launcher forwards it to the server), SIGKILL
after the launcher's own grace (``procgroup``). Its options are the common ones only.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from ..procgroup import OUTER_GRACE_S, end_child, end_group, group_alive
from .base import ENV_JOB_ID, ENV_TASK_INDEX, Backend, Launch, launcher_argv

ADOPTED_POLL_S = 0.5  # an adopted launcher is not our child: its exit is noticed by polling


class LocalBackend(Backend):
    name = "local"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.adopted: dict[str, int] = {}  # server -> launcher pid (= its group), after a restart
        self._waiters: set[asyncio.Task[None]] = set()

    async def submit(self, launches: list[Launch]) -> None:
        for i, launch in enumerate(launches):
            if i and self.cfg.delay_ms:
                await asyncio.sleep(self.cfg.delay_ms / 1000)
            await self._spawn(launch)

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
                )
            except OSError as exc:
                self.events.job_ended(launch.server_id, f"cannot start launcher: {exc}", True)
                return
        self.procs[launch.server_id] = proc
        self.events.job_started(launch.server_id, str(proc.pid), "localhost")
        self._keep(self._watch(launch.server_id, proc))

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
        self.events.job_started(server_id, str(pid), "localhost")
        self._keep(self._watch_adopted(server_id, pid))
        return True

    async def _watch_adopted(self, server_id: str, pid: int) -> None:
        while True:  # not our child: no wait(), so poll /proc (off the event loop)
            if not await asyncio.to_thread(group_alive, pid):
                break
            await asyncio.sleep(ADOPTED_POLL_S)
        self.adopted.pop(server_id, None)
        self.events.job_ended(server_id, "launcher exited", False)

    async def _watch(self, server_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.procs.pop(server_id, None)
        self.events.job_ended(server_id, f"launcher exited with code {code}", code != 0)

    async def cancel(self, server_id: str) -> None:
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
