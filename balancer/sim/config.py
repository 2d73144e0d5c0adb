"""The simulated balancer's settings for its one spec, and the simulator's own (time step, forecast
horizon, scheduler estimate, what a preempted server does with its notice)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from balancer.config.schema import ForecastRules
from balancer.policy.types import Limits, SpecLimits

SPEC = "model"
HARM_WINDOW_S = 7 * 86400.0  # harm is measured on the jobs queued at the start or submitted within
ON_NOTICE = ("now", "hold", "idle")


@dataclass(frozen=True)
class SimConfig:
    """The balancer's settings for the simulated spec, and the simulator's own."""

    max_servers: int = 32
    cpus: int = 1
    backlog: int = 2
    time_limit_s: float = 4 * 3600.0
    idle_timeout_s: float = 60.0
    startup_delay_s: float = 30.0  # job start to server ready (launcher, model load, registration)
    tick_s: float = 30.0
    margin_s: float = 60.0
    rules: ForecastRules = field(default_factory=ForecastRules)
    forecaster: str = "seasonal-naive-day"
    step_s: float = 900.0
    horizon_s: float = 48 * 3600.0
    give_up_after_s: float = 30 * 86400.0  # a campaign not done by then is reported unfinished
    scheduler_estimate: bool = True  # the forecast policy's view carries the scheduler's expected wait
    floor: int | None = None  # hybrid: normal-priority servers below the harvest (None: policy default)
    pending_timeout_s: float | None = None
    harm_window_s: float = HARM_WINDOW_S
    # What a preempted server does with the grace time: "now" (the default, as the live launcher
    # does on the unrequested SIGTERM: it hands its call back and its job ends at the notice, so
    # the CPUs go to the preempting job without waiting out the grace), "hold" (its call finishes
    # if it ends in time, its job ends with the grace) or "idle" (its job ends once it has no call).
    on_notice: str = "now"
    # What harvest and hybrid are told while the forecaster is cold: the current observation alone
    # (True, the default) or nothing, as the live balancer does (``CapacityService.view`` is None
    # until a forecast is trained: every policy then scales by demand within the backlog).
    observe_cold: bool = True

    def limits(self, policy: str = "forecast") -> Limits:
        # The start-up timeout counts from the job's start (issue 20); the simulated start-up is a
        # fixed ``startup_delay_s``, so no start is ever given up here.
        spec = SpecLimits(
            SPEC,
            max_servers=self.max_servers,
            backlog=self.backlog,
            idle_timeout_s=self.idle_timeout_s,
            startup_timeout_s=math.inf,
            cpus=self.cpus,
            max_time_limit_s=self.time_limit_s,
            pending_timeout_s=self.pending_timeout_s,
            floor=self.floor,
        )
        return Limits((spec,), self.margin_s, replace(self.rules, policy=policy))
