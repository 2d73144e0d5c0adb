"""The launchers' control API: register, lease, exited; plus the status view.

Launchers authenticate with the run's token (``Authorization: Bearer``, compared in constant
time). ``register`` makes a requested server REGISTERED and has the balancer check its /Info
itself before it takes calls; ``lease`` is a long poll that answers at once when the server must
stop; ``exited`` reports the model server's exit (and why), faster than a scheduler poll;
``preempted`` says that the scheduler is taking a preemptible server's job back (its SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from balancer.control.exposure import ExposureScan
from balancer.control.probe import Probe, Sizes
from balancer.http.messages import Reply, Request, clip, error_reply, json_reply
from balancer.launcher.usage import clean_samples, journal_fields
from balancer.observe.events import Ev, EventBus, Throttled
from balancer.ops.views import held_reasons, server_view
from balancer.pool.pool import Pool
from balancer.pool.servers import Server
from balancer.pool.states import ServerState

_UNAUTHORIZED = ("Unauthorized", "missing or wrong balancer token", 401)
# States in which a server's launcher holds a lease the balancer watches (heard, or given up).
_LEASED = frozenset({ServerState.REGISTERED, ServerState.READY, ServerState.DRAINING})
AUTH_LOG_S = 5.0
STDERR_CLIP = 240  # characters of the model's last stderr lines in a failure's reason


def exit_reason(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A launcher's exit report as one reason (what reaches the client's 503, the status and the
    console: the model's last stderr lines and the log file's path included) and the journal's
    fields (``log``, ``stderr``). Before ready, the launcher's ``why`` is the whole story."""
    code, why = doc.get("code"), doc.get("why")
    if doc.get("ready") is False and isinstance(why, str) and why:
        reason = why[:500]
    else:
        reason = f"model server exited with code {code}" + (f" after {why}" if why else "")
    raw = doc.get("stderr")
    stderr = [str(x)[:300] for x in raw[-5:]] if isinstance(raw, list) else []
    log = doc.get("log") if isinstance(doc.get("log"), str) else None
    if stderr:
        tail = " | ".join(stderr)
        reason += "; its stderr ends: " + (tail if len(tail) <= STDERR_CLIP else "..." + tail[-STDERR_CLIP:])
    if log:
        reason += f"; log: {log[:500]}"
    return reason, {"log": log, "stderr": stderr}


class Control:
    def __init__(
        self,
        pool: Pool,
        bus: EventBus,
        probe: Probe,
        token: str,
        lease_s: float,
        status_extra: Callable[[], dict[str, Any]] = dict,
        gpus_of: Callable[[str], list[dict[str, Any]] | None] = lambda sid: None,  # profiling/gpus.py
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.probe = probe
        self._exposure = ExposureScan()  # one /proc scan for every registration waiting on it
        self.lease_s = lease_s
        self._bearer = f"Bearer {token}".encode()
        self._refusals = Throttled(bus, Ev.AUTH_REFUSED, AUTH_LOG_S)
        self._status_extra = status_extra
        self._gpus_of = gpus_of
        self.usage_dropped = 0  # malformed usage samples from launchers (shown in the status)
        self._heard: dict[str, float] = {}  # server -> when its launcher last spoke over HTTP (monotonic)
        self._watching = False

    def reconfigure(self, lease_s: float) -> None:
        """A reloaded ``lease_s``: told to launchers from their next lease on."""
        self.lease_s = lease_s

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(f"Bearer {token}".encode(), self._bearer)

    def authorized(self, request: Request) -> bool:
        if hmac.compare_digest(request.headers.get(b"authorization", b""), self._bearer):
            return True
        self.refused(request.path, request.remote)
        return False

    def refused(self, path: str, remote: str | None) -> None:
        """Journaled at most once per AUTH_LOG_S with a count (``events.Throttled``)."""
        self._refusals.note(path=path[:200], remote=remote)

    @staticmethod
    def _json(request: Request) -> dict[str, Any]:
        try:
            doc = orjson.loads(request.body or b"{}")
        except orjson.JSONDecodeError:
            return {}
        return doc if isinstance(doc, dict) else {}

    async def register(self, request: Request) -> Reply:
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        return await self.register_doc(self._json(request))

    def heard(self, sid: str) -> None:
        """The launcher of ``sid`` polled its lease: the lease runs from now (watched from the first
        poll, which follows registration at once). The first one starts the watch that gives up
        servers whose launchers fell silent."""
        self._heard[sid] = time.monotonic()
        if not self._watching:
            self._watching = True
            self.pool.spawn(self._expire_leases())

    async def _expire_leases(self) -> None:
        """The balancer's side of the lease: a server whose launcher has not been heard for
        ``lease_s`` (its node died, or dropped off the network with its processes alive: no lease
        poll, no exit report, maybe no job state for minutes) is given up. Its launcher stops it by
        the same lease on its side; its calls in flight break and are retried elsewhere
        (``Upstream.close``); a late registration or lease poll of it is told to stop. Servers
        registered through files are not watched here (their launchers write no heartbeat)."""
        while True:
            await asyncio.sleep(max(0.05, self.lease_s / 4))
            now = time.monotonic()
            for sid, t in list(self._heard.items()):
                s = self.pool.servers.get(sid)
                if s is None or s.state not in _LEASED:
                    self._heard.pop(sid, None)
                elif now - t > self.lease_s:
                    self._heard.pop(sid, None)
                    self.pool.fail(s, f"lease expired: its launcher was not heard for {now - t:.1f} s")

    async def register_doc(self, doc: dict[str, Any]) -> Reply:
        """A launcher's registration (over HTTP, or from a file in the registration directory)."""
        if not isinstance(doc.get("server"), (str, int)) or not isinstance(doc.get("url"), str):
            return error_reply("InvalidInput", "expected {server, url, ...}", 400)
        sid = str(doc["server"])
        s = self.pool.servers.get(sid)
        if s is None and self.pool.adoptable(sid):
            s = await self._adopt(sid, doc)
        if s is None:
            return json_reply({"stop": True, "reason": "unknown server"}, 404)
        if not self.pool.register(s, doc["url"], doc):
            return json_reply({"stop": True, "reason": f"server is {s.state.value}"}, 410)
        self.pool.spawn(self._check_ready(s))
        return json_reply({"lease_s": self.lease_s})

    async def _adopt(self, sid: str, doc: dict[str, Any]) -> Server | None:
        """After a restart: the pool takes the server back, the backend its job; a backend that
        cannot (or a job it cannot find) has it stopped."""
        s = self.pool.adopt(sid, str(doc.get("spec") or ""), doc)
        if s is not None and not await self.pool.backend.adopt(sid, str(doc.get("job") or ""), doc):
            self.pool.stop(s, "the backend cannot take its job back after a restart")
        return s

    async def _check_ready(self, s: Server) -> None:
        """Ask the registered server's /Info and its models' sizes ourselves (together: one round
        trip), then let it take calls."""
        assert s.url is not None
        try:
            models, sizes = await self.probe.ready_check(s.url, s.spec.models)
        except Exception as exc:  # any failure here means the server is unusable
            self.pool.fail(s, f"balancer cannot use {s.url}/Info: {type(exc).__name__}: {exc}")
            return
        wanted = s.spec.models
        if wanted:
            missing = [m for m in wanted if m not in models]
            if missing:
                self.pool.fail(s, f"server does not serve configured model(s) {missing}; it has {models}")
                return
            models = list(wanted)
        if not self._same_sizes(s, models, sizes):
            return
        self.pool.make_ready(s, models)
        await self._warn_if_exposed(s)

    async def _warn_if_exposed(self, s: Server) -> None:
        """A server on this machine (a loopback URL) should listen on loopback only: journal it
        when it also listens elsewhere (models/serving.py honours the launcher's UMBRIDGE_HOST)."""
        u = urlsplit(s.url or "")
        with contextlib.suppress(ValueError):
            if u.port and ipaddress.ip_address(u.hostname or "").is_loopback:
                exposed = await self._exposure.exposed(u.port)
                if exposed:
                    self.bus.emit(Ev.SERVER_EXPOSED, server=s.id, port=u.port, addresses=exposed)

    def _same_sizes(self, s: Server, models: list[str], asked: dict[str, Sizes | Exception]) -> bool:
        """A model's sizes are what the first ready server said; a server (of any spec) that says
        otherwise never takes its calls: clients were answered those sizes. Its spec is held
        with a reason naming both specs, shown in the journal and the status."""
        known = self.pool.model_sizes
        for m in models:
            sizes = asked.get(m, KeyError(m))
            if isinstance(sizes, Exception):  # a model without sizes for {}: leave the checks to it
                why = f"{type(sizes).__name__}: {sizes}"
                self.bus.emit(Ev.SERVER_SIZES_UNKNOWN, server=s.id, model=m, reason=why)
                continue
            ref = known.setdefault(m, (sizes[0], sizes[1], s.spec.name))
            if (sizes[0], sizes[1]) != ref[:2]:
                why = (
                    f"model '{m}' of server spec '{s.spec.name}' has input/output sizes "
                    f"{sizes[0]}/{sizes[1]}, but spec '{ref[2]}' serves it with {ref[0]}/{ref[1]}"
                )
                self.pool.fail(s, why)
                self.pool.hold(s.spec.name, self.pool.specs[s.spec.name].failures, why, held_reason=why)
                return False
        return True

    async def servers(self, request: Request) -> Reply:
        """``/api/servers/{server}/lease`` and ``/api/servers/{server}/exited``."""
        parts = request.path.split("/")
        sid = parts[3] if len(parts) == 5 else ""
        if parts[-1] == "lease":
            return await self._lease(request, sid)
        if parts[-1] == "exited":
            return self._exited(request, sid)
        if parts[-1] == "preempted":
            return self._preempted(request, sid)
        return error_reply("NotFound", f"no route {clip(request.path)}", 404)

    async def _lease(self, request: Request, sid: str) -> Reply:
        """Long poll: answers at once when the server must stop, else after ``wait`` seconds."""
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        s = self.pool.servers.get(sid)
        if s is None and self.pool.adoptable(sid):
            return json_reply({"stop": False, "register": True})  # we restarted: register again
        if s is not None:
            self.heard(sid)
        doc = self._json(request)
        if s is not None and "usage" in doc:
            self.usage(s, doc["usage"])
        if s is None or s.state in (ServerState.GONE, ServerState.STOPPING):
            return json_reply(_stop_doc(s))
        try:
            wait = float(doc.get("wait", 0))
        except (TypeError, ValueError):
            wait = 0.0
        wait = max(0.0, min(wait, self.lease_s / 2))
        if wait > 0:
            if s.lease_waiter is None or s.lease_waiter.done():
                s.lease_waiter = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(s.lease_waiter), wait)
            if s.state in _LEASED:
                self.heard(sid)  # the poll lasted until now: the lease runs from its answer
        if s.state in (ServerState.GONE, ServerState.STOPPING):
            return json_reply(_stop_doc(s))
        return json_reply({"stop": False})

    def usage(self, s: Server, raw: Any) -> None:
        """A launcher's usage samples (balancer/launcher/usage.py): one ``server.usage`` event each; a
        malformed one is dropped and counted, never an error for the lease."""
        good, dropped = clean_samples(raw)
        self.usage_dropped += dropped
        for sample in good:
            self.bus.emit(Ev.SERVER_USAGE, server=s.id, spec=s.spec.name, **journal_fields(sample))

    def _exited(self, request: Request, sid: str) -> Reply:
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        return self.exited_doc(sid, self._json(request))

    def _preempted(self, request: Request, sid: str) -> Reply:
        """A launcher of a preemptible job got a SIGTERM the balancer did not ask for: the scheduler
        is taking the job back (a preemption's grace time). The pool marks it preempted and stops it
        (its calls in flight are re-queued, uncharged); ``stop`` tells the launcher to end it now."""
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        s = self.pool.servers.get(sid)
        if s is not None:
            sig = str(self._json(request).get("signal") or "SIGTERM")[:20]
            self.pool.job_preempted(s.id, f"its launcher got {sig}: the job is being preempted")
        stop = s is None or s.state in (ServerState.GONE, ServerState.STOPPING)
        return json_reply({"stop": stop})

    def exited_doc(self, sid: str, doc: dict[str, Any]) -> Reply:
        """A launcher reports its model server's exit code and why (before ready: its log file and
        the model's last stderr lines too)."""
        s = self.pool.servers.get(sid)
        if s is not None:
            reason, detail = exit_reason(doc)
            self.pool.job_ended(s.id, reason, failed=s.state is not ServerState.STOPPING, **detail)
        return json_reply({"ok": True})

    async def status(self, request: Request) -> Reply:
        """The pool, queues and scaler as JSON; token only: it lists the model servers' URLs."""
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        now_m, now = self.pool.clock(), time.time()
        return json_reply(
            {
                "servers": [server_view(s, now_m, now, self._gpus_of(s.id)) for s in self.pool.live()],
                # every call that waits, metadata calls for a first server included
                "queues": {m or "(not yet known)": n for m, n in self.pool.demand.by_model().items()},
                "models": self.pool.known_models(),
                "held": held_reasons(self.pool),
                # each spec's last failed start: reason (stderr tail, log path), log, stderr lines
                "failures": {n: f for n, rt in self.pool.specs.items() if (f := rt.failure_view())},
                "preempted": self.pool.preempted_total,  # servers whose jobs were preempted, ever
                "usage_dropped": self.usage_dropped,
                **self._status_extra(),
            }
        )


def _stop_doc(s: Server | None) -> dict[str, Any]:
    """A lease's stop answer. ``now``: a preempted server's calls went elsewhere, so its launcher
    ends the model at once instead of waiting for a graceful shutdown: the preempting job waits."""
    return {"stop": True, "now": True} if s is not None and s.preempted else {"stop": True}
