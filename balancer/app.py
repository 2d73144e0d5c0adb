"""Wiring: one balancer = event bus + pool + call path + control API + scaler over a given backend.

Data flows one way: client -> frontend (HTTP) -> ``calls`` -> ``dispatcher`` -> ``pool`` -> model
server. The ``scaler`` observes the pool and applies the pure ``policy``; the backend reports job
fates to the pool. Everything runs on one event loop, so no locks are needed. The backend is built
by the caller (``cli``) and handed in, so tests can hand in a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from balancer.backends.base import Backend
from balancer.calls import protocol
from balancer.calls.dispatcher import NoServerError
from balancer.calls.path import Calls, shmem_unsupported, test_shmem
from balancer.capacity.api import ForecastApi
from balancer.capacity.service import ForecastService
from balancer.config.load import BalancerConfig
from balancer.control.api import Control
from balancer.control.filereg import FileRegistration
from balancer.control.probe import Probe
from balancer.http.server import Reply, Request, Router
from balancer.observe.events import Ev, EventBus
from balancer.observe.metrics import Metrics
from balancer.observe.notify import Notifier
from balancer.ops.access import PeerGate
from balancer.ops.api import OperatorApi
from balancer.ops.dashboard import Dashboard, Feed
from balancer.ops.peer import user_uids
from balancer.ops.reload import Reloader
from balancer.policy.decide import Limits, StopReason
from balancer.pool.pool import Pool
from balancer.pool.scaler import LaunchSettings, Scaler
from balancer.profiling.workload import UsageAggregator, journal_priors

STOP_WAIT_S = 5.0  # after the stop of every server, how long to wait for their jobs to end
FIRST_FORECAST_S = 10.0  # at start, how long the first scaling pass waits for a first forecast


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
        fc = cfg.forecast
        self.history = _history(fc) if fc.collect else None
        self.forecast = ForecastService(fc, bus, self.history)
        self.forecast.sources = (cfg.scheduler, "swf", "sacct")
        self.monitor: Any = None
        self._first: asyncio.Future[None] | None = None
        if fc.collect:
            from balancer.capacity.collectors import make_collector
            from balancer.capacity.monitor import CapacityMonitor

            collector = make_collector(cfg, backend)
            self.monitor = CapacityMonitor(collector, self.history, self.forecast, bus, fc.collect_interval_s)
        limits = Limits.from_config(cfg)
        self.scaler = Scaler(
            self.pool, bus, backend, limits, cfg.scale_interval_s, clock, forecast=self.forecast.view
        )
        self.control = Control(self.pool, bus, self.probe, token, cfg.lease_s, self._status_extra)
        self.forecast_api = ForecastApi(self.forecast, self.control.authorized)
        users = user_uids(cfg.allow_users).values()
        self.gate = PeerGate(bus, (*cfg.allow_uids, *users), cfg.allow_remote)  # the client port's
        self.metrics = Metrics(self.pool, lambda: self.calls.inflight, self.forecast)
        bus.subscribe(self.metrics)
        # Workload class per spec from server.usage (workload.py); the local backend pins CPU-bound.
        self.workload = UsageAggregator(bus, self._busy, self._models_of)
        bus.subscribe(self.workload)
        if hasattr(backend, "workload_of"):
            backend.workload_of = self.workload.current
        self.profiler = _profiler(cfg, bus)  # model profiles (profiler.py); None when off
        self.notifier: Notifier | None = None
        if cfg.notify.urls:
            self.notifier = Notifier(cfg.notify, bus)
            bus.subscribe(self.notifier)
        self.operator = OperatorApi(self.pool, self.scaler, bus, self.control.authorized)
        self.operator.workload = self.workload  # classes in /api/status, GPUs in /api/servers
        # The dashboard's feed subscribes to the bus only while a tab is open.
        feed = Feed(self.pool, bus, self.scaler, self.forecast, self.monitor, lambda: self.calls.inflight)
        feed.usage_latest = self.workload.latest
        self.dashboard = Dashboard(feed)
        self.url = f"http://{cfg.host}:{cfg.port}"
        self.fronts: list[Any] = []  # the listeners (cli): a reload changes their body limit
        # Live reload (reload.py); cli tells it the file, its digest and the command line's options.
        self.reloader = Reloader(self, cfg)
        self.operator.reloader = self.reloader
        self.files: FileRegistration | None = None
        if cfg.registration == "file":
            reg_dir = Path(cfg.registration_dir) if cfg.registration_dir else run_dir / "registration"
            self.files = FileRegistration(reg_dir, self.control, bus, cfg.lease_s)

    def _models_of(self, spec: str) -> list[str]:
        rt = self.pool.specs.get(spec)  # None: a reload removed it
        return sorted(rt.models) if rt is not None else []

    def set_notify(self, settings: Any) -> None:
        """A reloaded ``[notify]``: the notifier takes it, or starts with the first address."""
        if self.notifier is not None:
            self.notifier.reconfigure(settings)
        elif settings.urls:
            self.notifier = Notifier(settings, self.bus)
            self.bus.subscribe(self.notifier)

    def _busy(self) -> list[tuple[str, int, int, float]]:
        return [(s.id, s.calls, s.outstanding, s.busy_s) for s in self.pool.servers.values()]

    def _status_extra(self) -> dict[str, Any]:
        fc = self.forecast.status()
        forecast = {k: fc[k] for k in ("enabled", "state", "in_use", "model", "override")}
        if self.monitor is not None:
            forecast["collector"] = self.monitor.status()
        return {
            "inflight": self.calls.inflight,
            "scaler": self.scaler.status(),
            "forecast": forecast,
            **self.operator.status_extra(),
            "dashboard": self.dashboard.feed.status(),
            **({"profiles": self.profiler.status()} if self.profiler is not None else {}),
            "config": self.reloader.status(),
        }

    async def start(self, url: str, control_url: str | None = None) -> None:
        """Start the backend (a ConfigError here leaves nothing to clean up), then the scaler.
        Launchers are told ``advertise_url``, else the control listener's ``control_url``."""
        self.url = url
        await self.backend.start()
        reg_dir = None
        if self.files is not None:  # registration through files: the directory is there first
            await self.files.start()
            reg_dir = self.files.dir
        url = self.cfg.advertise_url or control_url or url
        launch = LaunchSettings(
            url, self.token, self.cfg.lease_s, self.run_dir / "logs", reg_dir, self.cfg.monitor_interval_s
        )
        if self.monitor is not None:
            # A first sample and a first training before the first scaling pass, so a balancer that
            # starts on a full cluster with a trained history never floods the queue in its first
            # second; bounded, the rest goes on in the background.
            self._first = asyncio.ensure_future(self._first_forecast())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._first), FIRST_FORECAST_S)
        store = self.profiler.store if self.profiler is not None else None
        await journal_priors(self.cfg.servers, self.bus, self.workload, store)
        self.workload.start(self.cfg.monitor_interval_s, self.cfg.lease_s)
        self.scaler.start(launch)
        if self.profiler is not None:
            self.profiler.start()

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
        self.workload.close()
        if self.monitor is not None:
            if self._first is not None:
                self._first.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._first
            await self.monitor.stop()
            await self.forecast.stop()
        for s in pool.live():
            pool.stop(s, StopReason.SHUTDOWN.value, fallback=False)
        await pool.wait_for(lambda: not pool.servers, STOP_WAIT_S, stop_on_close=False)  # gone ones leave
        if self.files is not None:
            await self.files.stop()
        await self.backend.close()
        pool.cancel_tasks()
        await self.probe.close()
        self.gate.close()
        if self.history is not None:
            self.history.close()
        if self.profiler is not None:  # the run's last figures into the profile store
            await self.profiler.close()
        if self.notifier is not None:  # pending notices and the run summary, bounded wait
            await self.notifier.close()
        self.bus.emit(Ev.BALANCER_STOPPED)

    async def _first_forecast(self) -> None:
        assert self.monitor is not None
        await self.monitor.sample_once()
        await self.forecast.train_once()
        self.monitor.start(first_done=True)
        self.forecast.start(first_done=True)

    def control_router(self) -> Router:
        """The launchers' API on its own listener (``control_host``: where compute nodes reach it),
        token only; the client port does not serve it."""
        r = Router()
        r.add("POST", "/api/servers/register", self.control.register)
        r.add_prefix("POST", "/api/servers/", self.control.servers)  # lease, exited
        # Prometheus on another host scrapes here (token), without opening the owner-only client port.
        r.add("GET", "/metrics", lambda req: self.metrics.endpoint(req, self.control.authorized))
        return r

    def client_router(self) -> Router:
        """UM-Bridge and the operator's routes, on the owner-only client port (``host``)."""
        calls, control = self.calls, self.control
        r = Router()
        r.add("GET", "/Info", calls.info)
        for op in protocol.EVAL_OPS:
            r.add("POST", f"/{op}", _bind(calls.evaluate, op))
            r.add("POST", f"/{op}ShMem", shmem_unsupported)
        for op in protocol.META_OPS:
            r.add("POST", f"/{op}", _bind(calls.metadata, op))
        r.add("POST", "/TestShMem", test_shmem)
        r.add_prefix("POST", "/api/servers/", self.operator.server_action)  # drain, stop
        r.add_prefix("POST", "/api/specs/", self.operator.spec_action)
        r.add("POST", "/api/reload", self.operator.reload)
        r.add("GET", "/api/servers", self.operator.servers)
        r.add("GET", "/api/status", control.status)
        r.add("GET", "/metrics", lambda req: self.metrics.endpoint(req, control.authorized))
        r.add("GET", "/api/forecast", self.forecast_api.get)
        r.add("PUT", "/api/forecast", self.forecast_api.put)
        r.add("DELETE", "/api/forecast", self.forecast_api.delete)
        for method, path, handler, prefix in self.dashboard.routes():  # read-only: no token
            (r.add_prefix if prefix else r.add)(method, path, handler)
        return r


def _history(fc: Any) -> Any:
    """The capacity history (SQLite, outlives the run) at the configured or the default path."""
    from balancer.capacity.history import History, default_history_path

    path = Path(fc.history).expanduser() if fc.history else default_history_path()
    return History(path, retention_s=fc.retention_days * 86400.0)


def _profiler(cfg: BalancerConfig, bus: EventBus) -> Any:
    """The profiler on the bus, its store open; a store that cannot be opened is journaled, and
    the run goes on without profiles."""
    if not cfg.profiles.enabled:
        return None
    from balancer.profiling.recorder import Profiler, open_store

    try:
        store = open_store(cfg.profiles)
    except Exception as exc:  # sqlite3.Error, OSError: a read-only home must not stop the balancer
        bus.emit(Ev.BALANCER_ERROR, where="profiles", error=f"{type(exc).__name__}: {exc}", count=1)
        return None
    profiler = Profiler(cfg, bus, store)
    bus.subscribe(profiler)
    return profiler


def _bind(fn: Any, op: str) -> Any:
    async def handler(request: Request) -> Reply:
        return await fn(request, op)

    return handler
