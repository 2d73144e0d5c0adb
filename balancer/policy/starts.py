"""The rules for what starts, and the idle stops that undo it, with the cool-down that keeps the
two from chasing each other.

The four policies differ here. ``demand`` starts normal jobs for waiting calls within the backlog.
``forecast`` lets what the forecast admits bound the queued starts and grow them beyond the backlog
(pre-warm), fits time limits to the predicted idle window and stops idle servers early when others
will want the CPUs (polite). ``harvest`` starts preemptible jobs on the CPUs idle now and never
stops politely: the scheduler takes its CPUs back by preemption. ``hybrid`` keeps a floor of normal
jobs (by the demand rules), so the campaign never depends on preemptible jobs alone, and harvests
above it. The arithmetic is in ``policy.admission`` and ``policy.harvest``.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil

from balancer.policy.admission import fits_time_limit, pending_room, polite_shortfall
from balancer.policy.harvest import harvest_room, split_hybrid
from balancer.policy.tick import Tick, hold_retry_s
from balancer.policy.types import (
    Action,
    SpecMemory,
    SpecObserved,
    Start,
    StartReason,
    Stop,
    StopReason,
)


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


def retry_held(t: Tick) -> None:
    """A held spec retries one start at a time after a back-off growing to HOLD_RETRY_CAP_S (when it
    becomes ready the pool resumes the spec; when it fails the next try waits longer)."""
    lim = t.lim
    due = t.now >= t.obs.last_failure_m + hold_retry_s(t.obs.failures)
    if due and not t.n_starting and t.live < lim.max_servers and t.occupied < lim.max_servers:
        t.live += 1
        t.out.append(Start(lim.name, 1, StartReason.RETRY, target=t.live, preemptible=t.next_preemptible()))


def split_starts(t: Tick, want: int, room: int) -> tuple[int, int]:
    """The starts this tick as (normal, preemptible), by the policy: demand and forecast start
    normal jobs within the pending cap; harvest preemptible ones within what the CPUs idle now
    admit; hybrid normal ones up to its floor, preemptible ones above it."""
    lim, rules = t.lim, t.rules
    if t.policy == "harvest":
        return 0, min(want, harvest_room(lim, rules, t.n_starting, t.n_queued, t.budget), room)
    if t.policy == "hybrid":
        pre = [s for s in t.starting if s.preemptible]
        normal = (t.normal_live(), len(t.starting) - len(pre))
        queued = sum(1 for s in pre if s.started_m is None)
        return split_hybrid(lim, rules, want, room, normal, (t.n_starting, queued), t.budget)
    return min(want, pending_room(lim, rules, t.n_starting, t.n_queued, t.budget), room), 0


def start_servers(t: Tick) -> None:
    """Start what is wanted, within the pending cap and max_servers (every server not stopping
    counts); a paused spec starts nothing, a held one retries (``retry_held``). At most one normal
    and one preemptible ``Start`` per spec and tick."""
    lim, fv, rules = t.lim, t.fv, t.rules
    wanted, reason, unreplaced = wanted_starts(t)
    if t.obs.paused:
        return  # its calls wait, its running servers serve, nothing starts
    if t.held:
        retry_held(t)
        return
    want = wanted - t.n_starting
    if want > 0 and reason is StartReason.DEMAND and cooling_down_after_stop(t):
        want = 0
    room = min(lim.max_servers - t.live, lim.max_servers - t.occupied)
    if want <= 0 or room <= 0 or t.backing_off():
        return
    normal, preempt = split_starts(t, want, room)
    n = normal + preempt
    if n <= 0:
        return
    replaces = unreplaced[:n] if reason is StartReason.REPLACE else []
    replaces += t.ahead[: n - len(replaces)]
    if t.forecasting and reason is StartReason.DEMAND and n > lim.backlog - t.n_starting:
        reason = StartReason.PREWARM
    fit = fv is not None and t.forecasting and rules.fit_time_limit
    time_limit = fits_time_limit(fv, lim, rules) if fv is not None and fit else None
    if t.budget is not None:
        t.budget[0] -= n * lim.cpus
    t.n_starting += n
    t.n_queued += n
    t.occupied += n
    for k, pre, names in ((normal, False, replaces[:normal]), (preempt, True, replaces[normal:])):
        if k > 0:
            t.live += k
            t.kinds.add(pre)
            t.out.append(Start(lim.name, k, reason, target=t.live, replaces=tuple(names),
                               time_limit_s=None if pre else time_limit, preemptible=pre))  # fmt: skip


def start_successors(t: Tick) -> None:
    """The rolling replacement's successors, up to the backlog at a time (none in a tick that
    already started servers of their kind: one Start per kind and tick)."""
    if not t.rollout or t.obs.paused or t.held or t.backing_off():
        return
    pre = t.next_preemptible()
    k = min(t.rollout, t.lim.backlog - t.n_starting)
    if k > 0 and pre not in t.kinds:
        t.live += k
        t.n_starting += k
        t.n_queued += k
        t.occupied += k
        t.kinds.add(pre)
        t.out.append(Start(t.lim.name, k, StartReason.ROLLOUT, target=t.live, preemptible=pre))


def stop_idle(t: Tick) -> None:
    """With no call waiting, servers idle beyond the idle timeout stop, longest idle first, never
    below min_servers. Polite (the forecast policy): when even the forecast's upper bound says
    others want CPUs we hold within the horizon, as many as cover that shortfall stop after
    ``polite_idle_s``. Harvest never stops politely: preemption takes its CPUs back."""
    lim, fv, rules = t.lim, t.fv, t.rules
    if t.obs.waiting != 0 or cooling_down_after_start(t):
        return
    polite = 0
    if fv is not None and t.forecasting and rules.polite and rules.polite_idle_s < lim.idle_timeout_s:
        polite = ceil(polite_shortfall(fv, rules.polite_horizon_s) / lim.cpus)
    idle = [s for s in t.ready if s.outstanding == 0 and s.id not in t.drained_now]
    for s in sorted(idle, key=lambda s: s.idle_since_m):
        idle_for = t.now - s.idle_since_m
        if t.live <= lim.min_servers:
            break
        if polite > 0 and idle_for >= rules.polite_idle_s:
            polite, why = polite - 1, StopReason.POLITE
        elif idle_for >= lim.idle_timeout_s:
            why = StopReason.IDLE
        else:
            break
        t.live -= 1
        t.out.append(Stop(lim.name, s.id, why, target=t.live))


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
