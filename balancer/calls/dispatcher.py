"""The dispatcher: per-model FIFO of waiting calls, hand-off of free slots to the oldest waiter.

A call that finds a free slot takes it synchronously (no task, no future). Otherwise it waits on a
future in its model's queue; when a slot frees, it is handed straight to the oldest waiter, so a
server never takes more than ``concurrency`` calls and no call overtakes an older one. Which
servers are members is the pool's business: it calls ``add`` when a server becomes READY and
``remove`` when it leaves READY, from its one transition function.

No step grows with the number of servers or waiting calls (issue 23: 10,000 servers, 1,000,000
queued, ``bench/scale.py``): the members with a free slot are indexed per model by their load
(``_Free``), so the least-loaded one is found in O(concurrency) and kept up to date in O(models)
whenever a server's load changes; members are insertion-ordered sets, so leaving is O(1). Among
equally loaded servers the one that became free last wins: calls stay on a warm set of servers and
the rest go idle long enough to be released when demand falls.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from balancer.policy.routing import pick_server

Members = dict["Slot", None]  # an insertion-ordered set


class Slot(Protocol):
    """What the dispatcher needs of a server record."""

    outstanding: int
    concurrency: int
    idle_since_m: float
    models: tuple[str, ...]
    serving: bool  # a member: takes new calls


_seq = itertools.count()


# A waiting call's callback (``enqueue_cb``): (a server whose slot it holds, None) or (None, why not).
Handed = Callable[["Slot | None", "Exception | None"], None]


@dataclass(eq=False, slots=True)
class _Waiter:
    fut: asyncio.Future[Slot] | None  # None: a callback waiter (``cb``)
    seq: int
    model: str
    since: float  # when it began to wait (the dispatcher's clock)
    cb: Handed | None = None

    def gone(self) -> bool:
        """A future's call was cancelled or failed: it waits no more (a callback's never goes)."""
        return self.fut is not None and self.fut.done()


class _Free:
    """One model's members with a free slot, bucketed by load: ``buckets[n]`` holds those with
    ``n`` calls (fewer than their concurrency), each bucket in the order they entered it."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: list[Members] = []

    def add(self, s: Slot, load: int) -> None:
        b = self.buckets
        while len(b) <= load:
            b.append({})
        b[load][s] = None

    def least_loaded(self) -> Slot | None:
        for bucket in self.buckets:
            if bucket:
                return next(reversed(bucket))  # the last to enter: a warm server
        return None


@dataclass
class Dispatcher:
    """Owns which READY servers serve which model and who waits for them."""

    by_model: dict[str, Members] = field(default_factory=dict)
    queues: dict[str, deque[_Waiter]] = field(default_factory=dict)
    # Live waiters per model, kept by count so the scaler's view costs O(1) with 100k queued.
    _waiting: dict[str, int] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    _free: dict[str, _Free] = field(default_factory=dict)  # model -> members with a free slot
    _at: dict[Slot, int] = field(default_factory=dict)  # member -> the load it is indexed under

    def _reindex(self, s: Slot) -> None:
        """``s``'s load, concurrency or membership changed: move it to its bucket (or out). Twice
        per call on the per-call path, so the buckets are reached directly, not through methods."""
        at = self._at
        old = at.get(s)
        load = s.outstanding
        free = s.serving and load < s.concurrency
        if free and old == load:
            return
        if old is not None:
            del at[s]
            for m in s.models:
                self._free[m].buckets[old].pop(s, None)  # indexed under ``old``: its _Free exists
        if free:
            at[s] = load
            for m in s.models:
                f = self._free.get(m)
                if f is None:
                    f = self._free[m] = _Free()
                f.add(s, load)

    def _pick(self, model: str) -> Slot | None:
        f = self._free.get(model)
        return f.least_loaded() if f is not None else None

    # -- calls ---------------------------------------------------------------------------------
    def try_acquire(self, model: str) -> Slot | None:
        """A free slot right now, or None. Only when nobody waits, so FIFO order holds."""
        q = self.queues.get(model)
        if q:
            return None
        s = self._pick(model)
        if s is not None:
            s.outstanding += 1
            self._reindex(s)
        return s

    def enqueue(self, model: str, front: bool = False) -> asyncio.Future[Slot]:
        """Join the model's queue; the future resolves with a server whose slot is already taken."""
        fut: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._join(model, fut, None, front)
        return fut

    def enqueue_cb(self, model: str, cb: Handed, front: bool = False) -> None:
        """Join the model's queue; ``cb(server, None)`` when a slot is handed over (the slot taken),
        ``cb(None, error)`` when no server will come (``fail_waiters``). No future, no task: the
        fast path's queued calls go out from the hand-off itself. ``cb`` may run before this returns."""
        self._join(model, None, cb, front)

    def _join(self, model: str, fut: asyncio.Future[Slot] | None, cb: Handed | None, front: bool) -> None:
        q = self.queues.setdefault(model, deque())
        others_wait = self._waiting.get(model, 0) > 0
        self._waiting[model] = self._waiting.get(model, 0) + 1
        if front:
            q.appendleft(_Waiter(fut, -next(_seq), model, self.clock(), cb))
        else:
            q.append(_Waiter(fut, next(_seq), model, self.clock(), cb))
        # A slot may be free already (e.g. a retried call at the front): hand it out at once. While
        # others wait there is none (a freed slot always goes to a waiter).
        if front or not others_wait:
            s = self._pick(model)
            if s is not None:
                self._hand(s)

    def depth(self, model: str) -> int:
        """Queue length, counting waiters that gave up but are not yet popped (O(1), for the journal)."""
        q = self.queues.get(model)
        return len(q) if q else 0

    def waiting(self, model: str) -> int:
        """Calls waiting for ``model`` (O(1))."""
        return self._waiting.get(model, 0)

    def oldest_wait(self, model: str) -> float | None:
        """When the longest-waiting call for ``model`` began to wait; None when none waits. A retried
        call put at the front counts from its re-queueing."""
        q = self.queues.get(model)
        if not q or not self._waiting.get(model):
            return None
        while q and q[0].gone():
            q.popleft()
        return min(w.since for w in itertools.islice(q, 2)) if q else None

    def gave_up(self, model: str) -> None:
        """A waiter's future was cancelled (its call was cancelled): it waits no more."""
        self._waiting[model] -= 1

    def release(self, server: Slot, now: float) -> None:
        """A call finished on ``server``: give the slot to the oldest waiter, else free it."""
        server.outstanding -= 1
        if server.serving:
            self._hand(server)
        if server.outstanding == 0:
            server.idle_since_m = now
        self._reindex(server)

    def _hand(self, server: Slot) -> None:
        callbacks: list[Handed] = []
        handed = False
        while server.outstanding < server.concurrency:
            w = self._oldest_waiter(server.models)
            if w is None:
                break
            server.outstanding += 1
            self._waiting[w.model] -= 1
            handed = True
            if w.fut is not None:
                w.fut.set_result(server)
            else:
                assert w.cb is not None
                callbacks.append(w.cb)
        if handed:
            self._reindex(server)
        for cb in callbacks:  # after the books are straight: a callback may hand a slot back
            cb(server, None)

    def _oldest_waiter(self, models: tuple[str, ...]) -> _Waiter | None:
        best_q = None
        best_seq = None
        for m in models:
            q = self.queues.get(m)
            if not q:
                continue
            while q and q[0].gone():  # cancelled or failed waiters
                q.popleft()
            if q and (best_seq is None or q[0].seq < best_seq):
                best_q, best_seq = q, q[0].seq
        return best_q.popleft() if best_q is not None else None

    # -- servers -------------------------------------------------------------------------------
    def add(self, server: Slot) -> None:
        server.serving = True
        for m in server.models:
            self.by_model.setdefault(m, {})[server] = None
        self._reindex(server)
        self._hand(server)

    def resized(self, server: Slot) -> None:
        """``server``'s concurrency changed (a reload): a raised one takes waiting calls now; a
        lowered one takes none until its calls in flight are below it."""
        self._reindex(server)
        if server.serving:
            self._hand(server)

    def remove(self, server: Slot) -> None:
        server.serving = False
        for m in server.models:
            members = self.by_model.get(m)
            if members is not None:
                members.pop(server, None)
        self._reindex(server)

    def fail_waiters(self, model: str, exc: Exception) -> int:
        q = self.queues.pop(model, None)
        n = 0
        callbacks: list[Handed] = []
        for w in q or ():
            if w.gone():
                continue
            if w.fut is not None:
                w.fut.set_exception(exc)
            elif w.cb is not None:
                callbacks.append(w.cb)
            n += 1
        self._waiting[model] = self._waiting.get(model, 0) - n
        for cb in callbacks:
            cb(None, exc)
        return n

    def least_loaded(self, model: str) -> Slot | None:
        """A member serving ``model`` for a metadata call: least loaded, slot or not."""
        return pick_server(self.by_model.get(model, ()), free_slot=False)
