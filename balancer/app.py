"""The balancer: pool of servers, call path, metadata cache, control API, scaler loop, shutdown.

One object owns all mutable state and runs on one event loop, so no locks are needed. Decisions
(routing, scaling) come from the pure functions in ``scaling``; this module applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from . import protocol
from .backends.base import (
    ENV_CONCURRENCY,
    ENV_LEASE,
    ENV_SERVER_ID,
    ENV_STARTUP,
    ENV_TOKEN,
    ENV_URL,
    Backend,
    Launch,
)
from .config import BalancerConfig, ServerSpec
from .frontend import JSON_CT, Reply, Request, Router, error_reply, json_reply
from .journal import Journal
from .pool import (
    DRAINING,
    GONE,
    NOT_YET_READY,
    READY,
    REGISTERED,
    REQUESTED,
    STARTING,
    STOPPING,
    Dispatcher,
    NoServerError,
    Server,
)
from .protocol import ProtocolError
from .scaling import Action, SpecState, decide, start_backoff_s
from .upstream import Upstream, UpstreamError

# Per-connection headers of a model server's answer; the frontend frames its own answer.
_DROP_RAW = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})
_LOST_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)
STOP_GRACE_S = 5.0
SCALE_MIN_GAP_S = 0.01  # after a lease stop, how long before the backend's cancel is used


@dataclass
class SpecRuntime:
    """Mutable per-spec state the scaler needs beyond the server records."""

    spec: ServerSpec
    models: set[str] = field(default_factory=set)
    discovered: bool = False
    failures: int = 0  # consecutive failed starts
    not_before_m: float = 0.0
    held: bool = False
    held_reason: str = ""


def _pass_headers(raw: list[tuple[bytes, bytes]]) -> bytes:
    """A model server's headers, as it sent them, minus the per-connection ones."""
    return b"".join(b"%s: %s\r\n" % (k, v) for k, v in raw if k.lower() not in _DROP_RAW)


class Balancer:
    def __init__(
        self, cfg: BalancerConfig, journal: Journal, run_dir: Path, token: str, backend: Backend
    ) -> None:
        self.cfg = cfg
        self.journal = journal
        self.run_dir = run_dir
        self.token = token
        self._bearer = f"Bearer {token}".encode()
        self.url = f"http://{cfg.host}:{cfg.port}"
        self.servers: dict[str, Server] = {}
        self.specs: dict[str, SpecRuntime] = {}
        for s in cfg.servers:
            self.specs[s.name] = SpecRuntime(s, set(s.models), discovered=bool(s.models))
        self.dispatcher = Dispatcher()
        self.backend = backend
        backend.bind(self)
        self.session: aiohttp.ClientSession | None = None
        self._call_ids = itertools.count(1)
        self._server_ids = itertools.count(1)
        self._meta: dict[tuple[str, str, bytes], Reply] = {}
        self._meta_inflight: dict[tuple[str, str, bytes], asyncio.Future[Reply]] = {}
        self._in_sizes: dict[tuple[str, bytes], list[int]] = {}
        self._out_sizes: dict[tuple[str, bytes], list[int]] = {}
        self._attempts: dict[str, int] = {}
        self._meta_waiting: dict[str, int] = {}  # model ("" = unknown model) -> waiting metadata calls
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inflight = 0
        self.closing = False
        self._scaler: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self, url: str) -> None:
        self.url = url
        await self.backend.start()  # first: a ConfigError here leaves nothing to clean up
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        self._scaler = asyncio.create_task(self._scale_loop())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for(self, pred: Any, timeout: float, stop_on_close: bool = True) -> bool:
        """Wait until ``pred()`` holds, re-checking whenever pool state changes (``_notify``)."""
        deadline = time.monotonic() + timeout
        while not pred():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.closing and stop_on_close):
                return bool(pred())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def shutdown(self, reason: str) -> None:
        """Let in-flight calls finish within the grace period, then stop every server."""
        self.journal.event("balancer.stopping", reason=reason, inflight=self._inflight)
        self.closing = True
        self._notify()
        await self._wait_for(lambda: self._inflight == 0, self.cfg.shutdown_grace_s, stop_on_close=False)
        for model in list(self.dispatcher.queues):
            self.dispatcher.fail_waiters(model, NoServerError("the balancer is shutting down"))
        if self._scaler:
            self._scaler.cancel()
        for s in list(self.servers.values()):
            if s.state != GONE:
                self._stop_server(s, "shutdown", fallback=False)
        await self._wait_for(
            lambda: all(s.state == GONE for s in self.servers.values()), STOP_GRACE_S, stop_on_close=False
        )
        await self.backend.close()
        for t in list(self._tasks):
            t.cancel()
        if self.session:
            await self.session.close()
        self.journal.event("balancer.stopped")

    # -- BackendEvents ---------------------------------------------------------------------------
    def job_started(self, server_id: str, job_id: str, host: str) -> None:
        s = self.servers.get(server_id)
        if s is None:
            return
        s.job, s.host = job_id, host
        if s.state == REQUESTED:
            s.state = STARTING
        self.journal.event("server.started", server=server_id, spec=s.spec.name, job=job_id, host=host)

    def job_ended(self, server_id: str, reason: str, failed: bool) -> None:
        s = self.servers.get(server_id)
        if s is None or s.state == GONE:
            return
        was = s.state
        self._gone(s)
        rt = self.specs[s.spec.name]
        if was == STOPPING:
            self.journal.event("server.stopped", server=server_id, reason=reason)
        else:
            self.journal.event("server.failed", server=server_id, reason=reason)
            if was in NOT_YET_READY and not self.closing:
                self._start_failed(rt, reason)

    def job_deadline(self, server_id: str, deadline_wall: float) -> None:
        s = self.servers.get(server_id)
        if s is not None:
            s.deadline_wall = deadline_wall

    # -- servers ---------------------------------------------------------------------------------
    def _gone(self, s: Server) -> None:
        if s.state == READY or s.state == DRAINING:
            self.dispatcher.remove(s)
        s.state = GONE
        if s.upstream is not None:
            s.upstream.close()
        if s.lease_waiter is not None and not s.lease_waiter.done():
            s.lease_waiter.set_result(None)
        self._notify()
        self._wake.set()

    def _start_failed(self, rt: SpecRuntime, reason: str) -> None:
        rt.failures += 1
        rt.not_before_m = time.monotonic() + start_backoff_s(rt.failures)
        if rt.failures >= rt.spec.max_start_failures and not rt.held:
            rt.held = True
            rt.held_reason = f"server '{rt.spec.name}' failed to start {rt.failures} times: {reason}"
            self.journal.event("spec.held", spec=rt.spec.name, failures=rt.failures, reason=reason)
            self._fail_unservable(rt.held_reason)

    def _fail_unservable(self, why: str) -> None:
        """Fail waiting calls that no spec can serve any more, so nothing waits forever."""
        for model in list(self.dispatcher.queues):
            if not self._can_serve(model):
                self.dispatcher.fail_waiters(model, NoServerError(why))
        self._notify()

    def _can_serve(self, model: str) -> bool:
        if self.closing:
            return False
        if self.dispatcher.by_model.get(model):
            return True
        for rt in self.specs.values():
            if not rt.held and (model in rt.models or not rt.discovered):
                return True
        return False

    def _unservable_reason(self, model: str) -> str:
        if self.closing:
            return "the balancer is shutting down"
        held = [rt.held_reason for rt in self.specs.values() if rt.held]
        return f"no server for model '{model}' became ready" + (f" ({'; '.join(held)})" if held else "")

    def _stop_server(self, s: Server, reason: str, fallback: bool = True) -> None:
        """Lease stop first (the launcher ends its server); the backend's cancel is the second line."""
        if s.state in (GONE, STOPPING):
            return
        was = s.state
        if was == READY or was == DRAINING:
            self.dispatcher.remove(s)
        s.state = STOPPING
        self.journal.event("server.stopping", server=s.id, reason=reason)
        if s.lease_waiter is not None and not s.lease_waiter.done():
            s.lease_waiter.set_result(None)
        if was in (REQUESTED, STARTING) or not fallback:
            # No launcher listens for a lease yet (or we are shutting down): cancel right away.
            self._spawn(self.backend.cancel(s.id))
        else:
            self._spawn(self._cancel_later(s))

    async def _cancel_later(self, s: Server) -> None:
        await asyncio.sleep(STOP_GRACE_S)
        if s.state != GONE:
            await self.backend.cancel(s.id)

    async def _server_lost(self, s: Server, reason: str) -> bool:
        """A call to ``s`` broke. True if the server is really gone (then it is removed)."""
        if s.state in (GONE, STOPPING):
            return True
        assert self.session is not None
        try:
            async with self.session.get(s.url + "/Info", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return False  # a stale keep-alive connection, the server itself is fine
        except (*_LOST_ERRORS, OSError):
            pass
        if s.state not in (GONE, STOPPING):
            self._gone(s)
            self.journal.event("server.failed", server=s.id, reason=f"lost: {reason}")
            self._spawn(self.backend.cancel(s.id))
        return True

    async def _check_ready(self, s: Server) -> None:
        """The launcher registered ``s``: ask its /Info ourselves, then let it take calls."""
        assert self.session is not None and s.url is not None
        rt = self.specs[s.spec.name]
        try:
            async with self.session.get(s.url + "/Info", timeout=aiohttp.ClientTimeout(total=10)) as r:
                info = orjson.loads(await r.read())
            models = info["models"]
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise ValueError("'models' is not a list of names")
        except Exception as exc:  # any failure here means the server is unusable
            why = f"balancer cannot use {s.url}/Info: {type(exc).__name__}: {exc}"
            self._fail_server(s, why)
            return
        if rt.spec.models:
            missing = [m for m in rt.spec.models if m not in models]
            if missing:
                self._fail_server(s, f"server does not serve configured model(s) {missing}; it has {models}")
                return
            models = list(rt.spec.models)
        if s.state != REGISTERED:
            return
        s.models = tuple(models)
        u = urlsplit(s.url)
        s.upstream = Upstream(u.hostname or "127.0.0.1", u.port or 80)
        s.state = READY
        s.idle_since_m = time.monotonic()
        rt.failures = 0
        if not rt.discovered:
            rt.models.update(models)
            rt.discovered = True
        self.journal.event(
            "server.ready", server=s.id, spec=s.spec.name, models=list(models), concurrency=s.concurrency
        )
        self.dispatcher.add(s)
        self._notify()

    def _fail_server(self, s: Server, why: str) -> None:
        if s.state == GONE:
            return
        self._gone(s)
        self.journal.event("server.failed", server=s.id, reason=why)
        self._start_failed(self.specs[s.spec.name], why)
        self._spawn(self.backend.cancel(s.id))

    # -- scaling ---------------------------------------------------------------------------------
    def _spec_states(self, now: float) -> list[SpecState]:
        by_spec: dict[str, list[Server]] = {name: [] for name in self.specs}
        for s in self.servers.values():
            if s.state != GONE:
                by_spec[s.spec.name].append(s)
        states = []
        unknown_waiting = self._meta_waiting.get("", 0)
        for name, rt in self.specs.items():
            lst = by_spec[name]
            waiting = sum(self.dispatcher.waiting(m) + self._meta_waiting.get(m, 0) for m in rt.models)
            if not rt.discovered:
                waiting += unknown_waiting
            spec = rt.spec
            states.append(
                SpecState(
                    name=name,
                    min_servers=spec.min_servers,
                    max_servers=spec.max_servers,
                    backlog=spec.backlog,
                    concurrency=spec.concurrency,
                    idle_timeout_s=spec.idle_timeout_s,
                    startup_timeout_s=spec.startup_timeout_s,
                    starting=sum(1 for s in lst if s.state in NOT_YET_READY),
                    ready=sum(1 for s in lst if s.state == READY),
                    unreplaced_draining=sum(1 for s in lst if s.state == DRAINING and not s.replaced),
                    waiting=waiting,
                    idle=tuple(
                        (s.id, s.idle_since_m) for s in lst if s.state == READY and s.outstanding == 0
                    ),
                    starts=tuple((s.id, s.requested_m) for s in lst if s.state in NOT_YET_READY),
                    start_blocked=rt.held or now < rt.not_before_m,
                )
            )
        return states

    async def _scale_loop(self) -> None:
        while not self.closing:
            try:
                self.scale_once()
            except Exception as exc:  # a bug here must not kill the loop; record it and go on
                self.journal.event("balancer.error", where="scaler", error=f"{type(exc).__name__}: {exc}")
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.scale_interval_s)
            # Woken by a waiting call: react fast, but at most every 10 ms however many calls queue.
            await asyncio.sleep(SCALE_MIN_GAP_S)

    def scale_once(self) -> None:
        now = time.monotonic()
        self._drain_expiring(time.time())
        for action in decide(self._spec_states(now), now):
            self._apply(action, now)

    def _drain_expiring(self, now_wall: float) -> None:
        margin = float(self.cfg.backend_option("time_limit_margin_s", 60.0))
        for s in self.servers.values():
            if s.state == READY and s.deadline_wall is not None and s.deadline_wall - now_wall <= margin:
                self.dispatcher.remove(s)
                s.state = DRAINING
                self.journal.event("server.draining", server=s.id, reason="time limit ahead")
            if s.state == DRAINING and s.outstanding == 0:
                self._stop_server(s, "time limit ahead")

    def _apply(self, a: Action, now: float) -> None:
        self.journal.event(
            "scale.decision",
            spec=a.spec,
            action=a.kind,
            count=a.count or 1,
            target=a.target,
            reason=a.reason,
            **({"server": a.server} if a.server else {}),
        )
        if a.kind == "stop":
            s = self.servers.get(a.server or "")
            if s is None:
                return
            if a.reason == "startup_timeout":
                self._gone(s)
                self.journal.event("server.failed", server=s.id, reason="startup timeout")
                self._start_failed(self.specs[a.spec], "startup timeout")
                self._spawn(self.backend.cancel(s.id))
            else:
                self._stop_server(s, a.reason)
            return
        rt = self.specs[a.spec]
        if a.reason == "replace":
            pending = [s for s in self.servers.values() if s.state == DRAINING and not s.replaced]
            for s in pending[: a.count]:
                s.replaced = True
        launches = []
        for _ in range(a.count):
            sid = f"s{next(self._server_ids)}"
            s = Server(sid, rt.spec, now, concurrency=rt.spec.concurrency)
            self.servers[sid] = s
            self.journal.event("server.requested", server=sid, spec=rt.spec.name, reason=a.reason)
            launches.append(self._launch(s))
        self._spawn(self._submit(launches))

    def _launch(self, s: Server) -> Launch:
        env = dict(s.spec.env)
        env.update(
            {
                ENV_URL: self.cfg.advertise_url or self.url,
                ENV_TOKEN: self.token,
                ENV_SERVER_ID: s.id,
                ENV_LEASE: str(self.cfg.lease_s),
                ENV_STARTUP: str(s.spec.startup_timeout_s),
                ENV_CONCURRENCY: str(s.spec.concurrency),
            }
        )
        return Launch(s.id, s.spec, env, self.run_dir / "logs")

    async def _submit(self, launches: list[Launch]) -> None:
        try:
            await self.backend.submit(launches)
        except Exception as exc:  # a backend error fails these starts, the balancer keeps serving
            for launch in launches:
                self.job_ended(launch.server_id, f"submit failed: {type(exc).__name__}: {exc}", True)

    # -- control API (launchers) -----------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        got = request.headers.get(b"authorization", b"")
        if hmac.compare_digest(got, self._bearer):
            return True
        self.journal.event("auth.refused", path=request.path, remote=request.remote)
        return False

    async def api_register(self, request: Request) -> Reply:
        if not self._authorized(request):
            return error_reply("Unauthorized", "missing or wrong balancer token", 401)
        try:
            doc = orjson.loads(request.body)
            sid, url = str(doc["server"]), str(doc["url"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return error_reply("InvalidInput", "expected {server, url, ...}", 400)
        s = self.servers.get(sid)
        if s is None:
            return json_reply({"stop": True, "reason": "unknown server"}, 404)
        if s.state not in (REQUESTED, STARTING):
            return json_reply({"stop": True, "reason": f"server is {s.state}"}, 410)
        s.url = url.rstrip("/")
        s.host = doc.get("host") or s.host
        s.job = s.job or doc.get("job")
        s.state = REGISTERED
        self.journal.event(
            "server.registered",
            server=sid,
            url=s.url,
            host=s.host,
            port=doc.get("port"),
            job=doc.get("job"),
            pid=doc.get("pid"),
            launcher_pid=doc.get("launcher_pid"),
        )
        self._spawn(self._check_ready(s))
        return json_reply({"lease_s": self.cfg.lease_s})

    @staticmethod
    def _server_in_path(request: Request) -> str:
        # /api/servers/{server}/lease or /exited
        parts = request.path.split("/")
        return parts[3] if len(parts) == 5 else ""

    async def api_servers(self, request: Request) -> Reply:
        if request.path.endswith("/lease"):
            return await self.api_lease(request)
        if request.path.endswith("/exited"):
            return await self.api_exited(request)
        return error_reply("NotFound", f"no route {request.path}", 404)

    async def api_lease(self, request: Request) -> Reply:
        """Long poll: answers at once when the server must stop, else after ``wait`` seconds."""
        if not self._authorized(request):
            return error_reply("Unauthorized", "missing or wrong balancer token", 401)
        s = self.servers.get(self._server_in_path(request))
        if s is None or s.state in (GONE, STOPPING):
            return json_reply({"stop": True})
        try:
            wait = float(orjson.loads(request.body or b"{}").get("wait", 0))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            wait = 0.0
        wait = max(0.0, min(wait, self.cfg.lease_s / 2))
        if wait > 0:
            if s.lease_waiter is None or s.lease_waiter.done():
                s.lease_waiter = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(s.lease_waiter), wait)
        return json_reply({"stop": s.state in (GONE, STOPPING)})

    async def api_exited(self, request: Request) -> Reply:
        if not self._authorized(request):
            return error_reply("Unauthorized", "missing or wrong balancer token", 401)
        try:
            doc = orjson.loads(request.body)
            code, why = doc.get("code"), doc.get("why")
        except (orjson.JSONDecodeError, AttributeError):
            code, why = None, None
        s = self.servers.get(self._server_in_path(request))
        if s is not None:
            reason = f"model server exited with code {code}" + (f" after {why}" if why else "")
            self.job_ended(s.id, reason, failed=s.state != STOPPING)
        return json_reply({"ok": True})

    async def api_status(self, request: Request) -> Reply:
        servers = [
            {
                "id": s.id,
                "spec": s.spec.name,
                "state": s.state,
                "url": s.url,
                "outstanding": s.outstanding,
                "models": list(s.models),
            }
            for s in self.servers.values()
            if s.state != GONE
        ]
        queues = {m: self.dispatcher.waiting(m) for m in self.dispatcher.queues}
        return json_reply(
            {"servers": servers, "queues": queues, "inflight": self._inflight, "models": self.known_models()}
        )

    # -- UM-Bridge frontend ----------------------------------------------------------------------
    def known_models(self) -> list[str]:
        seen: dict[str, None] = {}
        for rt in self.specs.values():
            for m in sorted(rt.models):
                seen[m] = None
        return list(seen)

    def _all_discovered(self) -> bool:
        return all(rt.discovered or rt.held for rt in self.specs.values())

    def _max_startup(self) -> float:
        return max(rt.spec.startup_timeout_s for rt in self.specs.values())

    async def _wait_as_demand(self, model: str, pred: Any) -> None:
        """Wait (up to the start-up timeout) for ``pred``, counting as demand for ``model`` meanwhile
        ("" = a model no discovered spec has), so the scaler starts a server rather than one per call."""
        self._meta_waiting[model] = self._meta_waiting.get(model, 0) + 1
        self._wake.set()
        try:
            await self._wait_for(pred, self._max_startup())
        finally:
            self._meta_waiting[model] -= 1

    async def _check_model(self, model: str) -> None:
        """Known model: return. Unknown: wait for discovery of undiscovered specs, then decide."""
        for rt in self.specs.values():
            if model in rt.models:
                return
        if not self._all_discovered():
            await self._wait_as_demand(
                "", lambda: self._all_discovered() or any(model in rt.models for rt in self.specs.values())
            )
            if any(model in rt.models for rt in self.specs.values()):
                return
        raise ProtocolError("ModelNotFound", f"model '{model}' not found; available: {self.known_models()}")

    async def info(self, request: Request) -> Reply:
        call = next(self._call_ids)
        self.journal.event("call.received", call=call, op="Info", model=None, bytes=0)
        if not self._all_discovered():
            await self._wait_as_demand("", self._all_discovered)
        body = orjson.dumps({"protocolVersion": protocol.PROTOCOL_VERSION, "models": self.known_models()})
        self.journal.event("call.completed", call=call, server=None, status=200, bytes=len(body), cached=True)
        return 200, JSON_CT, body

    def _read(self, call: int, request: Request, op: str) -> tuple[protocol.ParsedRequest, bytes]:
        body = request.body
        if request.too_large:
            self.journal.event("call.received", call=call, op=op, model=None, bytes=None)
            raise ProtocolError(
                "InvalidInput",
                f"request body exceeds the balancer's limit of {self.cfg.max_body_mb:g} MiB (max_body_mb)",
                413,
            ) from None
        try:
            req = protocol.parse_request(op, body)
        except ProtocolError:
            self.journal.event("call.received", call=call, op=op, model=None, bytes=len(body))
            raise
        self.journal.event("call.received", call=call, op=op, model=req.model, bytes=len(body))
        return req, body

    async def metadata(self, request: Request, op: str) -> Reply:
        call = next(self._call_ids)
        try:
            req, body = self._read(call, request, op)
        except ProtocolError as exc:
            return self._reject(call, exc)
        try:
            await self._check_model(req.model)
            ans, cached = await self._metadata(op, req.model, req.config_key, body)
        except ProtocolError as exc:
            return self._reject(call, exc)
        except NoServerError as exc:
            return self._reject(call, ProtocolError("ServiceUnavailable", str(exc), 503))
        self.journal.event(
            "call.completed", call=call, server=None, status=ans[0], bytes=len(ans[2]), cached=cached
        )
        return ans

    def _reject(self, call: int, exc: ProtocolError) -> Reply:
        self.journal.event("call.failed", call=call, status=exc.status, reason=f"{exc.kind}: {exc.message}")
        return error_reply(exc.kind, exc.message, exc.status)

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
            ans = await self._fetch_metadata(op, model, body)
            if ans[0] == 200:
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
                status, raw, data = await s.upstream.post("/" + op, body)  # type: ignore[union-attr]
                return status, _pass_headers(raw), data
            except (OSError, UpstreamError) as exc:
                await self._server_lost(s, f"{op}: {type(exc).__name__}: {exc}")
        raise NoServerError(f"no server answered {op} for model '{model}'")

    async def _any_ready(self, model: str) -> Server:
        """A ready server of ``model`` (slot not taken: metadata is cheap), waiting for one if needed."""
        if not self.dispatcher.by_model.get(model):
            await self._wait_as_demand(
                model, lambda: bool(self.dispatcher.by_model.get(model)) or not self._can_serve(model)
            )
        servers = self.dispatcher.by_model.get(model)
        if not servers:
            raise NoServerError(self._unservable_reason(model))
        return min(servers, key=lambda s: s.outstanding)

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

    async def evaluate(self, request: Request, op: str) -> Reply:
        """Evaluate/Gradient/ApplyJacobian/ApplyHessian: validate, queue, forward, retry on loss."""
        self._inflight += 1
        try:
            call = next(self._call_ids)
            try:
                req, body = self._read(call, request, op)
            except ProtocolError as exc:
                return self._reject(call, exc)
            try:
                await self._check_model(req.model)
                ins, outs = await self._sizes(req.model, req.config, req.config_key, op)
                if ins is not None:
                    protocol.check_sizes(op, req.doc, ins, outs)
            except ProtocolError as exc:
                return self._reject(call, exc)
            except NoServerError as exc:
                return self._reject(call, ProtocolError("ServiceUnavailable", str(exc), 503))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass  # a server with odd size answers: leave the checks to it
            return await self._forward(call, op, req.model, body)
        finally:
            self._inflight -= 1
            if self.closing and self._inflight == 0:
                self._notify()

    async def _forward(self, call: int, op: str, model: str, body: bytes) -> Reply:
        disp = self.dispatcher
        journal = self.journal
        max_attempts = self._max_attempts(model)
        path = "/" + op
        attempt = 0
        while True:
            attempt += 1
            s = disp.try_acquire(model)
            if s is None:
                if not self._can_serve(model):
                    return self._reject(
                        call, ProtocolError("ServiceUnavailable", self._unservable_reason(model), 503)
                    )
                fut = disp.enqueue(model, front=attempt > 1)
                if not fut.done():
                    journal.event("call.queued", call=call, model=model, depth=disp.depth(model))
                    self._wake.set()
                try:
                    s = await fut
                except NoServerError as exc:
                    return self._reject(call, ProtocolError("ServiceUnavailable", str(exc), 503))
                except asyncio.CancelledError:
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        disp.release(fut.result(), time.monotonic())
                    raise
            journal.event("call.dispatched", call=call, server=s.id, attempt=attempt)
            t0 = time.monotonic()
            try:
                status, raw, data = await s.upstream.post(path, body)  # type: ignore[union-attr]
            except (OSError, UpstreamError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                await self._server_lost(s, reason)  # holding the slot: nobody else tries it meanwhile
                disp.release(s, time.monotonic())
                if attempt >= max_attempts:
                    return self._reject(
                        call,
                        ProtocolError(
                            "ServiceUnavailable", f"call failed on {attempt} server(s); last: {reason}", 503
                        ),
                    )
                journal.event("call.requeued", call=call, server=s.id, attempt=attempt, reason=reason)
                continue
            except BaseException:
                disp.release(s, time.monotonic())
                raise
            t1 = time.monotonic()
            disp.release(s, t1)
            journal.event(
                "call.completed", call=call, server=s.id, status=status, bytes=len(data), service_s=t1 - t0
            )
            return status, _pass_headers(raw), data

    def _max_attempts(self, model: str) -> int:
        n = self._attempts.get(model)
        if n is None:
            n = max((rt.spec.max_attempts for rt in self.specs.values() if model in rt.models), default=3)
            if self._all_discovered():
                self._attempts[model] = n
        return n


async def shmem_unsupported(request: Request) -> Reply:
    return error_reply("UnsupportedFeature", "shared memory does not cross the balancer; use plain HTTP", 400)


async def test_shmem(request: Request) -> Reply:
    # The umbridge client compares a value it put in shared memory; an empty answer makes it
    # fall back to HTTP, which is what we want behind a balancer.
    return json_reply({})


def build_router(b: Balancer) -> Router:
    r = Router()
    r.add("GET", "/Info", b.info)
    for op in protocol.EVAL_OPS:
        r.add("POST", f"/{op}", _bind(b.evaluate, op))
        r.add("POST", f"/{op}ShMem", shmem_unsupported)
    for op in protocol.META_OPS:
        r.add("POST", f"/{op}", _bind(b.metadata, op))
    r.add("POST", "/TestShMem", test_shmem)
    r.add("POST", "/api/servers/register", b.api_register)
    r.add_prefix("POST", "/api/servers/", b.api_servers)
    r.add("GET", "/api/status", b.api_status)
    return r


def _bind(fn: Any, op: str) -> Any:
    async def handler(request: Request) -> Reply:
        return await fn(request, op)

    return handler
