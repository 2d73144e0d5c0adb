"""One spec's ``Tick``: the working tally that the scaling rules read and extend, in order.

The rules (``policy.ends``, ``policy.starts``, run in ``policy.rules.SPEC_RULES`` order) share no
state but this: what the earlier ones made of each server (starting, ready, draining, withdrawn)
and the counts that bound the later ones (live, queued, occupied). Keeping the tally and its few
mutations in one place keeps those counts consistent whichever rule changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from balancer.config.schema import ForecastRules
from balancer.policy.harvest import HARVESTING, hybrid_floor
from balancer.policy.types import (
    Action,
    Drain,
    ForecastView,
    Phase,
    ServerView,
    SpecLimits,
    SpecObserved,
    Stop,
    StopReason,
)

HOLD_RETRY_CAP_S = 600.0  # a held spec tries a start at least this often


def start_backoff_s(consecutive_failures: int) -> float:
    """Delay before the next start of a spec whose last starts failed: 1, 2, 4, ... up to 60 s."""
    if consecutive_failures <= 0:
        return 0.0
    return float(min(60, 2 ** (consecutive_failures - 1)))


def hold_retry_s(consecutive_failures: int) -> float:
    """Delay after its last failure before a held spec tries one start again: 32 s after the third
    failure, doubling up to 10 min, so a spec whose starts were killed from outside recovers."""
    return float(min(HOLD_RETRY_CAP_S, 2 ** min(20, consecutive_failures + 2)))


def is_queued(s: ServerView) -> bool:
    """A start whose job still waits in the scheduler's queue: what admission and the backlog bound."""
    return s.phase is Phase.STARTING and s.started_m is None


@dataclass
class Tick:
    """One spec's working tally while its rules run: the inputs, the actions so far, and the
    servers sorted by what the earlier rules made of them. ``budget`` (admission's idle CPUs left)
    is shared by all specs of the tick."""

    lim: SpecLimits
    obs: SpecObserved
    now: float
    margin: float
    fv: ForecastView | None = None
    rules: ForecastRules = field(default_factory=ForecastRules)
    budget: list[float] | None = None
    out: list[Action] = field(default_factory=list)
    held: bool = False
    starting: list[ServerView] = field(default_factory=list)
    ready: list[ServerView] = field(default_factory=list)
    draining: list[ServerView] = field(default_factory=list)
    drained_now: set[str] = field(default_factory=set)
    retired: set[str] = field(default_factory=set)  # drained now with no replacement of their own
    ahead: list[str] = field(default_factory=list)  # ready servers whose successors may queue now
    n_starting: int = 0
    n_queued: int = 0  # starts whose job still waits in the queue, this tick's new starts included
    n_ready: int = 0
    live: int = 0  # live servers the spec aims for, as the rules have it so far
    occupied: int = 0  # servers not stopping (starting, ready, draining): what max_servers bounds
    rollout: int = 0  # successors still to start in a rolling replacement
    kinds: set[bool] = field(default_factory=set)  # ``preemptible`` of the starts emitted so far

    @property
    def policy(self) -> str:
        return self.rules.policy

    @property
    def forecasting(self) -> bool:
        """The forecast policy's own rules apply (pre-warm, replace-ahead, fitted time limits, polite)."""
        return self.fv is not None and self.policy not in HARVESTING

    def drain(self, s: ServerView, action: Drain, retired: bool = False) -> None:
        self.out.append(action)
        self.draining.append(s)
        self.drained_now.add(s.id)
        if retired:
            self.retired.add(s.id)
        self.n_ready -= 1
        self.live -= 1

    def unstart(self, s: ServerView, reason: StopReason) -> None:
        """Stop a start whose job still waits in the queue (not a failed start)."""
        self.starting.remove(s)
        self.n_starting -= 1
        self.n_queued -= 1
        self.live -= 1
        self.occupied -= 1
        if self.budget is not None:
            self.budget[0] += self.lim.cpus  # its CPUs were counted as pending
        self.out.append(Stop(self.lim.name, s.id, reason, target=self.live))

    def normal_live(self) -> int:
        """Live normal-priority servers (hybrid's floor counts these)."""
        live = (*self.starting, *self.ready)
        return sum(1 for s in live if not s.preemptible and s.id not in self.drained_now)

    def next_preemptible(self) -> bool:
        """Whether the next single start (a retry, a successor) is harvested."""
        if self.policy == "harvest":
            return True
        return self.policy == "hybrid" and self.normal_live() >= hybrid_floor(self.lim)

    def backing_off(self) -> bool:
        obs = self.obs
        return obs.failures > 0 and self.now < obs.last_failure_m + start_backoff_s(obs.failures)
