"""The UM-Bridge call path: Info, the metadata cache, and Evaluate/Gradient/ApplyJacobian/ApplyHessian
forwarded to a pool server with retries.

Metadata (``/Info``, ``/InputSizes``, ``/OutputSizes``, ``/ModelInfo``) is asked of one ready server
once per (operation, model, config) and then answered from the cache. A call that finds no server
waits in the dispatcher's queue and counts as demand for the scaler. A call whose server vanished
is retried on another server (up to ``max_attempts``); a model's own error answer is passed on as
it is, byte for byte.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, TypeVar, cast

import orjson

from balancer.calls import protocol
from balancer.calls.dispatcher import Dispatcher
from balancer.calls.protocol import ProtocolError
from balancer.control.probe import Probe
from balancer.http.messages import JSON_CT, Reply, Request, clip, error_reply, json_reply
from balancer.http.upstream import UpstreamError
from balancer.observe.events import Ev, EventBus
from balancer.pool.members import NoServerError
from balancer.pool.pool import Pool
from balancer.pool.servers import Server
from balancer.pool.states import ServerState

# Per-connection headers of a model server's answer; the frontend frames its own answer.
_DROP_RAW = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


CACHE_ENTRIES = 4096  # per cache: each distinct config a client sends adds an entry


K = TypeVar("K")
V = TypeVar("V")


class LRU(OrderedDict[K, V]):
    """A dict that forgets its least recently used entries beyond ``size``: clients choose the
    configs, so the metadata and sizes caches must not grow with them (~4.6 KB each)."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        super().__init__()
        self.size = size

    def get(self, key: K, default: Any = None) -> Any:
        try:
            self.move_to_end(key)
        except KeyError:
            return default
        return self[key]

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def _pass_headers(raw: list[tuple[bytes, bytes]]) -> bytes:
    """A model server's headers, as it sent them, minus the per-connection ones."""
    return b"".join(b"%s: %s\r\n" % (k, v) for k, v in raw if k.lower() not in _DROP_RAW)


class Calls:
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
        self._meta: dict[tuple[str, str, bytes], Reply] = LRU()
        self._meta_inflight: dict[tuple[str, str, bytes], asyncio.Future[Reply]] = {}
        self._in_sizes: dict[tuple[str, bytes], list[int]] = LRU()
        self._out_sizes: dict[tuple[str, bytes], list[int]] = LRU()
        self._attempts: dict[str, int] = {}
        self._reloads = 0
        self._support: dict[str, dict[str, Any]] = {}  # model -> ModelInfo's "support" flags

    def reconfigure(self, max_body_mb: float, stale: set[str]) -> None:
        """After a reload: the body limit, retry limits looked up again; the ``stale`` models (their
        servers' command changed) have their cached metadata and sizes asked again of the new servers."""
        self.max_body_mb = max_body_mb
        self._attempts.clear()
        self._reloads += 1
        caches: tuple[dict[Any, Any], ...] = (self._meta, self._in_sizes, self._out_sizes)
        for cache in caches:
            for key in [k for k in cache if k[-2] in stale]:
                del cache[key]

    # -- waiting for servers ---------------------------------------------------------------------
    def _max_startup(self) -> float:
        return max(rt.spec.startup_timeout_s for rt in self.pool.specs.values())

    async def _wait_as_demand(self, model: str, pred: Any) -> None:
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

    # -- handlers --------------------------------------------------------------------------------
    async def info(self, request: Request) -> Reply:
        call = next(self._call_ids)
        self.bus.emit(Ev.CALL_RECEIVED, call=call, op="Info", model=None, bytes=0)
        if not self.pool.all_discovered():
            await self._wait_as_demand("", self.pool.all_discovered)
        models = self.pool.known_models()
        why = self._none_servable(models)
        if why:
            # A UM-Bridge error for clients that read the status; the official Python client reads
            # only ``models`` (and then says "Supported models are: [...]"), so the reason is there too.
            doc = {"error": {"type": "ServiceUnavailable", "message": why}, "models": [why]}
            body = orjson.dumps({"protocolVersion": protocol.PROTOCOL_VERSION, **doc})
            self.bus.emit(Ev.CALL_FAILED, call=call, status=503, reason=f"ServiceUnavailable: {why}")
            return 503, JSON_CT, body
        body = orjson.dumps({"protocolVersion": protocol.PROTOCOL_VERSION, "models": models})
        self.bus.emit(Ev.CALL_COMPLETED, call=call, server=None, status=200, bytes=len(body), cached=True)
        return 200, JSON_CT, body

    def _none_servable(self, models: list[str]) -> str:
        """Why no model can be served at all (every spec held or removed), or "" when one can:
        then /Info says why instead of an empty or unusable list."""
        pool = self.pool
        if pool.closing or any(pool.can_serve(m) for m in models):
            return ""
        held = [rt.held_reason for rt in pool.specs.values() if rt.held]
        return f"no model can be served: {'; '.join(held)}" if held else ""

    def _read(self, call: int, request: Request, op: str) -> dict[str, Any]:
        """The request's JSON object (journaled as received either way)."""
        body = request.body
        if request.too_large:
            self.bus.emit(Ev.CALL_RECEIVED, call=call, op=op, model=None, bytes=None)
            raise ProtocolError(
                "InvalidInput",
                f"request body exceeds the balancer's limit of {self.max_body_mb:g} MiB (max_body_mb)",
                413,
            ) from None
        try:
            doc = protocol.parse_body(body)
        except ProtocolError:
            self.bus.emit(Ev.CALL_RECEIVED, call=call, op=op, model=None, bytes=len(body))
            raise
        # Journal, dashboard and notifications see the name cut: it is the client's, of any length.
        self.bus.emit(Ev.CALL_RECEIVED, call=call, op=op, model=clip(doc["name"]), bytes=len(body))
        return doc

    def _reject(self, call: int, exc: ProtocolError) -> Reply:
        self.bus.emit(Ev.CALL_FAILED, call=call, status=exc.status, reason=f"{exc.kind}: {exc.message}")
        return error_reply(exc.kind, exc.message, exc.status)

    async def metadata(self, request: Request, op: str) -> Reply:
        call = next(self._call_ids)
        try:
            doc = self._read(call, request, op)
            await self._check_model(doc["name"])
            req = protocol.check_fields(op, doc)
            ans, cached = await self._metadata(op, req.model, req.config_key, request.body)
        except ProtocolError as exc:
            return self._reject(call, exc)
        except NoServerError as exc:
            return self._reject(call, ProtocolError("ServiceUnavailable", str(exc), 503))
        except Exception as exc:  # a bug: still one journaled, readable answer
            return self._reject(call, ProtocolError("InternalError", f"{type(exc).__name__}: {exc}", 500))
        self.bus.emit(
            Ev.CALL_COMPLETED, call=call, server=None, status=ans[0], bytes=len(ans[2]), cached=cached
        )
        return ans

    async def evaluate(self, request: Request, op: str) -> Reply:
        """Evaluate/Gradient/ApplyJacobian/ApplyHessian: check as a model server would, in its order
        (model, support, fields, sizes), then queue, forward, retry on loss."""
        self.inflight += 1
        try:
            call = next(self._call_ids)
            doc: dict[str, Any] | None
            req: protocol.ParsedRequest | None
            try:
                doc = self._read(call, request, op)
                model = doc["name"]
                await self._check_model(model)
                support = self._support.get(model)  # no coroutine once the flags are known
                if support is None:
                    support = await self._load_support(model)
                if support.get(op) is False:
                    raise ProtocolError("UnsupportedFeature", f"{op} not supported by model!")
                req = protocol.check_fields(op, doc)
                ins, outs = await self._sizes(model, req.config, req.config_key, op)
                if ins is not None:
                    protocol.check_sizes(op, doc, ins, outs)
            except ProtocolError as exc:
                return self._reject(call, exc)
            except NoServerError as exc:
                return self._reject(call, ProtocolError("ServiceUnavailable", str(exc), 503))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass  # a server with odd size answers: leave the checks to it
            except Exception as exc:  # a bug: still one journaled, readable answer
                return self._reject(call, ProtocolError("InternalError", f"{type(exc).__name__}: {exc}", 500))
            doc = req = None  # the parsed input is not needed while the call waits (~0.4 KB each)
            return await self._forward(call, op, model, request.body)
        finally:
            self.inflight -= 1
            if self.inflight == 0 and self.pool.closing:
                self.pool.changed()

    async def _load_support(self, model: str) -> dict[str, Any]:
        """The model's ModelInfo support flags (asked once, through the metadata cache); empty,
        and asked again next time, when there is no usable answer: the server checks then."""
        ans, _ = await self._metadata("ModelInfo", model, b"{}", orjson.dumps({"name": model}))
        try:
            support = orjson.loads(ans[2])["support"] if ans[0] == 200 else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            support = None
        if not isinstance(support, dict):
            return {}
        self._support[model] = support
        return support

    # -- metadata --------------------------------------------------------------------------------
    async def _metadata(self, op: str, model: str, ckey: bytes, body: bytes) -> tuple[Reply, bool]:
        """Ask one ready server once per (op, model, config); everyone else gets the cached answer."""
        key = (op, model, ckey)
        ans = self._meta.get(key)
        if ans is not None:
            return ans, True
        fut = self._meta_inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut), True
        fut = asyncio.get_running_loop().create_future()
        self._meta_inflight[key] = fut
        try:
            reloads = self._reloads
            ans = await self._fetch_metadata(op, model, body)
            if ans[0] == 200 and reloads == self._reloads:  # not an old server's, asked before a reload
                self._meta[key] = ans
            fut.set_result(ans)
            return ans, False
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: followers may not exist
            raise
        finally:
            del self._meta_inflight[key]

    async def _fetch_metadata(self, op: str, model: str, body: bytes) -> Reply:
        for _ in range(3):
            s = await self._any_ready(model)
            try:
                assert s.upstream is not None  # set before a server becomes ready
                status, raw, data = await s.upstream.post("/" + op, body)
                return status, _pass_headers(raw), data
            except (OSError, UpstreamError) as exc:
                await self._server_lost(s, f"{op}: {type(exc).__name__}: {exc}")
        raise NoServerError(f"no server answered {op} for model '{model}'")

    async def _any_ready(self, model: str) -> Server:
        """A ready server of ``model`` (no slot taken: metadata is cheap), waiting for one if needed."""
        disp, pool = self.disp, self.pool
        if not disp.by_model.get(model):
            await self._wait_as_demand(
                model, lambda: bool(disp.by_model.get(model)) or not pool.can_serve(model)
            )
        s = disp.least_loaded(model)
        if s is None:
            raise NoServerError(pool.unservable_reason(model))
        return cast(Server, s)  # the dispatcher's members are the pool's records

    async def _sizes(
        self, model: str, config: Any, ckey: bytes, op: str
    ) -> tuple[list[int] | None, list[int] | None]:
        """The model's input (and, for derivatives, output) sizes for this config, parsed once."""
        key = (model, ckey)
        ins = self._in_sizes.get(key)
        body = b""
        if ins is None:
            body = orjson.dumps({"name": model, "config": config})
            ans, _ = await self._metadata("InputSizes", model, ckey, body)
            if ans[0] != 200:
                return None, None
            ins = self._in_sizes[key] = orjson.loads(ans[2])["inputSizes"]
        if op == "Evaluate":
            return ins, None
        outs = self._out_sizes.get(key)
        if outs is None:
            body = body or orjson.dumps({"name": model, "config": config})
            ans, _ = await self._metadata("OutputSizes", model, ckey, body)
            if ans[0] == 200:
                outs = self._out_sizes[key] = orjson.loads(ans[2])["outputSizes"]
        return ins, outs

    # -- forwarding ------------------------------------------------------------------------------
    async def _forward(self, call: int, op: str, model: str, body: bytes) -> Reply:
        disp = self.disp
        emit = self.bus.emit
        max_attempts = self._max_attempts(model)
        path = "/" + op
        attempt = 0
        charged = 0  # attempts that count toward max_attempts: a preempted server's do not
        handed_stale = False  # the last hand-off's server drained before this call could use it
        while True:
            attempt += not handed_stale
            s = disp.try_acquire(model)
            if s is None:
                if not self.pool.can_serve(model):
                    reason = self.pool.unservable_reason(model)
                    return self._reject(call, ProtocolError("ServiceUnavailable", reason, 503))
                fut = disp.enqueue(model, front=attempt > 1 or handed_stale)
                if not fut.done():
                    emit(Ev.CALL_QUEUED, call=call, model=model, depth=disp.depth(model))
                    self.pool.wake.set()
                try:
                    s = await fut
                except NoServerError as exc:
                    return self._reject(call, ProtocolError("ServiceUnavailable", str(exc), 503))
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
            emit(Ev.CALL_DISPATCHED, call=call, server=srv.id, attempt=attempt)
            t0 = time.monotonic()
            try:
                assert srv.upstream is not None  # set before a server becomes ready
                status, raw, data = await srv.upstream.post(path, body)
            except (OSError, UpstreamError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                await self._server_lost(srv, reason)  # holding the slot meanwhile
                disp.release(srv, time.monotonic())
                charged += not srv.preempted  # the scheduler took it back: not the call's fault
                if charged >= max_attempts:
                    why = f"call failed on {attempt} server(s); last: {reason}"
                    return self._reject(call, ProtocolError("ServiceUnavailable", why, 503))
                emit(Ev.CALL_REQUEUED, call=call, server=srv.id, attempt=attempt, reason=reason)
                continue
            except BaseException:
                disp.release(srv, time.monotonic())
                raise
            t1 = time.monotonic()
            disp.release(srv, t1)
            took = t1 - t0
            self.pool.count_call(srv, took)
            emit(Ev.CALL_COMPLETED, call=call, server=srv.id, status=status, bytes=len(data), service_s=took)
            return status, _pass_headers(raw), data

    def _max_attempts(self, model: str) -> int:
        n = self._attempts.get(model)
        if n is None:
            specs = self.pool.specs.values()
            n = max((rt.spec.max_attempts for rt in specs if model in rt.models), default=3)
            if self.pool.all_discovered():
                self._attempts[model] = n
        return n


async def shmem_unsupported(request: Request) -> Reply:
    return error_reply("UnsupportedFeature", "shared memory does not cross the balancer; use plain HTTP", 400)


async def test_shmem(request: Request) -> Reply:
    # The umbridge client compares a value it put in shared memory; an empty answer makes it
    # fall back to HTTP, which is what we want behind a balancer.
    return json_reply({})
