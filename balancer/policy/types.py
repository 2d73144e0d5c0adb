"""What the policy sees and what it decides: plain frozen data, no behaviour beyond small views.

``Limits`` is what the configuration fixes once, ``Observed`` what is seen on each tick, and
``Decision`` the actions to apply plus the rules' own memory (``SpecMemory``: cool-down stamps),
which the caller hands back in the next tick's ``SpecObserved`` without interpreting it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from balancer.config.schema import BalancerConfig, ForecastRules
from balancer.units import parse_time_limit

# -- what the policy sees --------------------------------------------------------------------------


class Phase(enum.Enum):
    """A server as the policy sees it (the pool's states folded into what matters here)."""

    STARTING = "starting"  # requested, not yet ready
    READY = "ready"
    DRAINING = "draining"  # finishing its calls before its job's time limit
    STOPPING = "stopping"  # on its way out; counts for nothing


class ServerView(Protocol):
    """The fields of a pool ``Server`` record the policy reads (a simulator passes its own)."""

    id: str
    outstanding: int
    idle_since_m: float
    requested_m: float
    deadline_m: float | None  # monotonic time its job will be killed, if known
    started_m: float | None  # monotonic time its job began to run; None while it waits in the queue
    preemptible: bool  # its job runs in the preemptible partition or QOS (harvest, hybrid)

    @property
    def replaced(self) -> bool: ...  # a replacement was already started for it (draining servers)
    @property
    def outdated(self) -> bool: ...  # started from a spec a config reload has since changed: to be replaced
    @property
    def successor(self) -> bool: ...  # started by a rolling replacement, not yet paired with an outdated one
    @property
    def deferred(self) -> bool: ...  # its start waits for cores or GPUs this machine's servers hold (local)

    @property
    def phase(self) -> Phase: ...


@dataclass(frozen=True)
class SpecLimits:
    """What the configuration fixes for one server spec."""

    name: str
    min_servers: int = 0
    max_servers: int = 4
    backlog: int = 2  # most starts in flight at once
    concurrency: int = 1
    idle_timeout_s: float = 60.0
    startup_timeout_s: float = 120.0
    max_start_failures: int = 3  # consecutive failed starts before the spec is held
    cpus: int = 1  # CPUs one server's job holds: converts idle CPUs into servers
    max_time_limit_s: float | None = None  # the spec's time limit: the longest job it may ask for
    pending_timeout_s: float | None = None  # most a start may wait in the queue (None: no limit)
    floor: int | None = None  # hybrid: normal-priority servers kept below the harvest (None: default)


@dataclass(frozen=True)
class Limits:
    specs: tuple[SpecLimits, ...]
    time_limit_margin_s: float = 60.0  # drain a server this long before its job's time limit
    rules: ForecastRules = field(default_factory=ForecastRules)

    @classmethod
    def from_config(cls, cfg: BalancerConfig) -> Limits:
        """Limits from a ``BalancerConfig``, built once at start-up."""
        return cls(
            tuple(
                SpecLimits(
                    s.name,
                    s.min_servers,
                    s.max_servers,
                    s.backlog,
                    s.concurrency,
                    s.idle_timeout_s,
                    s.startup_timeout_s,
                    s.max_start_failures,
                    s.resources.cpus,
                    parse_time_limit(s.resources.time_limit),
                    s.pending_timeout_s,
                    s.floor,
                )
                for s in cfg.servers
            ),
            cfg.backend_options.time_limit_margin_s,
            cfg.rules,
        )


@dataclass(frozen=True)
class SpecObserved:
    """One spec at one tick."""

    servers: Sequence[ServerView] = ()  # every live server of the spec (not yet gone)
    waiting: int = 0  # calls waiting that this spec could serve
    failures: int = 0  # consecutive failed starts
    last_failure_m: float = 0.0
    last_failure: str = ""  # why the last start failed
    held: bool = False
    paused: bool = False  # the operator paused it: no start of any kind until resumed
    oldest_wait_m: float | None = None  # when the longest-waiting call of this spec began to wait
    last_idle_stop_m: float | None = None  # the spec's last stop for idleness
    last_demand_start_m: float | None = None  # the spec's last start for demand


@dataclass(frozen=True)
class ForecastView:
    """The cluster's predicted capacity for our jobs from now on, one value per ``step_s`` (index
    0 = now; live and in the simulator the current slot is the observed value where one is fresh):
    idle CPUs *plus the CPUs our own pool holds* (``held_cpus``), so our own load never reads as
    the cluster filling up. What a new job of ours can start on is ``idle[i] - held_cpus``.

    ``lo``/``hi`` bound the prediction (equal to ``idle`` for an override or an oracle);
    ``expected_wait_s`` is the scheduler's own estimate for a job of ours, where it gives one."""

    step_s: float
    idle: tuple[float, ...]
    lo: tuple[float, ...] = ()
    hi: tuple[float, ...] = ()
    expected_wait_s: float | None = None
    source: str = "forecast"  # "forecast", "override", "oracle"
    held_cpus: float = 0.0  # CPUs our own pool's running jobs hold now (``idle`` counts them in)

    def window(self, seconds: float) -> int:
        """Slots covering ``[now, now + seconds]``, at least one."""
        return max(1, min(len(self.idle), int(seconds // self.step_s) + 1))


@dataclass(frozen=True)
class Observed:
    specs: Mapping[str, SpecObserved]
    forecast: ForecastView | None = None  # None: no forecast (cold, disabled): demand only
    adopting: bool = False  # just restarted: the old servers may still register again, start none


# -- what it decides -------------------------------------------------------------------------------


class StartReason(str, enum.Enum):
    MIN_SERVERS = "min_servers"
    DEMAND = "demand"
    REPLACE = "replace"  # a server drains before its time limit
    RETRY = "retry"  # a held spec tries one start again, after a growing back-off
    PREWARM = "prewarm"  # demand, grown beyond the backlog into predicted idle capacity
    ROLLOUT = "rollout"  # the successor of a server a config reload changed (rolling replacement)


class StopReason(str, enum.Enum):
    IDLE = "idle"
    TIME_LIMIT = "time limit ahead"
    POLITE = "cluster fills up"  # idle, stopped early: the forecast says others need the CPUs
    SHUTDOWN = "shutdown"
    OUTDATED = "outdated by config reload"  # still starting when its spec changed: never made ready
    MAX_SERVERS = "max_servers"  # beyond a lowered max_servers: idle ones stop, busy ones drain
    RETIRED = "replaced by config reload"  # outdated, drained once its successor is ready
    WITHDRAWN = "withdrawn beyond admission"  # still queued, beyond what admission allows now
    PENDING_TIMEOUT = "pending timeout"  # queued longer than the spec's pending_timeout_s


@dataclass(frozen=True)
class Start:
    spec: str
    count: int
    reason: StartReason
    target: int  # live servers the spec aims for after this action
    replaces: tuple[str, ...] = ()  # draining servers this start replaces
    time_limit_s: float | None = None  # fitted to the predicted idle window; None: the spec's own
    preemptible: bool = False  # submit to the preemptible partition or QOS (harvest, hybrid)


@dataclass(frozen=True)
class Stop:
    spec: str
    server: str
    reason: StopReason
    target: int


@dataclass(frozen=True)
class GiveUp:
    """A start that did not become ready within the start-up timeout: a failed start."""

    spec: str
    server: str
    target: int


@dataclass(frozen=True)
class Drain:
    """Take no new calls: the server's job hits its time limit within the margin, or (``retires``)
    its successor from a rolling replacement is ready."""

    spec: str
    server: str
    retires: str | None = None  # the ready successor that takes this outdated server's place
    reason: StopReason = StopReason.TIME_LIMIT  # (with ``retires``: RETIRED) time limit: replaced


@dataclass(frozen=True)
class Hold:
    """Start no more servers of this spec: its last starts all failed."""

    spec: str
    failures: int
    reason: str


Action = Start | Stop | GiveUp | Drain | Hold


@dataclass(frozen=True)
class SpecMemory:
    """The cool-down rule's memory of one spec: its last idle stop and its last demand start. The
    rules write it (``Decision.memory``); callers pass it back as ``SpecObserved``'s two fields."""

    last_idle_stop_m: float | None = None
    last_demand_start_m: float | None = None


class Decision(list[Action]):
    """The actions of one tick, in the order they are to be applied (a list: most callers only
    read those), and ``memory``: the rules' own state, per spec, for the next tick."""

    def __init__(
        self, actions: Iterable[Action] = (), memory: Mapping[str, SpecMemory] | None = None
    ) -> None:
        super().__init__(actions)
        self.memory: dict[str, SpecMemory] = dict(memory or {})
