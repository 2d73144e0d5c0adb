"""The scaler: observe the pool, ask the pure policy, apply its actions.

Each pass builds ``policy.Observed`` from the pool (one walk over the live servers), calls
``policy.decide`` and carries out what it returns: start servers through the backend, stop,
drain, give up a start, hold a spec. It runs every ``scale_interval_s`` and at once (at most every
``MIN_GAP_S``) when a call starts waiting or a server changes state. A pass that raises is
journaled (``balancer.error``) and shown in the status API; the next pass runs as usual, so a bug
can never leave the pool silently dead. The clock is injectable for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balancer.backends.base import (
    ENV_CONCURRENCY,
    ENV_LEASE,
    ENV_MONITOR,
    ENV_REGISTRATION_DIR,
    ENV_SERVER_ID,
    ENV_SPEC,
    ENV_STARTUP,
    ENV_TOKEN,
    ENV_URL,
    Backend,
    Launch,
)
from balancer.observe.events import Ev, EventBus
from balancer.policy.decide import (
    Action,
    Drain,
    ForecastView,
    GiveUp,
    Hold,
    Limits,
    Observed,
    SpecObserved,
    Start,
    StartReason,
    Stop,
    StopReason,
    admissible_cpus,
    decide,
)
from balancer.pool.pool import Pool, Server, ServerState

MIN_GAP_S = 0.01  # however many calls queue, at most one pass per 10 ms
ERROR_REPEAT_S = 60.0  # the same error is journaled again after this long
RECENT_DECISIONS = 100  # kept for a newly opened dashboard


@dataclass(frozen=True)
class LaunchSettings:
    """What every launcher is told: where the balancer is and how to authenticate."""

    url: str
    token: str
    lease_s: float
    log_dir: Path
    registration_dir: Path | None = None  # registration through files (filereg.py), not HTTP
    monitor_interval_s: float = 5.0  # launchers' usage samples (balancer/launcher/usage.py); 0: none


class Scaler:
    def __init__(
        self,
        pool: Pool,
        bus: EventBus,
        backend: Backend,
        limits: Limits,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        policy: Callable[[Limits, Observed, float], list[Action]] = decide,
        forecast: Callable[[], ForecastView | None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.backend = backend
        self.limits = limits
        self.interval_s = interval_s
        self.clock = clock
        self.policy = policy
        self.forecast = forecast  # the forecast service's current view; None: demand only
        self._observed: Observed | None = None  # this pass's inputs, journaled with its decisions
        self._last_idle_stop: dict[str, float] = {}
        self._last_demand_start: dict[str, float] = {}
        self.launch: LaunchSettings | None = None
        self.passes = 0
        self.error: str | None = None  # the last pass's error, None after a good pass
        self.errors = 0
        self._error_journaled: tuple[str, float] | None = None
        self._task: asyncio.Task[None] | None = None
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_DECISIONS)  # decisions, newest last

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
        meta = pool.meta_waiting
        unknown = meta.get("", 0)
        specs = {}
        for name, rt in pool.specs.items():
            waiting = sum(disp.waiting(m) + meta.get(m, 0) for m in rt.models)
            if not rt.discovered:
                waiting += unknown
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
                last_idle_stop_m=self._last_idle_stop.get(name),
                last_demand_start_m=self._last_demand_start.get(name),
            )
        return Observed(specs, forecast=self.forecast(), adopting=self.clock() < pool.adopt_until)

    # -- actions ---------------------------------------------------------------------------------
    def apply(self, a: Action) -> None:
        pool = self.pool
        if isinstance(a, Start):
            extra = {"time_limit_s": a.time_limit_s} if a.time_limit_s is not None else {}
            self._decision(a.spec, "start", a.reason.value, a.target, count=a.count, **extra)
            if a.reason in (StartReason.DEMAND, StartReason.PREWARM):
                self._last_demand_start[a.spec] = self.clock()
            for sid in a.replaces:
                s = pool.servers.get(sid)
                if s is not None:
                    s.replaced = True
            servers = [pool.add_server(a.spec, a.reason.value) for _ in range(a.count)]
            if a.reason is StartReason.ROLLOUT:
                for s in servers:
                    s.successor = True
            pool.spawn(self._submit([self._launch(s, a.time_limit_s) for s in servers]))
        elif isinstance(a, Stop):
            if a.reason in (StopReason.IDLE, StopReason.POLITE):
                self._last_idle_stop[a.spec] = self.clock()
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
            succ = pool.servers.get(a.retires) if a.retires is not None else None
            if succ is not None:
                succ.successor = False  # it has taken its place
            s = pool.servers.get(a.server)
            why = StopReason.RETIRED if a.retires is not None else a.reason
            if s is None:
                pass
            elif why is StopReason.TIME_LIMIT:  # not replaced yet: the policy starts one
                pool.transition(s, ServerState.DRAINING, why.value)
            else:  # retired in a rolling replacement, or beyond max_servers: no replacement
                extra = {"successor": a.retires} if a.retires is not None else {}
                self._decision(a.spec, "drain", why.value, 0, server=a.server, **extra)
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
            if fv is not None:
                fields["forecast"] = fv.source
                fields["idle_cpus"] = round(fv.idle[0], 3) if fv.idle else None
                fields["admit_cpus"] = round(admissible_cpus(fv, self.limits.rules), 3)
        self.recent.append(
            {"t": time.time(), "spec": spec, "action": action, "target": target, "reason": reason, **fields}
        )
        self.bus.emit(Ev.SCALE_DECISION, spec=spec, action=action, target=target, reason=reason, **fields)

    def _launch(self, s: Server, time_limit_s: float | None = None) -> Launch:
        ls = self.launch
        assert ls is not None, "Scaler.start() gives the launch settings"
        env = dict(s.spec.env)
        env.update(
            {
                ENV_URL: ls.url,
                ENV_TOKEN: ls.token,
                ENV_SERVER_ID: s.id,
                ENV_SPEC: s.spec.name,
                ENV_LEASE: str(ls.lease_s),
                ENV_STARTUP: str(s.spec.startup_timeout_s),
                ENV_CONCURRENCY: str(s.spec.concurrency),
                ENV_MONITOR: str(ls.monitor_interval_s),
            }
        )
        if ls.registration_dir is not None:
            env[ENV_REGISTRATION_DIR] = str(ls.registration_dir)
        return Launch(s.id, s.spec, env, ls.log_dir, time_limit_s)

    async def _submit(self, launches: list[Launch]) -> None:
        try:
            await self.backend.submit(launches)
        except Exception as exc:  # a backend error fails these starts, the balancer keeps serving
            for launch in launches:
                self.pool.job_ended(launch.server_id, f"submit failed: {type(exc).__name__}: {exc}", True)
