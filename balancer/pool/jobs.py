"""The servers' jobs: what each launcher is told, and the one place that submits and cancels them.

The pool owns its servers' jobs: ``Jobs`` is its hand on the backend for them (the scaler only
asks the pool for servers), so a job is submitted and cancelled by one owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balancer.backends.base import Backend, Launch
from balancer.launcher.contract import launch_env
from balancer.launcher.procgroup import GRACE_S
from balancer.pool.servers import Server
from balancer.pool.states import ServerState

# A launcher hears a lease stop at once (long poll) and ends its server; if its job has not ended
# after half the grace, the backend's cancel (itself graceful) follows.
LEASE_STOP_GRACE_S = GRACE_S / 2


@dataclass(frozen=True)
class LaunchSettings:
    """What every launcher is told: where the balancer is and how to authenticate."""

    url: str
    token: str
    lease_s: float
    log_dir: Path
    registration_dir: Path | None = None  # registration through files (filereg.py), not HTTP
    monitor_interval_s: float = 5.0  # launchers' usage samples (balancer/launcher/usage.py); 0: none


def launch_for(s: Server, ls: LaunchSettings, time_limit_s: float | None = None) -> Launch:
    """The job that starts ``s``: its spec's environment plus the launcher's settings, in the
    preemptible partition or QOS where ``s`` is a harvested server."""
    env = dict(s.spec.env)
    env.update(
        launch_env(
            url=ls.url,
            token=ls.token,
            server_id=s.id,
            spec=s.spec.name,
            lease_s=ls.lease_s,
            startup_timeout_s=s.spec.startup_timeout_s,
            concurrency=s.spec.concurrency,
            monitor_interval_s=ls.monitor_interval_s,
            registration_dir=ls.registration_dir,
        )
    )
    return Launch(s.id, s.spec, env, ls.log_dir, time_limit_s, preemptible=s.preemptible)


class Jobs:
    """Submits and cancels the pool's jobs through the backend, in tasks of the pool's."""

    def __init__(
        self,
        backend: Backend,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        ended: Callable[[str, str, bool], None],
    ) -> None:
        self.backend = backend
        self._spawn = spawn
        self._ended = ended  # the pool's job_ended: a submit that fails ends its servers
        self.settings: LaunchSettings | None = None  # set when the scaler starts

    def submit(self, servers: list[Server], time_limit_s: float | None = None) -> None:
        """Submit ``servers``' jobs as one batch (a job array): they share one time limit and one
        ``preemptible`` (the pool starts each ``Start`` of the policy as one submit)."""
        assert len({s.preemptible for s in servers}) <= 1, "one submit, one kind of job"
        ls = self.settings
        assert ls is not None, "Scaler.start() gives the launch settings"
        self._spawn(self._submit([launch_for(s, ls, time_limit_s) for s in servers]))

    async def _submit(self, launches: list[Launch]) -> None:
        try:
            await self.backend.submit(launches)
        except Exception as exc:  # a backend error fails these starts, the balancer keeps serving
            for launch in launches:
                self._ended(launch.server_id, f"submit failed: {type(exc).__name__}: {exc}", True)

    def cancel(self, s: Server) -> None:
        self._spawn(self.backend.cancel(s.id))

    def cancel_after_grace(self, s: Server) -> None:
        """Cancel ``s``'s job unless it ends within ``LEASE_STOP_GRACE_S`` (a lease stop ends it first)."""
        self._spawn(self._cancel_later(s))

    async def _cancel_later(self, s: Server) -> None:
        await asyncio.sleep(LEASE_STOP_GRACE_S)
        if s.state is not ServerState.GONE:
            await self.backend.cancel(s.id)
