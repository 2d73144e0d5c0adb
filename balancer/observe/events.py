"""One event bus: components emit typed events, subscribers (journal, metrics, dashboard, ...) listen.

An emitter names the event (``Ev``) and its fields; the bus stamps the schema version, the name,
wall-clock ``t`` and monotonic ``m`` into one dict and calls every subscriber with it, in the
emitter's own call: no task, no queue, no copy. That keeps the per-call path at a few microseconds
per event (``bench/overhead.py``); a subscriber with slow work (a network notification) hands it
off itself. A subscriber that raises is reported once on stderr and skipped for that event, so a
broken listener never breaks a call. Subscribers must not modify the dict.

The event names and fields are the journal schema (README, "Journal schema"), version 1: fields
may be added, never renamed or removed without bumping ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import monotonic, time
from typing import Any, Final

SCHEMA_VERSION = 1

log = logging.getLogger(__name__)


class Ev:
    """Every event the balancer emits. Plain ``Final`` strings rather than an Enum: an enum
    member's ``.value`` and hash are Python-level calls, measurable on the per-call path."""

    BALANCER_STARTED: Final = "balancer.started"
    BALANCER_STOPPING: Final = "balancer.stopping"
    BALANCER_STOPPED: Final = "balancer.stopped"
    BALANCER_ERROR: Final = "balancer.error"  # a component failed (e.g. a scaler pass); the rest goes on
    CALL_RECEIVED: Final = "call.received"
    CALL_QUEUED: Final = "call.queued"
    CALL_DISPATCHED: Final = "call.dispatched"
    CALL_REQUEUED: Final = "call.requeued"
    CALL_COMPLETED: Final = "call.completed"
    CALL_FAILED: Final = "call.failed"
    SERVER_REQUESTED: Final = "server.requested"
    SERVER_STARTED: Final = "server.started"
    SERVER_ADOPTED: Final = "server.adopted"  # re-registered after a balancer restart, taken back
    SERVER_REGISTERED: Final = "server.registered"
    SERVER_READY: Final = "server.ready"
    SERVER_EXPOSED: Final = "server.exposed"  # a local server listens on non-loopback addresses too
    SERVER_DRAINING: Final = "server.draining"
    SERVER_STOPPING: Final = "server.stopping"
    SERVER_STOPPED: Final = "server.stopped"
    SERVER_FAILED: Final = "server.failed"
    SERVER_PREEMPTED: Final = "server.preempted"  # the scheduler takes its job back: lost, not failed
    SERVER_SIZES_UNKNOWN: Final = "server.sizes_unknown"  # a ready check could not read a model's sizes
    SERVER_USAGE: Final = "server.usage"  # a launcher's sample of its server's processes, node, GPUs
    SPEC_HELD: Final = "spec.held"
    SPEC_RESUMED: Final = "spec.resumed"  # a held spec starts servers again
    SCALE_DECISION: Final = "scale.decision"
    OPERATOR_ACTION: Final = "operator.action"  # an operator's change (drain, stop, scale, pause, resume)
    AUTH_REFUSED: Final = "auth.refused"
    PEER_REFUSED: Final = "peer.refused"  # a connection from another user (or host) to the client port
    CAPACITY_SAMPLE: Final = "capacity.sample"  # the cluster's idle capacity, observed and as predicted
    FORECAST_TRAINED: Final = "forecast.trained"  # a forecaster chosen and fitted (or why none)
    FORECAST_CHANGED: Final = "forecast.changed"  # enabled/disabled, override set/cleared/expired
    NOTIFY_SENT: Final = "notify.sent"  # a notification delivered to one target (apprise URL)
    NOTIFY_FAILED: Final = "notify.failed"  # ... or not, with the error; calls never wait for either
    PROFILE_SIZED: Final = "profile.sized"  # an "auto" resource sized from the spec's profile (or fallback)
    PROFILE_MISMATCH: Final = "profile.mismatch"  # a spec's resources far from what it uses, with advice
    WORKLOAD_PRIOR: Final = "workload.prior"  # a spec's class guessed from its Python source at start
    WORKLOAD_CLASSIFIED: Final = "workload.classified"  # ... measured: first verdict, then each change
    SERVER_DEFERRED: Final = "server.deferred"  # a local start waits for free GPUs or cores
    CONFIG_RELOADED: Final = "config.reloaded"  # a reload applied: specs added/removed/changed, settings
    CONFIG_REJECTED: Final = "config.rejected"  # a reload refused with the reason; nothing changed


EVENT_NAMES = frozenset(v for k, v in vars(Ev).items() if k.isupper())
Event = dict[str, Any]
Subscriber = Callable[[Event], None]


class EventBus:
    __slots__ = ("_broken", "_every", "_route", "_subs")

    def __init__(self) -> None:
        self._subs: tuple[tuple[Subscriber, frozenset[str] | None], ...] = ()  # (fn, only), in order
        self._every: tuple[Subscriber, ...] = ()  # those that take every event
        # Each event name -> its subscribers (a name not in ``Ev``: ``_every``), so a subscriber of
        # rare events (``only``) is never called for a call's events, and emit pays one dict lookup.
        self._route: dict[str, tuple[Subscriber, ...]] = dict.fromkeys(EVENT_NAMES, ())
        self._broken: set[Subscriber] = set()

    def subscribe(
        self, fn: Subscriber, only: frozenset[str] | None = None, first: bool = False
    ) -> Callable[[], None]:
        """Call ``fn(event)`` for every event from now on, or for the events named in ``only``
        (``first``: before the subscribers there are, e.g. to journal something ahead of an event);
        returns the unsubscribe function."""
        entry = (fn, only)
        self._subs = (entry, *self._subs) if first else (*self._subs, entry)
        self._reroute()

        def unsubscribe() -> None:
            self._subs = tuple(s for s in self._subs if s is not entry)
            self._reroute()

        return unsubscribe

    def _reroute(self) -> None:
        subs = self._subs
        self._every = tuple(fn for fn, only in subs if only is None)
        names = EVENT_NAMES.union(*(only for _, only in subs if only is not None))
        self._route = {ev: tuple(fn for fn, only in subs if only is None or ev in only) for ev in names}

    def emit(self, ev: str, **fields: Any) -> None:
        """Emit ``ev`` (an ``Ev`` constant) with its fields to every subscriber."""
        fields["v"] = SCHEMA_VERSION
        fields["ev"] = ev
        fields["t"] = time()
        fields["m"] = monotonic()
        try:
            subs = self._route[ev]
        except KeyError:  # a name outside ``Ev`` (tests)
            subs = self._every
        for fn in subs:
            try:
                fn(fields)
            except Exception as exc:
                if fn not in self._broken:
                    self._broken.add(fn)
                    log.error("event subscriber %r failed on %s: %s: %s", fn, ev, type(exc).__name__, exc)


class Throttled:
    """One event for a flood of the same thing (refused tokens, refused peers): journaled at most
    once per ``every_s`` with the count since the last line and the last one's fields; the rest of
    an interval is flushed at its end, and what is pending when the balancer stops just before its
    ``balancer.stopped`` (100 refusals journal as 100). Someone hammering a port fills no disk."""

    __slots__ = ("_bus", "_count", "_ev", "_every", "_flush", "_last", "_logged_m")

    def __init__(self, bus: EventBus, ev: str, every_s: float) -> None:
        self._bus, self._ev, self._every = bus, ev, every_s
        self._count = 0
        self._last: dict[str, Any] = {}
        self._logged_m = -every_s
        self._flush: asyncio.TimerHandle | None = None
        # No component has to remember to close it: the pending count is journaled at the stop.
        bus.subscribe(lambda _: self.close(), only=frozenset({Ev.BALANCER_STOPPED}), first=True)

    def note(self, **fields: Any) -> None:
        self._count += 1
        self._last = fields
        wait = self._logged_m + self._every - monotonic()
        if wait <= 0:
            self._log()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(wait, self._log)

    def _log(self) -> None:
        self._flush = None
        if self._count:
            self._bus.emit(self._ev, **self._last, count=self._count)
            self._count, self._logged_m = 0, monotonic()

    def close(self) -> None:
        """Journal what is pending now (at shutdown)."""
        if self._flush is not None:
            self._flush.cancel()
            self._log()
