"""Routing and scaling decisions as pure functions of plain data.

Nothing here does I/O, reads a clock or mutates what it is given: the live scaler and a simulator
with a virtual clock call the same code. ``decide(limits, observed, now)`` separates what the
configuration fixes once (``Limits``) from what is seen on each tick (``Observed``), as Ray Serve's
autoscaling policy takes a context; every scaling rule lives here and has a unit test:
start-up timeout, crash-loop hold and back-off, draining before a job's time limit and its
replacement, demand and min_servers, idle stop. ``Observed.forecast`` is where the cluster's
idle-capacity forecast comes in (the next issue); ``decide`` ignores it for now.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import ceil
from typing import Any, Protocol

# -- routing ---------------------------------------------------------------------------------------


class Routable(Protocol):
    outstanding: int
    concurrency: int


def pick_server(candidates: Sequence[Routable], free_slot: bool = True) -> Routable | None:
    """Least outstanding calls; with ``free_slot`` only among servers below their concurrency.

    Metadata calls pass ``free_slot=False``: they are cheap, take no slot and must not wait for
    one behind long evaluations. First listed wins ties."""
    best = None
    best_load = 1 << 30
    for s in candidates:
        load = s.outstanding
        if load < best_load and (not free_slot or load < s.concurrency):
            best, best_load = s, load
            if load == 0:
                break
    return best


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
    replaced: bool  # a replacement was already started for it (draining servers)

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


@dataclass(frozen=True)
class Limits:
    specs: tuple[SpecLimits, ...]
    time_limit_margin_s: float = 60.0  # drain a server this long before its job's time limit

    @classmethod
    def from_config(cls, cfg: Any) -> Limits:
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
                )
                for s in cfg.servers
            ),
            cfg.backend_options.time_limit_margin_s,
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


@dataclass(frozen=True)
class Observed:
    specs: Mapping[str, SpecObserved]
    forecast: Any = None  # cluster idle-capacity forecast (next issue); unused so far
    adopting: bool = False  # just restarted: the old servers may still register again, start none


# -- what it decides -------------------------------------------------------------------------------


class StartReason(str, enum.Enum):
    MIN_SERVERS = "min_servers"
    DEMAND = "demand"
    REPLACE = "replace"  # a server drains before its time limit
    RETRY = "retry"  # a held spec tries one start again, after a growing back-off


class StopReason(str, enum.Enum):
    IDLE = "idle"
    TIME_LIMIT = "time limit ahead"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class Start:
    spec: str
    count: int
    reason: StartReason
    target: int  # live servers the spec aims for after this action
    replaces: tuple[str, ...] = ()  # draining servers this start replaces


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
    """Take no new calls: the server's job hits its time limit within the margin."""

    spec: str
    server: str


@dataclass(frozen=True)
class Hold:
    """Start no more servers of this spec: its last starts all failed."""

    spec: str
    failures: int
    reason: str


Action = Start | Stop | GiveUp | Drain | Hold


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


def decide(limits: Limits, observed: Observed, now: float) -> list[Action]:
    """All actions for this tick, spec by spec, in the order they are to be applied."""
    actions: list[Action] = []
    for lim in limits.specs:
        obs = observed.specs.get(lim.name)
        if obs is not None:
            actions += _decide_spec(lim, obs, now, limits.time_limit_margin_s)
    if observed.adopting:
        actions = [a for a in actions if not isinstance(a, Start)]
    return actions


def _decide_spec(lim: SpecLimits, obs: SpecObserved, now: float, margin: float) -> Iterable[Action]:
    out: list[Action] = []
    held = obs.held
    if not held and obs.failures >= lim.max_start_failures:
        out.append(Hold(lim.name, obs.failures, obs.last_failure))
        held = True
    starting: list[ServerView] = []
    ready: list[ServerView] = []
    draining: list[ServerView] = []
    for s in obs.servers:
        ph = s.phase
        if ph is Phase.READY:
            ready.append(s)
        elif ph is Phase.STARTING:
            starting.append(s)
        elif ph is Phase.DRAINING:
            draining.append(s)
    # A start that never became ready within its timeout is given up (a failed start). It still
    # counts as starting below, so no new start goes out before the failure is recorded.
    n_starting = len(starting)
    live = n_starting + len(ready)
    for s in starting:
        if now - s.requested_m >= lim.startup_timeout_s:
            live -= 1
            out.append(GiveUp(lim.name, s.id, target=live))
    # Drain before the time limit; a draining server with no call left stops.
    drained_now = set()
    for s in ready:
        if s.deadline_m is not None and s.deadline_m - now <= margin:
            out.append(Drain(lim.name, s.id))
            draining.append(s)
            drained_now.add(s.id)
            live -= 1
    n_ready = len(ready) - len(drained_now)
    for s in draining:
        if s.outstanding == 0:
            out.append(Stop(lim.name, s.id, StopReason.TIME_LIMIT, target=live))
    unreplaced = [s.id for s in draining if not s.replaced]
    # How many to start, and why: min_servers, then demand, then replacements of draining servers.
    wanted, reason = 0, StartReason.MIN_SERVERS
    if n_ready + n_starting < lim.min_servers:
        wanted = lim.min_servers - n_ready
    if obs.waiting > 0:
        need = ceil(obs.waiting / lim.concurrency)
        if need > wanted:
            wanted, reason = need, StartReason.DEMAND
    if unreplaced and len(unreplaced) >= wanted:
        wanted, reason = len(unreplaced), StartReason.REPLACE
    n = min(wanted - n_starting, lim.backlog - n_starting, lim.max_servers - live)
    backing_off = obs.failures > 0 and now < obs.last_failure_m + start_backoff_s(obs.failures)
    if held:
        # One start at a time, after a back-off that grows to HOLD_RETRY_CAP_S; when it becomes
        # ready the spec is resumed (by the pool), when it fails the next try waits longer.
        due = now >= obs.last_failure_m + hold_retry_s(obs.failures)
        if due and not n_starting and live < lim.max_servers:
            live += 1
            out.append(Start(lim.name, 1, StartReason.RETRY, target=live))
    elif n > 0 and not backing_off:
        replaces = tuple(unreplaced[:n]) if reason is StartReason.REPLACE else ()
        live += n
        out.append(Start(lim.name, n, reason, target=live, replaces=replaces))
    if obs.waiting == 0:
        # Longest idle first, never below min_servers.
        idle = [s for s in ready if s.outstanding == 0 and s.id not in drained_now]
        for s in sorted(idle, key=lambda s: s.idle_since_m):
            if live <= lim.min_servers or now - s.idle_since_m < lim.idle_timeout_s:
                break
            live -= 1
            out.append(Stop(lim.name, s.id, StopReason.IDLE, target=live))
    return out

