"""The operator API: look at the pool and change it while it runs, with the run's token.

``GET /api/servers``; ``POST /api/servers/{id}/drain|stop``; ``POST /api/specs/{spec}/scale|pause|
resume``. Every change is journaled as ``operator.action`` with who asked (the CLI's user name,
the peer address) and what it changed. Bad input gets a 400 with a message saying what is wrong.
Scale limits go through the scaler's ``Limits`` (the pure policy reads them); pause is pool state
the policy observes, like a hold.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from balancer.http.messages import Reply, Request, clip, error_reply, json_reply
from balancer.observe.events import Ev, Event, EventBus
from balancer.ops.views import server_view, spec_view, state_counts, store_paths
from balancer.policy.types import SpecLimits
from balancer.pool.pool import Pool
from balancer.pool.scaler import Scaler
from balancer.pool.servers import Server
from balancer.pool.states import ServerState
from balancer.profiling.gpus import server_gpus

if TYPE_CHECKING:
    from balancer.ops.reload import Reloader
    from balancer.profiling.workload import UsageAggregator

_UNAUTHORIZED = ("Unauthorized", "missing or wrong balancer token", 401)
RATE_WINDOW_S = 60  # calls/s in status is the mean over this many seconds
_SCALE_KEYS = ("min_servers", "max_servers", "backlog")
SCALE_MAX = 100_000  # servers or calls: far above any cluster, far below what overflows a count


class CallStats:
    """Counts finished calls for the status screen: totals and a one-second ring for calls/s.

    A bus subscriber that costs an int compare and an increment per event."""

    __slots__ = ("_ring", "_sec", "completed", "failed", "server_failures", "started", "started_m")
    EVENTS = frozenset({Ev.CALL_COMPLETED, Ev.CALL_FAILED, Ev.SERVER_FAILED})  # all it reads

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.server_failures = 0
        self.started = time.time()
        self.started_m = time.monotonic()
        self._ring = [0] * RATE_WINDOW_S
        self._sec = int(self.started_m)

    def __call__(self, e: Event) -> None:
        ev = e["ev"]
        if ev == Ev.CALL_COMPLETED:
            self.completed += 1
        elif ev == Ev.CALL_FAILED:
            self.failed += 1
        else:
            if ev == Ev.SERVER_FAILED:
                self.server_failures += 1
            return
        sec = int(e["m"])
        if sec != self._sec:
            self._advance(sec)
        self._ring[sec % RATE_WINDOW_S] += 1

    def _advance(self, sec: int) -> None:
        gap = min(sec - self._sec, RATE_WINDOW_S)
        for i in range(1, gap + 1):
            self._ring[(self._sec + i) % RATE_WINDOW_S] = 0
        self._sec = sec

    def rate(self, now_m: float) -> float:
        """Finished calls per second over the last ``RATE_WINDOW_S`` seconds (or since the start)."""
        sec = int(now_m)
        if sec != self._sec:
            self._advance(sec)
        window = min(RATE_WINDOW_S, max(1.0, now_m - self.started_m))
        return round(sum(self._ring) / window, 3)

    def status(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "failed": self.failed,
            "server_failures": self.server_failures,
            "per_s": self.rate(time.monotonic()),
            "uptime_s": round(time.time() - self.started, 1),
        }


def _who(request: Request) -> str | None:
    """The user name the CLI sends (``X-Balancer-User``), journaled with a change."""
    return request.headers.get(b"x-balancer-user", b"").decode("utf-8", "replace")[:64] or None


class OperatorApi:
    def __init__(
        self,
        pool: Pool,
        scaler: Scaler,
        bus: EventBus,
        authorized: Callable[[Request], bool],
        workload: UsageAggregator | None = None,  # workload classes in the status, GPUs per server
        reloader: Reloader | None = None,  # POST /api/reload
    ) -> None:
        self.pool = pool
        self.scaler = scaler
        self.bus = bus
        self.authorized = authorized
        self.stats = CallStats()
        bus.subscribe(self.stats, only=CallStats.EVENTS)
        self.workload = workload
        self.reloader = reloader

    # -- views (balancer/ops/views.py) ---------------------------------------------------------------
    def _gpus(self, sid: str) -> list[dict[str, Any]] | None:
        return server_gpus(self.pool.backend, self.workload.latest if self.workload else {}, sid)

    def server_view(self, s: Server, now_m: float, now: float) -> dict[str, Any]:
        return server_view(s, now_m, now, self._gpus(s.id))

    def specs_view(self) -> dict[str, Any]:
        counts = state_counts(self.pool)
        limits = {lim.name: lim for lim in self.scaler.limits.specs}
        wl = self.workload
        return {
            name: spec_view(
                rt, limits.get(name) or SpecLimits(name, 0, 0), counts[name], wl.view(name) if wl else None
            )
            for name, rt in self.pool.specs.items()
        }

    def status_extra(self) -> dict[str, Any]:
        """What ``/api/status`` adds for ``balancer status``: specs with limits and counts, calls,
        the stores' paths."""
        extra: dict[str, Any] = {"specs": self.specs_view(), "calls": self.stats.status()}
        if self.reloader is not None:
            extra["stores"] = store_paths(self.reloader.cfg)
        return extra

    async def servers(self, request: Request) -> Reply:
        """``GET /api/servers``: every live server with its job, host, calls and time left."""
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        now_m, now = self.pool.clock(), time.time()
        servers = sorted(self.pool.live(), key=lambda s: (s.spec.name, s.requested_m))
        return json_reply({"servers": [self.server_view(s, now_m, now) for s in servers]})

    # -- changes ---------------------------------------------------------------------------------
    def _journal(self, request: Request, action: str, target: str, **fields: Any) -> None:
        """Journal the change (the dashboard lists it among the decisions: observe/recent.py)."""
        doc = {"action": action, "target": target, "who": _who(request), "remote": request.remote, **fields}
        self.bus.emit(Ev.OPERATOR_ACTION, **doc)

    async def server_action(self, request: Request) -> Reply:
        """``POST /api/servers/{id}/drain`` (finish its calls, then stop) and ``.../stop`` (now: its
        calls in flight go to another server, as after a lost server)."""
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        parts = request.path.split("/")
        if len(parts) != 5 or parts[4] not in ("drain", "stop"):
            return error_reply("NotFound", f"no route POST {request.path[:200]}", 404)
        sid, action = parts[3], parts[4]
        s = self.pool.servers.get(sid)
        if s is None or s.state is ServerState.GONE:
            known = ", ".join(sorted(self.pool.servers)) or "none"
            return error_reply("NotFound", f"no server {clip(sid)!r}; live servers: {known}", 404)
        was = s.state.value
        if action == "drain":
            if s.state is not ServerState.READY:
                msg = f"server {sid} is {was}: only a ready server can drain (stop it instead)"
                return error_reply("InvalidInput", msg, 409)
            self.pool.drain(s, "drained by operator")
        else:
            if s.state is ServerState.STOPPING:
                return error_reply("InvalidInput", f"server {sid} is already stopping", 409)
            self.pool.stop(s, "stopped by operator")
        self._journal(request, action, sid, spec=s.spec.name, was=was)
        return json_reply({"server": sid, "was": was, "state": s.state.value})

    async def spec_action(self, request: Request) -> Reply:
        """``POST /api/specs/{spec}/scale`` with ``{min_servers, max_servers, backlog}`` (any of
        them), ``.../pause`` and ``.../resume`` (also lets a held spec try again at once)."""
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        parts = request.path.split("/")
        if len(parts) != 5 or parts[4] not in ("scale", "pause", "resume"):
            return error_reply("NotFound", f"no route POST {request.path[:200]}", 404)
        name, action = parts[3], parts[4]
        if name not in self.pool.specs:
            msg = f"no server spec {clip(name)!r}; known: {sorted(self.pool.specs)}"
            return error_reply("NotFound", msg, 404)
        if self.pool.specs[name].removed:
            return error_reply("InvalidInput", f"spec {clip(name)!r} was removed by a config reload", 409)
        if action == "scale":
            return self._scale(request, name)
        if action == "pause":
            changed = self.pool.pause(name, True)
            self._journal(request, "pause", name, changed=changed)
            return json_reply({"spec": name, "paused": True, "changed": changed})
        changed = self.pool.pause(name, False)
        resumed = self.pool.resume(name, "operator")
        self._journal(request, "resume", name, changed=changed, held_resumed=resumed)
        return json_reply({"spec": name, "paused": False, "resumed": resumed, "unpaused": changed})

    async def reload(self, request: Request) -> Reply:
        """``POST /api/reload`` with ``{"path": ...}`` or nothing (the file it was started with):
        400 with the reason when the file is refused, and then nothing changed."""
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        path = None
        if request.body.strip():
            try:
                doc = orjson.loads(request.body)
            except orjson.JSONDecodeError as exc:
                return error_reply("InvalidInput", f"body is not JSON: {exc}", 400)
            if not isinstance(doc, dict) or set(doc) - {"path"}:
                return error_reply("InvalidInput", 'expected {} or {"path": "/absolute/config.toml"}', 400)
            path = doc.get("path")
            if path is not None and not (isinstance(path, str) and path.startswith("/")):
                return error_reply(
                    "InvalidInput", f"path must be an absolute path, got {clip(repr(path))}", 400
                )
        if self.reloader is None:
            return error_reply("NotFound", "this balancer has no configuration file to reload", 404)
        ok, out = await self.reloader.reload(path, "api", _who(request), request.remote)
        if not ok:
            return error_reply("InvalidInput", str(out), 400)
        return json_reply(out)

    def _scale(self, request: Request, name: str) -> Reply:
        try:
            doc = orjson.loads(request.body or b"")
        except orjson.JSONDecodeError as exc:
            return error_reply("InvalidInput", f"body is not JSON: {exc}", 400)
        if not isinstance(doc, dict) or not doc:
            msg = "expected a JSON object with any of min_servers, max_servers, backlog"
            return error_reply("InvalidInput", msg, 400)
        unknown = sorted(set(doc) - set(_SCALE_KEYS))
        if unknown:
            return error_reply(
                "InvalidInput", f"unknown key(s) {clip(str(unknown))}; known: {sorted(_SCALE_KEYS)}", 400
            )
        for k, v in doc.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= SCALE_MAX:
                msg = f"{k} must be an integer >= 0 and <= {SCALE_MAX}, got {str(v)[:40]}"
                return error_reply("InvalidInput", msg, 400)
        if doc.get("backlog") == 0:
            return error_reply("InvalidInput", "backlog must be >= 1 (0 would never start a server)", 400)
        limits = self.scaler.limits
        old = next(lim for lim in limits.specs if lim.name == name)
        new = dataclasses.replace(old, **doc)
        if new.min_servers > new.max_servers:
            msg = f"min_servers ({new.min_servers}) must not exceed max_servers ({new.max_servers})"
            return error_reply("InvalidInput", msg, 400)
        specs = tuple(new if lim.name == name else lim for lim in limits.specs)
        self.scaler.limits = dataclasses.replace(limits, specs=specs)
        self.pool.changed()
        before = {k: getattr(old, k) for k in doc}
        self._journal(request, "scale", name, before=before, after=doc)
        return json_reply({"spec": name, **{k: getattr(new, k) for k in _SCALE_KEYS}})
