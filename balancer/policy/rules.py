"""The scaling rules, one named function each, run in order on one spec's ``Tick`` by ``decide``.

Each rule reads what the earlier ones left in the tick (which servers start, serve, drain; how many
live servers the spec will have) and appends its actions. Order matters and is ``SPEC_RULES``: a
hold comes first, then what ends (start-up timeouts, drains, surplus), then what starts, then idle
stops. The cool-down rule's memory is returned by ``remember``, never kept by a caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import ceil

from balancer.config.schema import ForecastRules
from balancer.policy.types import (
    Action,
    Drain,
    ForecastView,
    GiveUp,
    Hold,
    Phase,
    ServerView,
    SpecLimits,
    SpecMemory,
    SpecObserved,
    Start,
    StartReason,
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


# -- the forecast's arithmetic ------------------------------------------------------------------------


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


def pending_cap(lim: SpecLimits, rules: ForecastRules, n_starting: int, budget: list[float] | None) -> int:
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


# -- one spec's tick ---------------------------------------------------------------------------------


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
    n_ready: int = 0
    live: int = 0  # live servers the spec aims for, as the rules have it so far
    rollout: int = 0  # successors still to start in a rolling replacement

    def drain(self, s: ServerView, action: Drain, retired: bool = False) -> None:
        self.out.append(action)
        self.draining.append(s)
        self.drained_now.add(s.id)
        if retired:
            self.retired.add(s.id)
        self.n_ready -= 1
        self.live -= 1

    def backing_off(self) -> bool:
        obs = self.obs
        return obs.failures > 0 and self.now < obs.last_failure_m + start_backoff_s(obs.failures)


def hold_after_failures(t: Tick) -> None:
    """A spec whose last ``max_start_failures`` starts failed is held."""
    t.held = t.obs.held
    if not t.held and t.obs.failures >= t.lim.max_start_failures:
        t.out.append(Hold(t.lim.name, t.obs.failures, t.obs.last_failure))
        t.held = True


def sort_servers(t: Tick) -> None:
    """Sort the servers by phase; one a reload outdated before it was ready never serves: it stops."""
    for s in t.obs.servers:
        ph = s.phase
        if ph is Phase.READY:
            t.ready.append(s)
        elif ph is Phase.STARTING:
            if s.outdated:
                t.out.append(Stop(t.lim.name, s.id, StopReason.OUTDATED, target=0))
            else:
                t.starting.append(s)
        elif ph is Phase.DRAINING:
            t.draining.append(s)
    t.n_starting = len(t.starting)
    t.n_ready = len(t.ready)
    t.live = t.n_starting + t.n_ready


def give_up_slow_starts(t: Tick) -> None:
    """A start not ready within its timeout is given up (a failed start). It still counts as
    starting, so no new start goes out before the failure is recorded."""
    for s in t.starting:
        if t.now - s.requested_m >= t.lim.startup_timeout_s:
            t.live -= 1
            t.out.append(GiveUp(t.lim.name, s.id, target=t.live))


def drain_before_time_limit(t: Tick) -> None:
    """A ready server whose job ends within the margin drains."""
    for s in t.ready:
        if s.deadline_m is not None and s.deadline_m - t.now <= t.margin:
            t.drain(s, Drain(t.lim.name, s.id))


def replace_ahead(t: Tick) -> None:
    """With a forecast and pre-warm: a server whose job ends within the pending window, and that has
    no successor yet, no longer counts toward max_servers, so the next start queues its successor
    (and names it in ``replaces``) while it still serves. Servers a pre-warm burst started together
    otherwise expire together and leave the pool empty for as long as their successors queue
    (measured in the simulator). Once enough successors are ready, the replaced servers drain,
    nearest time limit first, so they never serve beside them beyond max_servers."""
    if t.fv is None or not t.rules.prewarm:
        return
    lead = t.margin + t.rules.max_pending_wait_s
    for s in t.ready:
        if s.id not in t.drained_now and not s.replaced and s.deadline_m is not None:
            if s.deadline_m - t.now <= lead:
                t.ahead.append(s.id)
    t.live -= len(t.ahead)
    over = t.n_ready - t.lim.max_servers
    if over > 0:
        done = [s for s in t.ready if s.replaced and s.id not in t.drained_now]
        for s in sorted(done, key=lambda s: s.deadline_m or 0.0)[:over]:
            t.drain(s, Drain(t.lim.name, s.id))


def retire_outdated(t: Tick) -> None:
    """Rolling replacement (a reload changed how this spec's servers start): an outdated server
    drains only once a successor is ready in its place, so the spec never has fewer ready servers
    than before; ``rollout`` successors are still to start (``start_successors``)."""
    old = [s for s in t.ready if s.outdated and s.id not in t.drained_now]
    if not old:
        return
    succ = [s for s in t.ready if s.successor and not s.outdated and s.id not in t.drained_now]
    old.sort(key=lambda s: (s.outstanding, s.idle_since_m))
    # A successor whose start waits for the cores or GPUs the old servers hold (a machine already
    # full) cannot come first: its predecessor drains now and frees them, one at a time.
    freeing = t.drained_now or any(s.phase in (Phase.DRAINING, Phase.STOPPING) for s in t.obs.servers)
    if not freeing:
        succ += [s for s in t.starting if s.successor and s.deferred][:1]
    for y, x in zip(succ, old, strict=False):
        t.drain(x, Drain(t.lim.name, x.id, retires=y.id), retired=True)
    paired = {y.id for y in succ}
    on_way = sum(1 for s in t.starting if s.successor and s.id not in paired)
    t.rollout = max(0, len(old) - len(succ) - on_way)


def trim_to_max_servers(t: Tick) -> None:
    """Above max_servers (lowered by a reload or the operator): idle servers stop now, busy ones
    drain, finishing their calls; replaced servers drained above are counted out already."""
    surplus = t.n_ready - t.lim.max_servers
    if surplus <= 0:
        return
    rest = [s for s in t.ready if s.id not in t.drained_now]
    for s in sorted(rest, key=lambda s: (s.outstanding, s.idle_since_m))[:surplus]:
        if s.outstanding:
            t.drain(s, Drain(t.lim.name, s.id, reason=StopReason.MAX_SERVERS), retired=True)
        else:
            t.out.append(Stop(t.lim.name, s.id, StopReason.MAX_SERVERS, target=t.live - 1))
            t.drained_now.add(s.id)
            t.retired.add(s.id)
            t.n_ready -= 1
            t.live -= 1


def stop_drained(t: Tick) -> None:
    """A draining server with no call left stops."""
    for s in t.draining:
        if s.outstanding == 0:
            t.out.append(Stop(t.lim.name, s.id, StopReason.TIME_LIMIT, target=t.live))


def wanted_starts(t: Tick) -> tuple[int, StartReason, list[str]]:
    """How many servers the spec wants started, and why: min_servers, then demand, then
    replacements of draining servers (returned too: the start names them)."""
    lim, obs = t.lim, t.obs
    unreplaced = [s.id for s in t.draining if not s.replaced and s.id not in t.retired]
    wanted, reason = 0, StartReason.MIN_SERVERS
    if t.n_ready + t.n_starting < lim.min_servers:
        wanted = lim.min_servers - t.n_ready
    if obs.waiting > 0:
        # Calls that a ready server's free slot is about to take (a metadata fetch in flight, a
        # hand-off this very moment) are not unmet demand: without this a spec whose first server
        # has just become ready starts a second one for the call that server is taking.
        free = sum(max(0, lim.concurrency - s.outstanding) for s in t.ready if s.id not in t.drained_now)
        need = ceil(max(0, obs.waiting - free) / lim.concurrency)
        if need > wanted:
            wanted, reason = need, StartReason.DEMAND
    if unreplaced and len(unreplaced) >= wanted:
        wanted, reason = len(unreplaced), StartReason.REPLACE
    return wanted, reason, unreplaced


def cooling_down_after_stop(t: Tick) -> bool:
    """Hysteresis: just after an idle stop, only calls that waited upscale_delay_s start one."""
    obs, rules = t.obs, t.rules
    if t.fv is None or not rules.cooldown:
        return False
    recent_stop = obs.last_idle_stop_m is not None and t.now - obs.last_idle_stop_m < rules.cooldown_s
    waited = obs.oldest_wait_m is not None and t.now - obs.oldest_wait_m >= rules.upscale_delay_s
    return recent_stop and not waited


def cooling_down_after_start(t: Tick) -> bool:
    """Hysteresis: no idle stop just after a demand start."""
    obs, rules = t.obs, t.rules
    if t.fv is None or not rules.cooldown or obs.last_demand_start_m is None:
        return False
    return t.now - obs.last_demand_start_m < rules.cooldown_s


def start_servers(t: Tick) -> None:
    """Start what is wanted, within the pending cap and max_servers; a paused spec starts nothing,
    a held one retries one start at a time after a back-off growing to HOLD_RETRY_CAP_S (when it
    becomes ready the pool resumes the spec; when it fails the next try waits longer)."""
    lim, fv, rules = t.lim, t.fv, t.rules
    wanted, reason, unreplaced = wanted_starts(t)
    cap = pending_cap(lim, rules, t.n_starting, t.budget)
    n = min(wanted - t.n_starting, cap - t.n_starting, lim.max_servers - t.live)
    if n > 0 and reason is StartReason.DEMAND and cooling_down_after_stop(t):
        n = 0
    if t.obs.paused:
        return  # its calls wait, its running servers serve, nothing starts
    if t.held:
        due = t.now >= t.obs.last_failure_m + hold_retry_s(t.obs.failures)
        if due and not t.n_starting and t.live < lim.max_servers:
            t.live += 1
            t.out.append(Start(lim.name, 1, StartReason.RETRY, target=t.live))
        return
    if n <= 0 or t.backing_off():
        return
    replaces = tuple(unreplaced[:n]) if reason is StartReason.REPLACE else ()
    if t.ahead:
        replaces = (*replaces, *t.ahead[: n - len(replaces)])
    if reason is StartReason.DEMAND and n > lim.backlog - t.n_starting:
        reason = StartReason.PREWARM
    time_limit = fits_time_limit(fv, lim, rules) if fv is not None and rules.fit_time_limit else None
    t.live += n
    if t.budget is not None:
        t.budget[0] -= n * lim.cpus
    t.out.append(Start(lim.name, n, reason, target=t.live, replaces=replaces, time_limit_s=time_limit))
    t.n_starting += n


def start_successors(t: Tick) -> None:
    """The rolling replacement's successors, up to the backlog at a time."""
    if not t.rollout or t.obs.paused or t.held or t.backing_off():
        return
    k = min(t.rollout, t.lim.backlog - t.n_starting)
    if k > 0:
        t.live += k
        t.out.append(Start(t.lim.name, k, StartReason.ROLLOUT, target=t.live))


def stop_idle(t: Tick) -> None:
    """With no call waiting, servers idle beyond the idle timeout stop, longest idle first, never
    below min_servers; with a forecast that says the cluster fills up, after ``polite_idle_s``."""
    lim, fv, rules = t.lim, t.fv, t.rules
    if t.obs.waiting != 0 or cooling_down_after_start(t):
        return
    timeout, why = lim.idle_timeout_s, StopReason.IDLE
    if fv is not None:
        polite = rules.polite and rules.polite_idle_s < timeout
        if polite and fills_up(fv, lim.cpus, rules.polite_horizon_s):
            timeout, why = rules.polite_idle_s, StopReason.POLITE
    idle = [s for s in t.ready if s.outstanding == 0 and s.id not in t.drained_now]
    for s in sorted(idle, key=lambda s: s.idle_since_m):
        if t.live <= lim.min_servers or t.now - s.idle_since_m < timeout:
            break
        t.live -= 1
        t.out.append(Stop(lim.name, s.id, why, target=t.live))


SPEC_RULES: Sequence[Callable[[Tick], None]] = (
    hold_after_failures,
    sort_servers,
    give_up_slow_starts,
    drain_before_time_limit,
    replace_ahead,
    retire_outdated,
    trim_to_max_servers,
    stop_drained,
    start_servers,
    start_successors,
    stop_idle,
)


def remember(obs: SpecObserved, actions: Sequence[Action], now: float) -> SpecMemory:
    """The cool-down rule's memory after ``actions`` are applied: when the spec last stopped a
    server for idleness and last started one for demand."""
    idle_stop, demand_start = obs.last_idle_stop_m, obs.last_demand_start_m
    for a in actions:
        if isinstance(a, Start) and a.reason in (StartReason.DEMAND, StartReason.PREWARM):
            demand_start = now
        elif isinstance(a, Stop) and a.reason in (StopReason.IDLE, StopReason.POLITE):
            idle_stop = now
    return SpecMemory(idle_stop, demand_start)
