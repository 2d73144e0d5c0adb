"""The UM-Bridge call path: Info, metadata, and Evaluate/Gradient/ApplyJacobian/ApplyHessian
forwarded to a pool server with retries.

Metadata is answered through ``calls.metadata`` (asked of one ready server once, then cached). A
call that finds no server waits in the dispatcher's queue and counts as demand for the scaler. A
call whose server vanished is retried on another server (up to ``max_attempts``); a model's own
error answer is passed on as it is, byte for byte.

Two ways through, one behaviour: ``evaluate`` (here) is the coroutine that can wait for anything
(model discovery, the first metadata, a slot, a connection); ``evaluate_fast`` (``calls.fast``, the
base class) runs first and takes every call that needs no wait before it goes out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import orjson

from balancer.calls import protocol
from balancer.calls.dispatcher import Dispatcher, Slot
from balancer.calls.fast import Call, FastPath, Headers
from balancer.calls.metadata import Metadata, pass_headers
from balancer.calls.protocol import ProtocolError
from balancer.control.probe import Probe
from balancer.http.messages import JSON_CT, Reply, Request, clip, error_reply, json_reply
from balancer.http.upstream import UpstreamError
from balancer.observe.events import Ev, EventBus
from balancer.pool.members import NoServerError
from balancer.pool.pool import Pool
from balancer.pool.servers import Server
from balancer.pool.states import ServerState


class Calls(FastPath):
    def __init__(
        self, pool: Pool, dispatcher: Dispatcher, bus: EventBus, probe: Probe, max_body_mb: float
    ) -> None:
        self.pool = pool
        self.disp = dispatcher  # the same one the pool keeps in step (its ``Members``)
        self.bus = bus
        self.probe = probe
        self.max_body_mb = max_body_mb
        self.inflight = 0
        self._call_ids = iter(range(1, 1 << 62))
        self.meta = Metadata(pool, dispatcher, self._server_lost, self._wait_as_demand)
        self._attempts: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the fast path's calls that wait

    def reconfigure(self, max_body_mb: float, stale: set[str]) -> None:
        """After a reload: the body limit, retry limits looked up again; the ``stale`` models (their
        servers' command changed) have their cached metadata and sizes asked again of the new servers."""
        self.max_body_mb = max_body_mb
        self._attempts.clear()
        self.meta.reconfigure(stale)

    # -- waiting for servers ---------------------------------------------------------------------
    def _max_startup(self) -> float:
        return max(rt.spec.startup_timeout_s for rt in self.pool.specs.values())

    async def _wait_as_demand(self, model: str, pred: Callable[[], bool]) -> None:
        """Wait (up to the start-up timeout) for ``pred``, counting as demand for ``model`` meanwhile
        ("" = a model no discovered spec has), so the scaler starts a server rather than one per call."""
        await self.pool.wait_as_demand(model, pred, self._max_startup())

    async def _check_model(self, model: str) -> None:
        """Known model: return. Unknown: wait for discovery of undiscovered specs, then decide."""
        pool = self.pool
        if pool.serves(model):
            return
        if not pool.all_discovered():
            await self._wait_as_demand("", lambda: pool.all_discovered() or pool.serves(model))
            if pool.serves(model):
                return
        # The name is the client's: echoed cut to ``ECHO_MAX`` (a 32 MiB name made a 32 MiB answer).
        known = pool.known_models()
        raise ProtocolError("ModelNotFound", f"model '{clip(model)}' not found; available: {known}")

    async def _server_lost(self, s: Server, reason: str) -> None:
        """A call to ``s`` broke: probe before declaring it gone (a stale keep-alive is no loss)."""
        if s.state in (ServerState.GONE, ServerState.STOPPING) or s.url is None:
            return
        if await self.probe.alive(s.url):
            return
        self.pool.fail(s, f"lost: {reason}")

    # -- the events of a call --------------------------------------------------------------------
    def _received(self, c: Call, nbytes: int | None) -> None:
        self.bus.emit(Ev.CALL_RECEIVED, call=c.id, op=c.op, model=c.model, bytes=nbytes)

    def _reject(self, c: Call, exc: ProtocolError) -> Reply:
        self.bus.emit(
            Ev.CALL_FAILED,
            call=c.id,
            status=exc.status,
            reason=f"{exc.kind}: {exc.message}",
            op=c.op,
            model=c.model,
            makespan_s=time.monotonic() - c.m0,
        )
        return error_reply(exc.kind, exc.message, exc.status)

    def _completed(self, c: Call, server: str | None, status: int, nbytes: int, **more: Any) -> None:
        self.bus.emit(
            Ev.CALL_COMPLETED,
            call=c.id,
            server=server,
            status=status,
            bytes=nbytes,
            op=c.op,
            model=c.model,
            makespan_s=time.monotonic() - c.m0,
            **more,
        )

    # -- handlers --------------------------------------------------------------------------------
    async def info(self, request: Request) -> Reply:
        c = Call(self, "Info")
        self._received(c, 0)
        if not self.pool.all_discovered():
            await self._wait_as_demand("", self.pool.all_discovered)
        models = self.pool.known_models()
        why = self._none_servable(models)
        if why:
            # A UM-Bridge error for clients that read the status; the official Python client reads
            # only ``models`` (and then says "Supported models are: [...]"), so the reason is there too.
            doc = {"error": {"type": "ServiceUnavailable", "message": why}, "models": [why]}
            body = orjson.dumps({"protocolVersion": protocol.PROTOCOL_VERSION, **doc})
            self._reject(c, ProtocolError("ServiceUnavailable", why, 503))
            return 503, JSON_CT, body
        body = orjson.dumps({"protocolVersion": protocol.PROTOCOL_VERSION, "models": models})
        self._completed(c, None, 200, len(body), cached=True)
        return 200, JSON_CT, body

    def _none_servable(self, models: list[str]) -> str:
        """Why no model can be served at all (every spec held or removed), or "" when one can:
        then /Info says why instead of an empty or unusable list."""
        pool = self.pool
        if pool.closing or any(pool.can_serve(m) for m in models):
            return ""
        held = [rt.held_reason for rt in pool.specs.values() if rt.held]
        return f"no model can be served: {'; '.join(held)}" if held else ""

    def _read(self, c: Call, request: Request) -> dict[str, Any]:
        """The request's JSON object (journaled as received either way)."""
        body = request.body
        if request.too_large:
            self._received(c, None)
            raise ProtocolError(
                "InvalidInput",
                f"request body exceeds the balancer's limit of {self.max_body_mb:g} MiB (max_body_mb)",
                413,
            ) from None
        try:
            doc = protocol.parse_body(body)
        except ProtocolError:
            self._received(c, len(body))
            raise
        # Journal, dashboard and notifications see the name cut: it is the client's, of any length.
        c.model = clip(doc["name"])
        self._received(c, len(body))
        return doc

    async def metadata(self, request: Request, op: str) -> Reply:
        c = Call(self, op)
        try:
            doc = self._read(c, request)
            await self._check_model(doc["name"])
            req = protocol.check_fields(op, doc)
            ans, cached = await self.meta.get(op, req.model, req.config_key, request.body)
        except ProtocolError as exc:
            return self._reject(c, exc)
        except NoServerError as exc:
            return self._reject(c, ProtocolError("ServiceUnavailable", str(exc), 503))
        except Exception as exc:  # a bug: still one journaled, readable answer
            return self._reject(c, ProtocolError("InternalError", f"{type(exc).__name__}: {exc}", 500))
        self._completed(c, None, ans[0], len(ans[2]), cached=cached)
        return ans

    async def evaluate(self, request: Request, op: str) -> Reply:
        """Evaluate/Gradient/ApplyJacobian/ApplyHessian: check as a model server would, in its order
        (model, support, fields, sizes), then queue, forward, retry on loss."""
        self.inflight += 1
        try:
            c = Call(self, op)
            doc: dict[str, Any] | None
            req: protocol.ParsedRequest | None
            try:
                doc = self._read(c, request)
                model = doc["name"]
                await self._check_model(model)
                support = self.meta.support.get(model)  # no coroutine once the flags are known
                if support is None:
                    support = await self.meta.load_support(model)
                if support.get(op) is False:
                    raise ProtocolError("UnsupportedFeature", f"{op} not supported by model!")
                req = protocol.check_fields(op, doc)
                ins, outs = await self.meta.sizes(model, req.config, req.config_key, op)
                if ins is not None:
                    protocol.check_sizes(op, doc, ins, outs)
            except ProtocolError as exc:
                return self._reject(c, exc)
            except NoServerError as exc:
                return self._reject(c, ProtocolError("ServiceUnavailable", str(exc), 503))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass  # a server with odd size answers: leave the checks to it
            except Exception as exc:  # a bug: still one journaled, readable answer
                return self._reject(c, ProtocolError("InternalError", f"{type(exc).__name__}: {exc}", 500))
            doc = req = None  # the parsed input is not needed while the call waits (~0.4 KB each)
            return await self._forward(c, model, request.body)
        finally:
            self._call_ended()

    # -- forwarding ------------------------------------------------------------------------------
    async def _forward(
        self,
        c: Call,
        model: str,
        body: bytes,
        first: Server | None = None,
        attempt: int = 0,
        charged: int = 0,
    ) -> Reply:
        """Queue for a slot (``first``: one already taken), send, retry elsewhere on a loss.
        ``attempt``, ``charged``: attempts made already, and those of them that count toward
        ``max_attempts`` (a fast call comes here after its first attempt's loss)."""
        disp = self.disp
        emit = self.bus.emit
        max_attempts = self._max_attempts(model)
        path = "/" + c.op
        handed_stale = False  # the last hand-off's server drained before this call could use it
        while True:
            attempt += not handed_stale
            s: Slot | None
            if first is not None:
                s, first = first, None
            else:
                s = disp.try_acquire(model)
            if s is None:
                if not self.pool.can_serve(model):
                    reason = self.pool.unservable_reason(model)
                    return self._reject(c, ProtocolError("ServiceUnavailable", reason, 503))
                fut = disp.enqueue(model, front=attempt > 1 or handed_stale)
                if not fut.done():
                    emit(Ev.CALL_QUEUED, call=c.id, model=model, depth=disp.depth(model))
                    self.pool.wake.set()
                try:
                    s = await fut
                except NoServerError as exc:
                    return self._reject(c, ProtocolError("ServiceUnavailable", str(exc), 503))
                except asyncio.CancelledError:
                    if fut.cancelled():
                        disp.gave_up(model)
                    elif fut.exception() is None:
                        disp.release(fut.result(), time.monotonic())
                    raise
            srv = cast(Server, s)  # the dispatcher's members are the pool's records
            # A slot handed over while this task waited to run may belong to a server drained (or
            # stopped) since: no new call goes there; wait again, first in line.
            handed_stale = not srv.serving
            if handed_stale:
                disp.release(srv, time.monotonic())
                continue
            self._dispatched(c, srv, attempt)
            try:
                assert srv.upstream is not None  # set before a server becomes ready
                status, raw, data = await srv.upstream.post(path, body)
            except (OSError, UpstreamError) as exc:
                charged, reply = await self._attempt_lost(c, srv, exc, attempt, charged, max_attempts)
                if reply is not None:
                    return reply
                continue
            except BaseException:
                disp.release(srv, time.monotonic())
                raise
            return self._answered(c, srv, status, raw, data)

    def _dispatched(self, c: Call, srv: Server, attempt: int) -> None:
        c.t0 = now = time.monotonic()
        if c.queue_s is None:
            c.queue_s = now - c.m0
        self.bus.emit(Ev.CALL_DISPATCHED, call=c.id, server=srv.id, attempt=attempt)

    async def _attempt_lost(
        self, c: Call, srv: Server, exc: Exception, attempt: int, charged: int, max_attempts: int
    ) -> tuple[int, Reply | None]:
        """An attempt on ``srv`` broke: is the server gone (probed, holding the slot meanwhile)?
        Returns the attempts charged so far and, when they are used up, the call's 503."""
        reason = f"{type(exc).__name__}: {exc}"
        await self._server_lost(srv, reason)
        charged += not srv.preempted  # the scheduler took it back: not the call's fault
        # The call's line comes before the slot is released: a waiter handed the slot is
        # dispatched (and journaled) in that very release.
        reply = None
        if charged >= max_attempts:
            why = f"call failed on {attempt} server(s); last: {reason}"
            reply = self._reject(c, ProtocolError("ServiceUnavailable", why, 503))
        else:
            self.bus.emit(
                Ev.CALL_REQUEUED, call=c.id, server=srv.id, attempt=attempt, reason=reason, model=c.model
            )
        self.disp.release(srv, time.monotonic())
        return charged, reply

    def _answered(self, c: Call, srv: Server, status: int, raw: Headers, data: bytes) -> Reply:
        t1 = time.monotonic()
        took = t1 - c.t0
        self.pool.count_call(srv, took)
        # Journaled before the slot is released: the waiter it is handed to goes out in the release.
        self._completed(c, srv.id, status, len(data), service_s=took, queue_s=c.queue_s)
        self.disp.release(srv, t1)
        return status, pass_headers(raw), data

    def _max_attempts(self, model: str) -> int:
        n = self._attempts.get(model)
        if n is None:
            specs = self.pool.specs.values()
            n = max((rt.spec.max_attempts for rt in specs if model in rt.models), default=3)
            if self.pool.all_discovered():
                self._attempts[model] = n
        return n

    def _call_ended(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self.pool.closing:
            self.pool.changed()


async def shmem_unsupported(request: Request) -> Reply:
    return error_reply("UnsupportedFeature", "shared memory does not cross the balancer; use plain HTTP", 400)


async def test_shmem(request: Request) -> Reply:
    # The umbridge client compares a value it put in shared memory; an empty answer makes it
    # fall back to HTTP, which is what we want behind a balancer.
    return json_reply({})
