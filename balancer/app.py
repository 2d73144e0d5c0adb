"""Wiring: one balancer = event bus + pool + call path + control API + scaler over a given backend.

Data flows one way: client -> frontend (HTTP) -> ``calls`` -> ``dispatcher`` -> ``pool`` -> model
server. The ``scaler`` observes the pool and applies the pure ``policy``; the backend reports job
fates to the pool. Everything runs on one event loop, so no locks are needed. Each component gets
its collaborators here, in its constructor; the backend is built by the caller (``runner``) and
handed in, so tests can hand in a fake one. The process around it (run directory, listeners'
ports, signals) is ``runner.Runner``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from balancer.backends.base import Backend
from balancer.calls.dispatcher import Dispatcher
from balancer.calls.path import Calls
from balancer.capacity.api import ForecastApi
from balancer.capacity.service import ForecastService
from balancer.config.schema import BalancerConfig
from balancer.control.admission import ControlGate
from balancer.control.api import Control
from balancer.control.filereg import FileRegistration
from balancer.control.probe import Probe
from balancer.http.messages import HttpLimits
from balancer.http.peer import user_uids
from balancer.http.server import FrontServer
from balancer.http.urls import url_host
from balancer.observe.events import Ev, EventBus, Throttled
from balancer.observe.notify import Notifications
from balancer.observe.recent import Recent
from balancer.ops.access import PeerGate
from balancer.ops.api import OperatorApi
from balancer.ops.dashboard import Dashboard
from balancer.ops.feed import Feed
from balancer.ops.metrics import Metrics
from balancer.ops.origin import HostCheck
from balancer.ops.reload import ConfigSource, Reloadable, Reloader
from balancer.policy.types import Limits, StopReason
from balancer.pool.holding import held_cpus
from balancer.pool.jobs import LaunchSettings
from balancer.pool.members import NoServerError
from balancer.pool.pool import Pool
from balancer.pool.scaler import Scaler
from balancer.profiling.gpus import server_gpus
from balancer.profiling.workload import UsageAggregator, journal_priors
from balancer.routes import client_router, control_router

if TYPE_CHECKING:
    from balancer.capacity.history import History
    from balancer.capacity.monitor import CapacityMonitor
    from balancer.profiling.recorder import Profiler

STOP_WAIT_S = 5.0  # after the stop of every server, how long to wait for their jobs to end
FIRST_FORECAST_S = 10.0  # at start, how long the first scaling pass waits for a first forecast
FIRST_SAMPLE_AFTER_S = 0.05  # the demand policy: the first jobs' submissions fork before the sample's


class Balancer:
    def __init__(
        self,
        cfg: BalancerConfig,
        bus: EventBus,
        run_dir: Path,
        token: str,
        backend: Backend,
        clock: Callable[[], float] = time.monotonic,
        http_limits: HttpLimits | None = None,
        source: ConfigSource | None = None,
    ) -> None:
        self.bus = bus
        self.run_dir = run_dir
        self.token = token
        self.backend = backend
        self.probe = Probe()
        self.recent = Recent(bus)  # the rare events a dashboard tab opened late shows
        dispatcher = Dispatcher(clock=clock)  # the call path's; the pool keeps its members in step
        self.pool = Pool(cfg, bus, backend, dispatcher, clock=clock, state_dir=run_dir)
        backend.bind(self.pool)
        self.calls = Calls(self.pool, dispatcher, bus, self.probe, cfg.max_body_mb)
        fc = cfg.forecast
        self.history: History | None = None  # capacity samples (SQLite, outlives the run), when collected
        self.monitor: CapacityMonitor | None = None
        self._first: asyncio.Future[None] | None = None
        if fc.collect:
            from balancer.capacity.history import open_history

            self.history = open_history(fc)
        # The history is shared by every run of its owner: train on this scheduler's samples and
        # on imported traces, never on a local demo's samples mixed into a cluster's.
        # Capacity = idle + ours: the pool says what our running jobs hold (one truth for the
        # collected samples and the scaler's view), so our own load never reads as others'.
        self.forecast = ForecastService(
            fc, bus, self.history, sources=(cfg.scheduler, "swf", "sacct"), held=self._held_cpus
        )
        if fc.collect:
            from balancer.capacity.collectors import make_collector
            from balancer.capacity.monitor import CapacityMonitor

            collector = make_collector(cfg, backend)
            self.monitor = CapacityMonitor(
                collector, self.history, self.forecast, bus, fc.collect_interval_s, held=self._held_cpus
            )
        limits = Limits.from_config(cfg)
        self.scaler = Scaler(self.pool, bus, limits, cfg.scale_interval_s, clock, forecast=self.forecast.view)
        self.control = Control(
            self.pool, bus, self.probe, token, cfg.lease_s, self._status_extra, self._gpus_of
        )
        self.forecast_api = ForecastApi(self.forecast, self.control.authorized)
        users = user_uids(cfg.allow_users).values()
        self.gate = PeerGate(bus, (*cfg.allow_uids, *users), cfg.allow_remote, connections=self._client_conns)
        self.control_gate = ControlGate(bus, token)  # the control listener's: owner or token, bounded
        self.metrics = Metrics(self.pool, lambda: self.calls.inflight, self.forecast)
        bus.subscribe(self.metrics, only=self.metrics.events)
        # Workload class per spec from server.usage (workload.py); the local backend pins CPU-bound.
        self.workload = UsageAggregator(bus, self._busy, self._models_of)
        bus.subscribe(self.workload, only=UsageAggregator.EVENTS)
        backend.use_workload(self.workload.current)
        self.profiler: Profiler | None = None  # model profiles (profiling/recorder.py), [profiles] on
        if cfg.profiles.enabled:
            from balancer.profiling.recorder import open_profiler

            self.profiler = open_profiler(cfg, bus)
        self.notify = Notifications(cfg.notify, bus)  # a notifier from the first address on
        reg_dir = Path(cfg.registration_dir) if cfg.registration_dir else run_dir / "registration"
        self.files = None  # registration through files (a cluster without HTTP to the balancer)
        if cfg.registration == "file":
            self.files = FileRegistration(reg_dir, self.control, bus, cfg.lease_s)
        parts = Reloadable(
            bus, self.pool, backend, self.scaler, self.calls, self.control, self.gate, self.forecast,
            self.workload, self.notify, lambda: (self.front, self.control_front), self.files, self.monitor,
            self.history, self.profiler,
        )  # fmt: skip
        # Live reload (reload.py): the file, its digest and the command line's options from the runner.
        self.reloader = Reloader(parts, cfg, source or ConfigSource(cfg))
        # Classes in /api/status, GPUs in /api/servers.
        authorized = self.control.authorized
        self.operator = OperatorApi(self.pool, self.scaler, bus, authorized, self.workload, self.reloader)
        # The dashboard's feed subscribes to the bus only while a tab is open.
        feed = Feed(
            self.pool, bus, self.scaler, self.forecast, self.monitor, lambda: self.calls.inflight,
            usage_latest=self.workload.latest, recent=self.recent,
        )  # fmt: skip
        self.dashboard = Dashboard(feed)
        http = http_limits or HttpLimits(max_body=cfg.max_body_bytes)
        # A handler's bug answers 500 and is journaled (balancer.error), one line per 10 s with a count.
        http_errors = Throttled(bus, Ev.BALANCER_ERROR, 10.0)

        def on_error(route: str, error: str) -> None:
            http_errors.note(where="http", error=f"{route}: {error}")

        # Every request's Host and Origin: no DNS rebinding, no cross-site request (ops/origin.py).
        hosts = HostCheck(cfg.host, cfg.allow_hosts)
        self.front = FrontServer(
            client_router(self), http, admit=self.gate, on_error=on_error, check=hosts
        )  # owner-only
        self.control_front = FrontServer(
            control_router(self),
            http,
            admit=self.control_gate,
            on_error=on_error,
            check=self.control_gate.check,
        )  # the launchers'
        self.url = f"http://{url_host(cfg.host)}:{cfg.port}"

    @property
    def cfg(self) -> BalancerConfig:
        """The configuration in force: the one at start, or the last reload's."""
        return self.reloader.cfg

    def _client_conns(self) -> list[asyncio.BaseTransport]:
        """The client port's open connections, for the gate to ask again after a reload."""
        return [c.transport for c in self.front.conns if c.transport is not None]

    def _models_of(self, spec: str) -> list[str]:
        rt = self.pool.specs.get(spec)  # None: a reload removed it
        return sorted(rt.models) if rt is not None else []

    def _busy(self) -> list[tuple[str, int, int, float]]:
        return [(s.id, s.calls, s.outstanding, s.busy_s) for s in self.pool.servers.values()]

    def _held_cpus(self) -> dict[str, float]:
        """Partition -> CPUs our servers' running jobs hold: capacity is idle + ours."""
        return held_cpus(self.pool.servers.values(), self.backend.partition_of)

    def _gpus_of(self, server: str) -> list[dict[str, Any]] | None:
        """A server's GPUs for the status and the operator's list (profiling/gpus.py)."""
        return server_gpus(self.backend, self.workload.latest, server)

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
        # A policy that reads the forecast gets a first sample and a first training before the first
        # scaling pass, so a balancer that starts on a full cluster with a trained history never
        # floods the queue in its first second (bounded; the rest goes on in the background). The
        # demand policy never reads it: its first jobs are submitted first, and the first forecast
        # (the scheduler's commands, numpy's import, the training: ~0.1-0.2 s of CPU) runs while
        # they wait in the scheduler's queue, where the balancer has nothing else to do.
        first_forecast = self.monitor is not None and self.cfg.rules.policy != "demand"
        if first_forecast:
            self._first = asyncio.ensure_future(self._first_forecast())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._first), FIRST_FORECAST_S)
        store = self.profiler.store if self.profiler is not None else None
        await journal_priors(self.cfg.servers, self.bus, self.workload, store)
        self.workload.start(self.cfg.monitor_interval_s, self.cfg.lease_s)
        self.scaler.start(launch)
        if self.monitor is not None and not first_forecast:
            self._first = asyncio.ensure_future(self._first_forecast(FIRST_SAMPLE_AFTER_S))
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
        self.control_gate.close()
        if self.history is not None:
            self.history.close()
        if self.profiler is not None:  # the run's last figures into the profile store
            await self.profiler.close()
        await self.notify.close()  # pending notices and the run summary, bounded wait
        self.bus.emit(Ev.BALANCER_STOPPED)

    async def _first_forecast(self, after_s: float = 0.0) -> None:
        assert self.monitor is not None
        if after_s:
            await asyncio.sleep(after_s)
        await self.monitor.sample_once()
        await self.forecast.train_once()
        self.monitor.start(first_done=True)
        self.forecast.start(first_done=True)
