"""The scaler: observe the pool, ask the pure policy, apply its actions.

Each pass builds ``policy.Observed`` from the pool (one walk over the live servers), calls
``policy.decide`` and carries out what it returns through the pool (which owns the servers' jobs):
start servers, stop, drain, give up a start, hold a spec. The policy's own memory (cool-down
stamps) comes back in its ``Decision`` and is handed back on the next pass as it is. It runs every
``scale_interval_s`` and at once (at most every ``MIN_GAP_S``) when a call starts waiting or a
server changes state. A pass that raises is journaled (``balancer.error``) and shown in the status
API; the next pass runs as usual, so a bug can never leave the pool silently dead. The clock is
injectable for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from balancer.observe.events import Ev, EventBus
from balancer.policy.decide import decide, reads_forecast
from balancer.policy.rules import admission_cpus
from balancer.policy.types import (
    Action,
    Decision,
    Drain,
    ForecastView,
    GiveUp,
    Hold,
    Limits,
    Observed,
    SpecMemory,
    SpecObserved,
    Start,
    StartReason,
    Stop,
    StopReason,
)
from balancer.pool.jobs import LaunchSettings
from balancer.pool.pool import Pool
from balancer.pool.servers import Mark, Server
from balancer.pool.states import ServerState

MIN_GAP_S = 0.01  # however many calls queue, at most one pass per 10 ms
ERROR_REPEAT_S = 60.0  # the same error is journaled again after this long


class Scaler:
    def __init__(
        self,
        pool: Pool,
        bus: EventBus,
        limits: Limits,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        policy: Callable[[Limits, Observed, float], Decision] = decide,
        forecast: Callable[[], ForecastView | None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.limits = limits
        self.interval_s = interval_s
        self.clock = clock
        self.policy = policy
        self.forecast = forecast  # the forecast service's current view; None: demand only
        self._observed: Observed | None = None  # this pass's inputs, journaled with its decisions
        self._memory: dict[str, SpecMemory] = {}  # the policy's, from its last decision
        self.passes = 0
        self.error: str | None = None  # the last pass's error, None after a good pass
        self.errors = 0
        self._error_journaled: tuple[str, float] | None = None
        self._task: asyncio.Task[None] | None = None

    def reconfigure(
        self, limits: Limits, interval_s: float, lease_s: float, monitor_interval_s: float
    ) -> None:
        """A reload's limits and pass interval, and the lease and usage period that servers started
        from now on are told."""
        self.limits = limits
        self.interval_s = interval_s
        if self.launch is not None:
            self.launch = dataclasses.replace(
                self.launch, lease_s=lease_s, monitor_interval_s=monitor_interval_s
            )

    @property
    def launch(self) -> LaunchSettings | None:
        """What launchers are told; the pool's jobs use it (a reload changes it for new servers)."""
        return self.pool.jobs.settings

    @launch.setter
    def launch(self, settings: LaunchSettings | None) -> None:
        self.pool.jobs.settings = settings

    def start(self, launch: LaunchSettings) -> None:
        self.launch = launch
        self._task = asyncio.create_task(self._loop(), name="scaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        wake = self.pool.wake
        while not self.pool.closing:
            self.run_once()
            wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval_s)
            await asyncio.sleep(MIN_GAP_S)

    def run_once(self) -> list[Action]:
        """One pass; never raises (an error is recorded and journaled instead)."""
        try:
            now = self.clock()
            self._observed = self.observe()
            actions = self.policy(self.limits, self._observed, now)
            self._memory = actions.memory
            for a in actions:
                self.apply(a)
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return []
        if any(rt.removed for rt in self.pool.specs.values()):
            self._forget_removed()
        self.passes += 1
        self.error = None
        return actions

    def _forget_removed(self) -> None:
        """A spec a reload removed leaves the pool and the limits once its last server is gone."""
        gone = self.pool.forget_removed()
        if gone:
            specs = tuple(lim for lim in self.limits.specs if lim.name not in gone)
            self.limits = dataclasses.replace(self.limits, specs=specs)

    def _failed(self, error: str) -> None:
        self.errors += 1
        self.error = error
        now = self.clock()
        last = self._error_journaled
        if last is None or last[0] != error or now - last[1] >= ERROR_REPEAT_S:
            self._error_journaled = (error, now)
            self.bus.emit(Ev.BALANCER_ERROR, where="scaler", error=error, count=self.errors)

    def status(self) -> dict[str, Any]:
        return {"ok": self.error is None, "passes": self.passes, "errors": self.errors, "error": self.error}

    # -- observations ----------------------------------------------------------------------------
    def observe(self) -> Observed:
        pool = self.pool
        by_spec: dict[str, list[Server]] = {name: [] for name in pool.specs}
        for s in pool.servers.values():
            by_spec[s.spec.name].append(s)
        disp = pool.dispatcher
        specs = {}
        for name, rt in pool.specs.items():
            waiting = pool.demand.of(rt.models, rt.discovered)
            memory = self._memory.get(name, SpecMemory())
            oldest = None
            if waiting:
                since = [t for t in (disp.oldest_wait(m) for m in rt.models) if t is not None]
                oldest = min(since) if since else None
            specs[name] = SpecObserved(
                servers=by_spec[name],
                waiting=waiting,
                failures=rt.failures,
                last_failure_m=rt.last_failure_m,
                last_failure=rt.last_failure,
                held=rt.held,
                paused=rt.paused,
                oldest_wait_m=oldest,
                last_idle_stop_m=memory.last_idle_stop_m,
                last_demand_start_m=memory.last_demand_start_m,
            )
        # A policy that never reads the forecast does not have its view (which counts the CPUs every
        # running server holds, O(servers)) built on each pass for nothing.
        forecast = self.forecast() if reads_forecast(self.limits.rules) else None
        return Observed(specs, forecast=forecast, adopting=self.clock() < pool.adopt_until)

    # -- actions ---------------------------------------------------------------------------------
    def apply(self, a: Action) -> None:
        pool = self.pool
        if isinstance(a, Start):
            extra: dict[str, Any] = {"time_limit_s": a.time_limit_s} if a.time_limit_s is not None else {}
            if a.preemptible:
                extra["preemptible"] = True
            self._decision(a.spec, "start", a.reason.value, a.target, count=a.count, **extra)
            pool.mark(a.replaces, Mark.REPLACED)
            rollout = a.reason is StartReason.ROLLOUT
            pool.start_servers(
                a.spec, a.count, a.reason.value, a.time_limit_s, successor=rollout, preemptible=a.preemptible
            )
        elif isinstance(a, Stop):
            # Withdrawn or pending too long: its queued job is cancelled, not a failed start.
            s = pool.servers.get(a.server)
            # A server the operator drained stops for that reason, not the policy's time limit.
            reason = s.drain_reason if s is not None and s.drain_reason else a.reason.value
            self._decision(a.spec, "stop", reason, a.target, server=a.server)
            if s is not None:
                pool.stop(s, reason)
        elif isinstance(a, GiveUp):
            self._decision(a.spec, "stop", "startup_timeout", a.target, server=a.server)
            s = pool.servers.get(a.server)
            if s is not None:
                pool.fail(s, "startup timeout")
        elif isinstance(a, Drain):
            if a.retires is not None:
                pool.mark([a.retires], Mark.SUCCESSOR, False)  # it has taken its place
            s = pool.servers.get(a.server)
            why = StopReason.RETIRED if a.retires is not None else a.reason
            if s is None:
                pass
            elif why is StopReason.TIME_LIMIT:  # not replaced yet: the policy starts one
                pool.transition(s, ServerState.DRAINING, why.value)
            else:  # retired in a rolling replacement, or beyond max_servers: no replacement
                paired: dict[str, Any] = {"successor": a.retires} if a.retires is not None else {}
                self._decision(a.spec, "drain", why.value, 0, server=a.server, **paired)
                pool.drain(s, why.value)
        elif isinstance(a, Hold):
            pool.hold(a.spec, a.failures, a.reason)

    def _decision(self, spec: str, action: str, reason: str, target: int, **fields: Any) -> None:
        """Journal a decision with the policy inputs it was taken on: the spec's waiting calls and,
        with a forecast, its source, the idle CPUs it predicts now and the CPUs it admits."""
        fields.setdefault("count", 1)
        obs = self._observed
        if obs is not None:
            so = obs.specs.get(spec)
            if so is not None:
                fields["waiting"] = so.waiting
            fv = obs.forecast
            if fv is not None and reads_forecast(self.limits.rules):
                fields["forecast"] = fv.source
                fields["idle_cpus"] = round(fv.idle[0], 3) if fv.idle else None
                fields["admit_cpus"] = round(admission_cpus(fv, self.limits.rules), 3)
        self.bus.emit(Ev.SCALE_DECISION, spec=spec, action=action, target=target, reason=reason, **fields)
