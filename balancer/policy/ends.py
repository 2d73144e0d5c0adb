"""The rules for what ends: a crash-looping spec is held, and servers and starts leave the pool.

Each is a named function of one ``Tick`` (``policy.tick``), run in ``policy.rules.SPEC_RULES``
order. They come before the start rules so that a start sees the room they leave, except the
withdrawal, which comes after: it must also count the starts the tick itself sends out (hybrid's
floor may send normal ones beside harvested starts still queued), so pending beyond admission never
exceeds the backlog once the tick's actions are applied. Timeouts distinguish a start that failed
(its job ran and never became ready: ``GiveUp``, counted toward a hold) from one the queue kept (a
``Stop``, never a failure: the scheduler, not the server, is slow).
"""

from __future__ import annotations

from balancer.policy.admission import admission_cpus
from balancer.policy.harvest import withdrawals
from balancer.policy.tick import Tick, is_queued
from balancer.policy.types import Drain, GiveUp, Hold, Phase, Stop, StopReason


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
    t.n_queued = sum(1 for s in t.starting if is_queued(s))
    t.n_ready = len(t.ready)
    t.live = t.n_starting + t.n_ready
    t.occupied = t.live + len(t.draining)


def give_up_slow_starts(t: Tick) -> None:
    """A start not ready within its timeout *from its job's start* is given up (a failed start); one
    whose job still waits in the queue is not. It still counts as starting, so no new start goes
    out before the failure is recorded."""
    for s in t.starting:
        if s.started_m is not None and t.now - s.started_m >= t.lim.startup_timeout_s:
            t.live -= 1
            t.out.append(GiveUp(t.lim.name, s.id, target=t.live))


def stop_long_pending(t: Tick) -> None:
    """A start queued longer than the spec's ``pending_timeout_s`` is stopped (not a failed start)."""
    limit = t.lim.pending_timeout_s
    if limit is None:
        return
    for s in [s for s in t.starting if is_queued(s) and t.now - s.requested_m >= limit]:
        t.unstart(s, StopReason.PENDING_TIMEOUT)


def withdraw_beyond_admission(t: Tick) -> None:
    """With admission, queued starts beyond what it allows now never exceed the backlog: every
    queued start counts, normal or preemptible, this tick's own starts too; the newest harvested
    ones are withdrawn first (hybrid's floor keeps its normal ones), then the newest normal ones.
    A start whose job runs is never withdrawn, nor a rolling replacement's successor (the rollout,
    which admission does not cap, would queue it again)."""
    if t.fv is None or not t.rules.admission:
        return
    admitted = max(t.rules.min_pending, int(admission_cpus(t.fv, t.rules) // t.lim.cpus))
    excess = withdrawals(t.n_queued, admitted, t.lim.backlog)
    if excess <= 0:
        return
    queued = [s for s in t.starting if is_queued(s) and not s.successor]
    queued.sort(key=lambda s: (s.preemptible, s.requested_m), reverse=True)
    for s in queued[:excess]:
        t.unstart(s, StopReason.WITHDRAWN)


def drain_before_time_limit(t: Tick) -> None:
    """A ready server whose job ends within the margin drains."""
    for s in t.ready:
        if s.deadline_m is not None and s.deadline_m - t.now <= t.margin:
            t.drain(s, Drain(t.lim.name, s.id))


def replace_ahead(t: Tick) -> None:
    """With a forecast and pre-warm: a server whose job ends within the pending window, and that has
    no successor yet, no longer counts toward the live target, so the next start queues its successor
    (and names it in ``replaces``) while it still serves, where max_servers leaves room (the server
    itself still counts toward max_servers). Servers a pre-warm burst started together
    otherwise expire together and leave the pool empty for as long as their successors queue
    (measured in the simulator). Once enough successors are ready, the replaced servers drain,
    nearest time limit first, so they never serve beside them beyond max_servers."""
    if not t.forecasting or not t.rules.prewarm:
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
            t.occupied -= 1


def stop_drained(t: Tick) -> None:
    """A draining server with no call left stops (and leaves room under max_servers)."""
    for s in t.draining:
        if s.outstanding == 0:
            t.occupied -= 1
            t.out.append(Stop(t.lim.name, s.id, StopReason.TIME_LIMIT, target=t.live))
