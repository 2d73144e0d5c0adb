"""The call path's fast way through: a warm call with no task of its own.

``evaluate_fast`` runs first for every Evaluate-family call (the frontend's fast handler,
``Router.add_fast``) and takes it whenever no wait is needed before it goes out: the checks against
the cached support flags and sizes, a free slot, a kept-alive connection. The call is sent from the
frontend's read callback and its answer written from the upstream connection's (``Call.answered``):
two event-loop passes per call instead of four. A call that must wait for a slot joins the
dispatcher's queue with a callback (``Call.handed``) and goes out from the release that frees its
slot; one that must wait for something else (a new connection, a lost attempt's probe) continues in
a task, through the coroutine path's own forwarding. ``FastPath`` is mixed into ``calls.path.Calls``,
whose events, forwarding and retries it uses, so both ways behave the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from balancer.calls import protocol
from balancer.calls.dispatcher import Dispatcher, Slot
from balancer.calls.metadata import Metadata
from balancer.calls.protocol import ProtocolError
from balancer.http.messages import Reply, Request, clip
from balancer.observe.events import Ev, EventBus
from balancer.pool.pool import Pool
from balancer.pool.servers import Server

Headers = list[tuple[bytes, bytes]]
Done = Callable[[Reply], None]


class Call:
    """One client call: what its events say besides their own fields (the operation, the model,
    when it arrived and how long it waited), and for a fast call on its way, what its answer's
    callback needs."""

    __slots__ = ("body", "calls", "done", "id", "m0", "model", "op", "queue_s", "srv", "t0", "target")

    def __init__(self, calls: FastPath, op: str, model: str | None = None) -> None:
        self.calls = calls
        self.id = next(calls._call_ids)
        self.op = op
        self.model = model  # cut to ``ECHO_MAX`` (the client's name, of any length) for the events
        self.m0 = time.monotonic()
        self.queue_s: float | None = None  # received to first dispatch, once dispatched
        self.body = b""
        self.done: Done | None = None
        self.srv: Server | None = None
        self.target = ""  # the model's name as the client sent it: what a fast call is routed by
        self.t0 = 0.0

    def handed(self, slot: Slot | None, exc: Exception | None) -> None:
        """The dispatcher's callback for a fast call that waited: a slot, or why none will come."""
        calls, done = self.calls, self.done
        assert done is not None
        if slot is None:
            calls._call_ended()
            done(calls._reject(self, ProtocolError("ServiceUnavailable", str(exc), 503)))
            return
        s = cast(Server, slot)  # the dispatcher's members are the pool's records
        if not s.serving:  # drained (or stopped) since the slot was handed: wait again, first in line
            calls.disp.release(s, time.monotonic())
            calls.disp.enqueue_cb(self.target, self.handed, front=True)
            return
        calls._send(self, s)

    def answered(self, status: int, raw: Headers, data: bytes, exc: Exception | None) -> None:
        """The fast path's upstream callback: the answer (or the attempt's loss) arrived."""
        calls, done, srv = self.calls, self.done, self.srv
        assert done is not None and srv is not None
        if exc is not None:
            calls._spawn(calls._resume(self, srv, exc))
            return
        try:
            reply = calls._answered(self, srv, status, raw, data)
        except Exception as err:  # a bug: still one journaled, readable answer
            reply = calls._reject(self, ProtocolError("InternalError", f"{type(err).__name__}: {err}", 500))
        finally:
            calls._call_ended()
        done(reply)


class FastPath:
    """The fast path of ``calls.path.Calls`` (its base class): what it uses of it is declared below."""

    disp: Dispatcher
    pool: Pool
    meta: Metadata
    bus: EventBus
    inflight: int
    _call_ids: Any  # an iterator of call ids
    _tasks: set[asyncio.Task[None]]

    if TYPE_CHECKING:  # the coroutine path's, in calls.path.Calls

        def _received(self, c: Call, nbytes: int | None) -> None: ...
        def _reject(self, c: Call, exc: ProtocolError) -> Reply: ...
        def _dispatched(self, c: Call, srv: Server, attempt: int) -> None: ...
        def _answered(self, c: Call, srv: Server, status: int, raw: Headers, data: bytes) -> Reply: ...
        def _max_attempts(self, model: str) -> int: ...
        def _call_ended(self) -> None: ...
        async def _forward(
            self,
            c: Call,
            model: str,
            body: bytes,
            first: Server | None = None,
            attempt: int = 0,
            charged: int = 0,
        ) -> Reply: ...
        async def _attempt_lost(
            self, c: Call, srv: Server, exc: Exception, attempt: int, charged: int, max_attempts: int
        ) -> tuple[int, Reply | None]: ...

    def evaluate_fast(self, request: Request, op: str, done: Done) -> bool:
        """``evaluate`` without a task where no wait comes before the call goes out (module
        docstring). False (nothing done, nothing journaled) when a check needs a server's answer
        first: then ``evaluate`` runs as a coroutine."""
        if request.too_large:
            return False
        body = request.body
        try:
            doc = protocol.parse_body(body)
        except ProtocolError:
            return False
        model = doc["name"]
        support = self.meta.support.get(model)
        if support is None or not self.pool.serves(model):
            return False
        try:
            if support.get(op) is False:
                raise ProtocolError("UnsupportedFeature", f"{op} not supported by model!")
            req = protocol.check_fields(op, doc)
            sizes = self.meta.known_sizes(model, req.config_key, op)
            if sizes is None:
                return False  # asked of a server first (or its answer was unusable): the coroutine
            protocol.check_sizes(op, doc, *sizes)
        except ProtocolError as exc:
            c = Call(self, op, clip(model))
            self._received(c, len(body))
            done(self._reject(c, exc))
            return True
        except (KeyError, TypeError):
            pass  # a server with odd size answers: leave the checks to it
        c = Call(self, op, clip(model))
        self._received(c, len(body))
        self.inflight += 1
        c.target, c.body, c.done = model, body, done
        s = cast("Server | None", self.disp.try_acquire(model))
        if s is not None:
            self._send(c, s)
            return True
        if not self.pool.can_serve(model):
            self._call_ended()
            why = self.pool.unservable_reason(model)
            done(self._reject(c, ProtocolError("ServiceUnavailable", why, 503)))
            return True
        self.disp.enqueue_cb(model, c.handed)
        if c.srv is None:  # waits (not handed a slot at once)
            self.bus.emit(Ev.CALL_QUEUED, call=c.id, model=model, depth=self.disp.depth(model))
            self.pool.wake.set()
        return True

    def _send(self, c: Call, s: Server) -> None:
        """A fast call's first attempt on ``s`` (its slot taken): out now on a kept-alive
        connection, or from a task that connects."""
        c.srv = s
        if s.upstream is not None and s.upstream.post_nowait("/" + c.op, c.body, c.answered):
            self._dispatched(c, s, 1)
        else:
            assert c.done is not None
            self._spawn(self._forward_then(c, c.target, c.body, s, c.done))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a task nobody references may be collected mid-call
        task.add_done_callback(self._tasks.discard)

    async def _forward_then(self, c: Call, model: str, body: bytes, first: Server | None, done: Done) -> None:
        """A fast call that waits: for a slot or a connection."""
        try:
            reply = await self._forward(c, model, body, first)
        except Exception as exc:  # a bug: still one journaled, readable answer
            reply = self._reject(c, ProtocolError("InternalError", f"{type(exc).__name__}: {exc}", 500))
        finally:
            self._call_ended()
        done(reply)

    async def _resume(self, c: Call, srv: Server, exc: Exception) -> None:
        """A fast call's first attempt broke: what ``_forward`` does after a loss, then on."""
        assert c.done is not None
        try:
            charged, reply = await self._attempt_lost(c, srv, exc, 1, 0, self._max_attempts(c.target))
            if reply is None:
                reply = await self._forward(c, c.target, c.body, None, 1, charged)
        except Exception as err:  # a bug: still one journaled, readable answer
            reply = self._reject(c, ProtocolError("InternalError", f"{type(err).__name__}: {err}", 500))
        finally:
            self._call_ended()
        c.done(reply)
