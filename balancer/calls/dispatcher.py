"""The dispatcher: per-model FIFO of waiting calls, hand-off of free slots to the oldest waiter.

A call that finds a free slot takes it synchronously (no task, no future). Otherwise it waits on a
future in its model's queue; when a slot frees, it is handed straight to the oldest waiter, so a
server never takes more than ``concurrency`` calls and no call overtakes an older one. Which
servers are members is the pool's business: it calls ``add`` when a server becomes READY and
``remove`` when it leaves READY, from its one transition function.
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


class Slot(Protocol):
    """What the dispatcher needs of a server record."""

    outstanding: int
    concurrency: int
    idle_since_m: float
    models: tuple[str, ...]
    serving: bool  # a member: takes new calls


_seq = itertools.count()


@dataclass(eq=False, slots=True)
class _Waiter:
    fut: asyncio.Future[Slot]
    seq: int
    model: str
    since: float  # when it began to wait (the dispatcher's clock)


@dataclass
class Dispatcher:
    """Owns which READY servers serve which model and who waits for them."""

    by_model: dict[str, list[Slot]] = field(default_factory=dict)
    queues: dict[str, deque[_Waiter]] = field(default_factory=dict)
    # Live waiters per model, kept by count so the scaler's view costs O(1) with 100k queued.
    _waiting: dict[str, int] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    # -- calls ---------------------------------------------------------------------------------
    def try_acquire(self, model: str) -> Slot | None:
        """A free slot right now, or None. Only when nobody waits, so FIFO order holds."""
        q = self.queues.get(model)
        if q:
            return None
        servers = self.by_model.get(model)
        if not servers:
            return None
        s = pick_server(servers)
        if s is not None:
            s.outstanding += 1
        return s

    def enqueue(self, model: str, front: bool = False) -> asyncio.Future[Slot]:
        """Join the model's queue; the future resolves with a server whose slot is already taken."""
        fut: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        q = self.queues.setdefault(model, deque())
        others_wait = self._waiting.get(model, 0) > 0
        self._waiting[model] = self._waiting.get(model, 0) + 1
        if front:
            q.appendleft(_Waiter(fut, -next(_seq), model, self.clock()))
        else:
            q.append(_Waiter(fut, next(_seq), model, self.clock()))
        # A slot may be free already (e.g. a retried call at the front): hand it out at once. While
        # others wait there is none (a freed slot always goes to a waiter), so skip the O(servers) look.
        servers = self.by_model.get(model)
        if servers and (front or not others_wait):
            s = pick_server(servers)
            if s is not None:
                self._hand(s)
        return fut

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
        while q and q[0].fut.done():
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

    def _hand(self, server: Slot) -> None:
        while server.outstanding < server.concurrency:
            w = self._oldest_waiter(server.models)
            if w is None:
                return
            server.outstanding += 1
            self._waiting[w.model] -= 1
            w.fut.set_result(server)

    def _oldest_waiter(self, models: tuple[str, ...]) -> _Waiter | None:
        best_q = None
        best_seq = None
        for m in models:
            q = self.queues.get(m)
            if not q:
                continue
            while q and q[0].fut.done():  # cancelled or failed waiters
                q.popleft()
            if q and (best_seq is None or q[0].seq < best_seq):
                best_q, best_seq = q, q[0].seq
        return best_q.popleft() if best_q is not None else None

    # -- servers -------------------------------------------------------------------------------
    def add(self, server: Slot) -> None:
        server.serving = True
        for m in server.models:
            self.by_model.setdefault(m, []).append(server)
        self._hand(server)

    def resized(self, server: Slot) -> None:
        """``server``'s concurrency changed (a reload): a raised one takes waiting calls now; a
        lowered one takes none until its calls in flight are below it."""
        if server.serving:
            self._hand(server)

    def remove(self, server: Slot) -> None:
        server.serving = False
        for m in server.models:
            lst = self.by_model.get(m)
            if lst and server in lst:
                lst.remove(server)

    def fail_waiters(self, model: str, exc: Exception) -> int:
        q = self.queues.pop(model, None)
        n = 0
        for w in q or ():
            if not w.fut.done():
                w.fut.set_exception(exc)
                n += 1
        self._waiting[model] = self._waiting.get(model, 0) - n
        return n

    def least_loaded(self, model: str) -> Slot | None:
        """A member serving ``model`` for a metadata call: least loaded, slot or not."""
        return pick_server(self.by_model.get(model, ()), free_slot=False)
