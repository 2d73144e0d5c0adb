"""Routing and scaling decisions as pure functions of plain data.

Nothing here does I/O, reads a clock or mutates what it is given: the live scaler and a simulator
with a virtual clock call the same code. ``decide(limits, observed, now)`` separates what the
configuration fixes once (``Limits``) from what is seen on each tick (``Observed``), as Ray Serve's
autoscaling policy takes a context; every scaling rule lives here and has a unit test:
start-up timeout, crash-loop hold and back-off, draining before a job's time limit and its
replacement, demand and min_servers, idle stop. ``Observed.forecast`` brings the cluster's
idle-capacity forecast: with it (and ``Limits.rules``) the forecast-aware rules apply, without it
the policy scales by demand alone, exactly as before.
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
    outdated: bool  # started from a spec a config reload has since changed: to be replaced
    successor: bool  # started by a rolling replacement, not yet paired with an outdated server
    deferred: bool  # its start waits for cores or GPUs this machine's servers hold (local backend)

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


@dataclass(frozen=True)
class ForecastRules:
    """The forecast-aware rules, each off-able. They apply only when a forecast is observed.

    - admission: never more pending starts than the forecast says can start within
      ``max_pending_wait_s`` (at least ``min_pending``, so a campaign always has one job queued);
    - pre-warm: while calls wait, grow into predicted idle capacity beyond ``backlog`` at once;
    - fit time limits: ask for a time limit that fits the predicted idle window (a short job
      backfills sooner), within ``[min_time_limit_s, the spec's time limit]``;
    - polite: when even the forecast's upper bound says the cluster fills up within
      ``polite_horizon_s``, stop idle servers after ``polite_idle_s`` instead of the idle timeout;
    - cool-down (hysteresis): after an idle stop, start again only for calls that waited
      ``upscale_delay_s``; after a demand start, stop nothing for idleness for ``cooldown_s``.
    """

    admission: bool = True
    max_pending_wait_s: float = 600.0
    min_pending: int = 1
    prewarm: bool = True
    fit_time_limit: bool = True
    min_time_limit_s: float = 3600.0
    polite: bool = True
    polite_horizon_s: float = 3600.0
    polite_idle_s: float = 10.0
    cooldown: bool = True
    cooldown_s: float = 120.0
    upscale_delay_s: float = 30.0


@dataclass(frozen=True)
class Limits:
    specs: tuple[SpecLimits, ...]
    time_limit_margin_s: float = 60.0  # drain a server this long before its job's time limit
    rules: ForecastRules = ForecastRules()

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
                    s.resources.cpus,
                    parse_time_limit(s.resources.time_limit),
                )
                for s in cfg.servers
            ),
            cfg.backend_options.time_limit_margin_s,
            getattr(cfg, "rules", None) or ForecastRules(),
        )


def parse_time_limit(text: str | None) -> float | None:
    """Seconds from a SLURM time ("MM", "MM:SS", "HH:MM:SS", "D-HH[:MM[:SS]]"); None for none.

    Raises ValueError on anything else."""
    if text is None or text == "":
        return None
    days = 0
    rest = text.strip()
    if "-" in rest:
        d, rest = rest.split("-", 1)
        days = int(d)
        parts = [int(x) for x in rest.split(":")]
        parts += [0] * (3 - len(parts))
        h, m, sec = parts[:3]
    else:
        parts = [int(x) for x in rest.split(":")]
        if len(parts) == 1:
            h, m, sec = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, sec = 0, parts[0], parts[1]
        elif len(parts) == 3:
            h, m, sec = parts
        else:
            raise ValueError(f"not a time limit: {text!r}")
    if min(days, h, m, sec) < 0:
        raise ValueError(f"not a time limit: {text!r}")
    return float(((days * 24 + h) * 60 + m) * 60 + sec)


def format_time_limit(seconds: float) -> str:
    """SLURM's "D-HH:MM:SS" (whole minutes, rounded up: a limit is never cut short)."""
    total = ceil(seconds / 60.0) * 60
    d, rem = divmod(total, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


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
    """The cluster's predicted idle CPUs from now on, one value per ``step_s`` (index 0 = now;
    live and in the simulator the current slot is the observed value where one is fresh).

    ``lo``/``hi`` bound the prediction (equal to ``idle`` for an override or an oracle);
    ``expected_wait_s`` is the scheduler's own estimate for a job of ours, where it gives one."""

    step_s: float
    idle: tuple[float, ...]
    lo: tuple[float, ...] = ()
    hi: tuple[float, ...] = ()
    expected_wait_s: float | None = None
    source: str = "forecast"  # "forecast", "override", "oracle"

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


@dataclass(frozen=True)
class Start:
    spec: str
    count: int
    reason: StartReason
    target: int  # live servers the spec aims for after this action
    replaces: tuple[str, ...] = ()  # draining servers this start replaces
    time_limit_s: float | None = None  # fitted to the predicted idle window; None: the spec's own


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


def admissible_cpus(fv: ForecastView, rules: ForecastRules) -> float:
    """CPUs the forecast says jobs of ours can start on within ``max_pending_wait_s``: the most
    predicted idle in that window; none when the scheduler itself expects a longer wait."""
    if fv.expected_wait_s is not None and fv.expected_wait_s > rules.max_pending_wait_s:
        return 0.0
    if not fv.idle:
        return 0.0
    return max(0.0, max(fv.idle[: fv.window(rules.max_pending_wait_s)]))


def idle_window_s(fv: ForecastView, cpus: int) -> float:
    """How long, from now, the predicted idle capacity keeps room for one more job of ``cpus``."""
    n = 0
    for v in fv.idle:
        if v < cpus:
            break
        n += 1
    return n * fv.step_s


def fits_time_limit(fv: ForecastView, lim: SpecLimits, rules: ForecastRules) -> float | None:
    """A time limit fitted to the predicted idle window, within the spec's bounds (None: keep
    the spec's own). A window that runs to the forecast's horizon asks for the spec's limit."""
    if lim.max_time_limit_s is None:
        return None
    window = idle_window_s(fv, lim.cpus)
    if window >= len(fv.idle) * fv.step_s:
        return None
    return float(min(lim.max_time_limit_s, max(rules.min_time_limit_s, window)))


def fills_up(fv: ForecastView, cpus: int, horizon_s: float) -> bool:
    """Even the forecast's upper bound leaves no room for a job of ``cpus`` within the horizon."""
    hi = fv.hi or fv.idle
    if not hi:
        return False
    return min(hi[: fv.window(horizon_s)]) < cpus


def decide(limits: Limits, observed: Observed, now: float) -> list[Action]:
    """All actions for this tick, spec by spec, in the order they are to be applied."""
    actions: list[Action] = []
    fv = observed.forecast
    # Admission shares the predicted idle CPUs among the specs, less what their pending starts
    # will take; ``budget`` is what is left as the specs are decided in order.
    budget: list[float] | None = None
    if fv is not None:
        pending = 0.0
        for lim in limits.specs:
            obs = observed.specs.get(lim.name)
            if obs is not None:
                pending += lim.cpus * sum(1 for s in obs.servers if s.phase is Phase.STARTING)
        budget = [admissible_cpus(fv, limits.rules) - pending]
    for lim in limits.specs:
        obs = observed.specs.get(lim.name)
        if obs is not None:
            actions += _decide_spec(lim, obs, now, limits.time_limit_margin_s, fv, limits.rules, budget)
    if observed.adopting:
        actions = [a for a in actions if not isinstance(a, Start)]
    return actions


def _pending_cap(lim: SpecLimits, rules: ForecastRules, n_starting: int, budget: list[float] | None) -> int:
    """Most starts in flight at once: the backlog without a forecast; with one, what the forecast
    admits (admission) and may grow beyond the backlog (pre-warm)."""
    if budget is None:
        return lim.backlog
    room = n_starting + max(0, int(budget[0] // lim.cpus))
    if rules.admission and rules.prewarm:
        return max(rules.min_pending, room)
    if rules.admission:
        return max(rules.min_pending, min(lim.backlog, room))
    if rules.prewarm:
        return max(lim.backlog, room)
    return lim.backlog


def _decide_spec(
    lim: SpecLimits,
    obs: SpecObserved,
    now: float,
    margin: float,
    fv: ForecastView | None = None,
    rules: ForecastRules = ForecastRules(),
    budget: list[float] | None = None,
) -> Iterable[Action]:
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
            if s.outdated:  # a reload changed how it starts before it was ready: it never serves
                out.append(Stop(lim.name, s.id, StopReason.OUTDATED, target=0))
            else:
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
    ahead: list[str] = []
    if fv is not None and rules.prewarm:
        # Replace ahead: a server whose job ends within the pending window, and that has no
        # successor yet, no longer counts toward max_servers, so the next start queues its
        # successor (and names it in ``replaces``) while it still serves. Servers a pre-warm burst
        # started together otherwise expire together and leave the pool empty for as long as their
        # successors queue (measured in the simulator).
        lead = margin + rules.max_pending_wait_s
        for s in ready:
            if s.id not in drained_now and not s.replaced and s.deadline_m is not None:
                if s.deadline_m - now <= lead:
                    ahead.append(s.id)
        live -= len(ahead)
        # Their successors never serve beside them beyond max_servers: once enough are ready, the
        # replaced servers drain, nearest time limit first.
        over = n_ready - lim.max_servers
        if over > 0:
            done = [s for s in ready if s.replaced and s.id not in drained_now]
            for s in sorted(done, key=lambda s: s.deadline_m or 0.0)[:over]:
                out.append(Drain(lim.name, s.id))
                draining.append(s)
                drained_now.add(s.id)
                n_ready -= 1
                live -= 1
    # Rolling replacement (a reload changed how this spec's servers start): an outdated server
    # drains only once a successor is ready in its place, so the spec never has fewer ready servers
    # than before; successors start below, up to the backlog at a time.
    retired: set[str] = set()  # drained now with no replacement of their own to start
    rollout = 0
    old = [s for s in ready if s.outdated and s.id not in drained_now]
    if old:
        succ = [s for s in ready if s.successor and not s.outdated and s.id not in drained_now]
        old.sort(key=lambda s: (s.outstanding, s.idle_since_m))
        # A successor whose start waits for the cores or GPUs the old servers hold (a machine
        # already full) cannot come first: its predecessor drains now and frees them, one at a time.
        freeing = drained_now or any(s.phase in (Phase.DRAINING, Phase.STOPPING) for s in obs.servers)
        if not freeing:
            succ += [s for s in starting if s.successor and s.deferred][:1]
        for y, x in zip(succ, old, strict=False):
            out.append(Drain(lim.name, x.id, retires=y.id))
            draining.append(x)
            drained_now.add(x.id)
            retired.add(x.id)
            n_ready -= 1
            live -= 1
        paired = {y.id for y in succ}
        on_way = sum(1 for s in starting if s.successor and s.id not in paired)
        rollout = max(0, len(old) - len(succ) - on_way)
    # Above max_servers (it was lowered by a reload or the operator): idle servers stop now, busy
    # ones drain, finishing their calls; replaced servers the block above drains are counted out.
    surplus = n_ready - lim.max_servers
    if surplus > 0:
        rest = [s for s in ready if s.id not in drained_now]
        for s in sorted(rest, key=lambda s: (s.outstanding, s.idle_since_m))[:surplus]:
            if s.outstanding:
                out.append(Drain(lim.name, s.id, reason=StopReason.MAX_SERVERS))
                draining.append(s)
            else:
                out.append(Stop(lim.name, s.id, StopReason.MAX_SERVERS, target=live - 1))
            drained_now.add(s.id)
            retired.add(s.id)
            n_ready -= 1
            live -= 1
    for s in draining:
        if s.outstanding == 0:
            out.append(Stop(lim.name, s.id, StopReason.TIME_LIMIT, target=live))
    unreplaced = [s.id for s in draining if not s.replaced and s.id not in retired]
    # How many to start, and why: min_servers, then demand, then replacements of draining servers.
    wanted, reason = 0, StartReason.MIN_SERVERS
    if n_ready + n_starting < lim.min_servers:
        wanted = lim.min_servers - n_ready
    if obs.waiting > 0:
        # Calls that a ready server's free slot is about to take (a metadata fetch in flight, a
        # hand-off this very moment) are not unmet demand: without this a spec whose first server
        # has just become ready starts a second one for the call that server is taking.
        free = sum(max(0, lim.concurrency - s.outstanding) for s in ready if s.id not in drained_now)
        need = ceil(max(0, obs.waiting - free) / lim.concurrency)
        if need > wanted:
            wanted, reason = need, StartReason.DEMAND
    if unreplaced and len(unreplaced) >= wanted:
        wanted, reason = len(unreplaced), StartReason.REPLACE
    cap = _pending_cap(lim, rules, n_starting, budget)
    n = min(wanted - n_starting, cap - n_starting, lim.max_servers - live)
    backing_off = obs.failures > 0 and now < obs.last_failure_m + start_backoff_s(obs.failures)
    if n > 0 and fv is not None and rules.cooldown and reason is StartReason.DEMAND:
        # Hysteresis: just after an idle stop, only calls that waited upscale_delay_s start one.
        recent_stop = obs.last_idle_stop_m is not None and now - obs.last_idle_stop_m < rules.cooldown_s
        waited = obs.oldest_wait_m is not None and now - obs.oldest_wait_m >= rules.upscale_delay_s
        if recent_stop and not waited:
            n = 0
    if obs.paused:
        pass  # paused by the operator: its calls wait, its running servers serve, nothing starts
    elif held:
        # One start at a time, after a back-off that grows to HOLD_RETRY_CAP_S; when it becomes
        # ready the spec is resumed (by the pool), when it fails the next try waits longer.
        due = now >= obs.last_failure_m + hold_retry_s(obs.failures)
        if due and not n_starting and live < lim.max_servers:
            live += 1
            out.append(Start(lim.name, 1, StartReason.RETRY, target=live))
    elif n > 0 and not backing_off:
        replaces = tuple(unreplaced[:n]) if reason is StartReason.REPLACE else ()
        if ahead:
            replaces = (*replaces, *ahead[: n - len(replaces)])
        if reason is StartReason.DEMAND and n > lim.backlog - n_starting:
            reason = StartReason.PREWARM
        time_limit = fits_time_limit(fv, lim, rules) if fv is not None and rules.fit_time_limit else None
        live += n
        if budget is not None:
            budget[0] -= n * lim.cpus
        out.append(Start(lim.name, n, reason, target=live, replaces=replaces, time_limit_s=time_limit))
        n_starting += n
    if rollout and not obs.paused and not held and not backing_off:
        k = min(rollout, lim.backlog - n_starting)
        if k > 0:
            live += k
            out.append(Start(lim.name, k, StartReason.ROLLOUT, target=live))
    if obs.waiting == 0:
        timeout, why = lim.idle_timeout_s, StopReason.IDLE
        if fv is not None:
            if rules.cooldown and obs.last_demand_start_m is not None:
                if now - obs.last_demand_start_m < rules.cooldown_s:
                    return out  # hysteresis: no idle stop just after a demand start
            polite = rules.polite and rules.polite_idle_s < timeout
            if polite and fills_up(fv, lim.cpus, rules.polite_horizon_s):
                timeout, why = rules.polite_idle_s, StopReason.POLITE
        # Longest idle first, never below min_servers.
        idle = [s for s in ready if s.outstanding == 0 and s.id not in drained_now]
        for s in sorted(idle, key=lambda s: s.idle_since_m):
            if live <= lim.min_servers or now - s.idle_since_m < timeout:
                break
            live -= 1
            out.append(Stop(lim.name, s.id, why, target=live))
    return out

