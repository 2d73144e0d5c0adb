"""Wiring: one balancer = event bus + pool + call path + control API + scaler over a given backend.

Data flows one way: client -> frontend (HTTP) -> ``calls`` -> ``dispatcher`` -> ``pool`` -> model
server. The ``scaler`` observes the pool and applies the pure ``policy``; the backend reports job
fates to the pool. Everything runs on one event loop, so no locks are needed. The backend is built
by the caller (``cli``) and handed in, so tests can hand in a fake one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import protocol
from .backends.base import Backend
from .calls import Calls, shmem_unsupported, test_shmem
from .config import BalancerConfig
from .control import Control
from .dispatcher import NoServerError
from .events import Ev, EventBus
from .filereg import FileRegistration
from .frontend import Reply, Request, Router
from .policy import Limits, StopReason
from .pool import Pool
from .probe import Probe
from .scaler import LaunchSettings, Scaler

STOP_WAIT_S = 5.0  # after the stop of every server, how long to wait for their jobs to end


class Balancer:
    def __init__(
        self,
        cfg: BalancerConfig,
        bus: EventBus,
        run_dir: Path,
        token: str,
        backend: Backend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.bus = bus
        self.run_dir = run_dir
        self.token = token
        self.backend = backend
        self.probe = Probe()
        self.pool = Pool(cfg, bus, backend, clock=clock, state_dir=run_dir)
        backend.bind(self.pool)
        self.calls = Calls(self.pool, bus, self.probe, cfg.max_body_mb)
        self.scaler = Scaler(self.pool, bus, backend, Limits.from_config(cfg), cfg.scale_interval_s, clock)
        self.control = Control(self.pool, bus, self.probe, token, cfg.lease_s, self._status_extra)
        self.url = f"http://{cfg.host}:{cfg.port}"
        self.files: FileRegistration | None = None
        if cfg.registration == "file":
            reg_dir = Path(cfg.registration_dir) if cfg.registration_dir else run_dir / "registration"
            self.files = FileRegistration(reg_dir, self.control, bus, cfg.lease_s)

    def _status_extra(self) -> dict[str, Any]:
        return {"inflight": self.calls.inflight, "scaler": self.scaler.status()}

    async def start(self, url: str) -> None:
        """Start the backend (a ConfigError here leaves nothing to clean up), then the scaler."""
        self.url = url
        await self.backend.start()
        reg_dir = None
        if self.files is not None:  # registration through files: the directory is there first
            await self.files.start()
            reg_dir = self.files.dir
        url = self.cfg.advertise_url or url
        launch = LaunchSettings(url, self.token, self.cfg.lease_s, self.run_dir / "logs", reg_dir)
        self.scaler.start(launch)

    async def shutdown(self, reason: str) -> None:
        """Let in-flight calls finish within the grace period, then stop every server."""
        pool, calls = self.pool, self.calls
        self.bus.emit(Ev.BALANCER_STOPPING, reason=reason, inflight=calls.inflight)
        pool.closing = True
        pool.changed()
        await pool.wait_for(lambda: calls.inflight == 0, self.cfg.shutdown_grace_s, stop_on_close=False)
        for model in list(pool.dispatcher.queues):
            pool.dispatcher.fail_waiters(model, NoServerError("the balancer is shutting down"))
        await self.scaler.stop()
        for s in pool.live():
            pool.stop(s, StopReason.SHUTDOWN.value, fallback=False)
        await pool.wait_for(lambda: not pool.servers, STOP_WAIT_S, stop_on_close=False)  # gone ones leave
        if self.files is not None:
            await self.files.stop()
        await self.backend.close()
        pool.cancel_tasks()
        await self.probe.close()
        self.bus.emit(Ev.BALANCER_STOPPED)

    def router(self) -> Router:
        calls, control = self.calls, self.control
        r = Router()
        r.add("GET", "/Info", calls.info)
        for op in protocol.EVAL_OPS:
            r.add("POST", f"/{op}", _bind(calls.evaluate, op))
            r.add("POST", f"/{op}ShMem", shmem_unsupported)
        for op in protocol.META_OPS:
            r.add("POST", f"/{op}", _bind(calls.metadata, op))
        r.add("POST", "/TestShMem", test_shmem)
        r.add("POST", "/api/servers/register", control.register)
        r.add_prefix("POST", "/api/servers/", control.servers)
        r.add_prefix("POST", "/api/specs/", control.resume_spec)
        r.add("GET", "/api/status", control.status)
        return r


def _bind(fn: Any, op: str) -> Any:
    async def handler(request: Request) -> Reply:
        return await fn(request, op)

    return handler
