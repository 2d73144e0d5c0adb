"""The pool: server records, per-spec runtime state and ONE state machine for every server.

Every change of a server's state goes through ``Pool.transition``, checked against
``TRANSITIONS``. That one function emits the event, keeps the dispatcher's membership in step
(a server takes calls exactly while READY), wakes the scaler and whoever waits on pool state, and
counts a server that died before it was ready as a failed start of its spec. A transition the
table does not allow returns False and changes nothing: reports race (a job's end arrives after
the launcher said it exited), and the late one is simply stale.

The pool is what backends report to (``BackendEvents``); what to do about the state (start,
stop, drain, hold) is decided by ``policy`` and applied by ``scaler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from balancer.backends.base import Backend
from balancer.calls.dispatcher import Dispatcher, NoServerError
from balancer.config.load import BalancerConfig, ServerSpec
from balancer.http.upstream import Upstream
from balancer.launcher.procgroup import GRACE_S
from balancer.observe.events import Ev, EventBus
from balancer.policy.decide import Phase

# A launcher hears a lease stop at once (long poll) and ends its server; if its job has not ended
# after half the grace, the backend's cancel (itself graceful) follows.
LEASE_STOP_GRACE_S = GRACE_S / 2
# After a restart, new servers wait this long for the launchers of the old ones to register again
# (they retry every second while the balancer is away).
ADOPT_WINDOW_S = 5.0
# State changes kept for a newly opened dashboard (its server timeline and failures): a few per
# server, so the last hundreds of servers.
RECENT_TRANSITIONS = 1000


def _read_int(path: Path) -> int:
    try:
        return max(1, int(path.read_text()))
    except (OSError, ValueError):
        return 1


class ServerState(str, enum.Enum):
    """A server's life, in order. It takes calls only while READY."""

    REQUESTED = "requested"  # asked of the backend
    STARTING = "starting"  # the backend has a job for it
    REGISTERED = "registered"  # the launcher reported its URL; the balancer checks /Info
    READY = "ready"
    DRAINING = "draining"  # finishing its calls before its job's time limit; takes no new ones
    STOPPING = "stopping"  # told to stop (lease), waiting for its job to end
    GONE = "gone"


S = ServerState
NOT_YET_READY = frozenset({S.REQUESTED, S.STARTING, S.REGISTERED})
# Allowed moves. Registration may overtake the backend's "started" report (a poll interval).
TRANSITIONS: dict[ServerState, frozenset[ServerState]] = {
    S.REQUESTED: frozenset({S.STARTING, S.REGISTERED, S.STOPPING, S.GONE}),
    S.STARTING: frozenset({S.REGISTERED, S.STOPPING, S.GONE}),
    S.REGISTERED: frozenset({S.READY, S.STOPPING, S.GONE}),
    S.READY: frozenset({S.DRAINING, S.STOPPING, S.GONE}),
    S.DRAINING: frozenset({S.STOPPING, S.GONE}),
    S.STOPPING: frozenset({S.GONE}),
    S.GONE: frozenset(),
}
_ENTER_EVENT = {
    S.REQUESTED: Ev.SERVER_REQUESTED,
    S.STARTING: Ev.SERVER_STARTED,
    S.REGISTERED: Ev.SERVER_REGISTERED,
    S.READY: Ev.SERVER_READY,
    S.DRAINING: Ev.SERVER_DRAINING,
    S.STOPPING: Ev.SERVER_STOPPING,
}
_PHASE = {
    S.REQUESTED: Phase.STARTING,
    S.STARTING: Phase.STARTING,
    S.REGISTERED: Phase.STARTING,
    S.READY: Phase.READY,
    S.DRAINING: Phase.DRAINING,
    S.STOPPING: Phase.STOPPING,
    S.GONE: Phase.STOPPING,
}


@dataclass(eq=False, slots=True)
class Server:
    id: str
    spec: ServerSpec
    requested_m: float
    state: ServerState = S.REQUESTED
    concurrency: int = 1
    outstanding: int = 0
    idle_since_m: float = 0.0
    serving: bool = False  # a dispatcher member (kept in step with READY by the pool)
    url: str | None = None
    host: str | None = None
    job: str | None = None
    models: tuple[str, ...] = ()
    deadline_wall: float | None = None  # Unix time its job will be killed
    deadline_m: float | None = None  # the same on the monotonic clock, for the policy
    replaced: bool = False
    outdated: bool = False  # a reload changed how its spec starts: a successor replaces it
    successor: bool = False  # started in a rolling replacement, to take an outdated one's place
    deferred: bool = False  # the backend holds its start until cores or GPUs are free
    drain_reason: str | None = None  # why the operator drained it (the policy's drains leave it None)
    lease_waiter: asyncio.Future[None] | None = None
    upstream: Upstream | None = None  # keep-alive connections, set when the server is ready
    calls: int = 0  # calls it answered (for the dashboard: two additions per call, no event)
    busy_s: float = 0.0  # summed dispatch-to-answer time of those calls
    ready_m: float | None = None  # when it became ready: its utilisation's denominator starts

    @property
    def phase(self) -> Phase:
        return _PHASE[self.state]


@dataclass
class SpecRuntime:
    """Per-spec state beyond the server records: discovered models and start failures."""

    spec: ServerSpec
    models: set[str] = field(default_factory=set)
    discovered: bool = False
    failures: int = 0  # consecutive failed starts
    last_failure_m: float = 0.0
    last_failure: str = ""
    held: bool = False
    held_reason: str = ""
    paused: bool = False  # the operator paused it: no starts until resumed
    removed: str = ""  # why a reload removed it: its servers drain, it is forgotten once they are gone


class Pool:
    """Servers and their states; implements ``BackendEvents``. Runs on one event loop, no locks."""

    def __init__(
        self,
        cfg: BalancerConfig,
        bus: EventBus,
        backend: Backend,
        dispatcher: Dispatcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        state_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.bus = bus
        self.backend = backend
        self.dispatcher = dispatcher or Dispatcher(clock=clock)
        self.clock = clock
        self.servers: dict[str, Server] = {}
        self.specs = {s.name: SpecRuntime(s, set(s.models), discovered=bool(s.models)) for s in cfg.servers}
        self.closing = False
        self.wake = asyncio.Event()  # something the scaler should look at now
        self.meta_waiting: dict[str, int] = {}  # model ("" = not yet known) -> calls waiting as demand
        # model -> (input sizes, output sizes, spec) as its first ready server said, for config {}
        self.model_sizes: dict[str, tuple[list[int], list[int], str]] = {}
        self._changed = asyncio.Event()
        # Server ids continue across restarts with the same run directory; the ids of an earlier
        # balancer there may be adopted when their launchers register again.
        self._state = state_dir / "next-server-id" if state_dir is not None else None
        first = _read_int(self._state) if self._state is not None else 1
        self._ids = itertools.count(first)
        self._first_id = first  # ids below it are an earlier balancer's
        self._adopted: set[str] = set()
        self.adopt_until = clock() + ADOPT_WINDOW_S if first > 1 else 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        # Recent state changes (rare, never per call), so a dashboard opened late still shows them.
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_TRANSITIONS)
        self.gone_calls = 0  # calls answered by servers no longer in ``servers``

    # -- the state machine -----------------------------------------------------------------------
    def transition(self, s: Server, to: ServerState, reason: str | None = None, **fields: Any) -> bool:
        """Move ``s`` to ``to`` if the table allows it: emit, keep the dispatcher in step, wake."""
        was = s.state
        if to not in TRANSITIONS[was]:
            return False
        if was is S.READY:
            self.dispatcher.remove(s)
        s.state = to
        if reason is not None:
            fields["reason"] = reason
        if to is S.GONE:
            del self.servers[s.id]  # late reports about it find nothing and are dropped
            self.gone_calls += s.calls
            failed = was is not S.STOPPING
            self.bus.emit(Ev.SERVER_FAILED if failed else Ev.SERVER_STOPPED, server=s.id, **fields)
            if s.upstream is not None:
                s.upstream.close()
            if failed and was in NOT_YET_READY and not self.closing:
                self._start_failed(self.specs[s.spec.name], reason or "")
        else:
            self.bus.emit(_ENTER_EVENT[to], server=s.id, **fields)
        self._note(s, to, reason, failed=to is S.GONE and was is not S.STOPPING)
        if to is S.STOPPING or to is S.GONE:
            if s.lease_waiter is not None and not s.lease_waiter.done():
                s.lease_waiter.set_result(None)
        elif to is S.READY:
            s.idle_since_m = s.ready_m = self.clock()
            self.dispatcher.add(s)
        if was is S.READY:
            # Its models may have no server left and none to come (held spec, shutdown): the calls
            # waiting for them end now with the reason, instead of waiting until shutdown.
            for m in s.models:
                if self.dispatcher.waiting(m) and not self.can_serve(m):
                    self.dispatcher.fail_waiters(m, NoServerError(self.unservable_reason(m)))
        self.changed()
        return True

    def _note(self, s: Server, to: ServerState, reason: str | None, failed: bool = False) -> None:
        self.recent.append(
            {"t": time.time(), "server": s.id, "spec": s.spec.name, "state": to.value,
             "reason": reason, "failed": failed}
        )  # fmt: skip

    def _start_failed(self, rt: SpecRuntime, reason: str) -> None:
        rt.failures += 1
        rt.last_failure_m = self.clock()
        rt.last_failure = reason

    # -- creating, readying, ending servers ------------------------------------------------------
    def add_server(self, spec: str, reason: str) -> Server:
        rt = self.specs[spec]
        n = next(self._ids)
        if self._state is not None:
            self._state.write_text(str(n + 1))  # a few bytes per started server
        s = Server(f"s{n}", rt.spec, self.clock(), concurrency=rt.spec.concurrency)
        self.servers[s.id] = s
        self.bus.emit(Ev.SERVER_REQUESTED, server=s.id, spec=spec, reason=reason)
        self._note(s, S.REQUESTED, reason)
        self.changed()
        return s

    def adoptable(self, server_id: str) -> bool:
        """Whether ``server_id`` is an earlier balancer's (this run directory) not yet taken back."""
        n = server_id[1:]
        return (
            server_id[:1] == "s"
            and n.isdigit()
            and int(n) < self._first_id
            and server_id not in self._adopted
        )

    def adopt(self, server_id: str, spec: str, doc: dict[str, Any]) -> Server | None:
        """A server an earlier balancer with this run directory started registers again: take it
        back (it then registers as any new one). None if it is not ours to adopt."""
        if not self.adoptable(server_id) or spec not in self.specs:
            return None
        self._adopted.add(server_id)
        rt = self.specs[spec]
        s = Server(server_id, rt.spec, self.clock(), concurrency=rt.spec.concurrency)
        self.servers[server_id] = s
        self.bus.emit(Ev.SERVER_ADOPTED, server=server_id, spec=spec, job=doc.get("job"), url=doc.get("url"))
        self._note(s, S.REQUESTED, "adopted after a restart")
        self.changed()
        return s

    def register(self, s: Server, url: str, doc: dict[str, Any]) -> bool:
        """The launcher reported ``url``; False if ``s`` is past the point of registering."""
        if s.state not in (S.REQUESTED, S.STARTING):
            return False
        s.url = url.rstrip("/")
        s.host = doc.get("host") or s.host
        s.job = s.job or doc.get("job")
        return self.transition(
            s,
            S.REGISTERED,
            url=s.url,
            host=s.host,
            port=doc.get("port"),
            job=doc.get("job"),
            pid=doc.get("pid"),
            launcher_pid=doc.get("launcher_pid"),
        )

    def make_ready(self, s: Server, models: list[str]) -> bool:
        """``s`` answered /Info with ``models``: let it take calls."""
        if s.state is not S.REGISTERED or s.url is None:
            return False
        rt = self.specs[s.spec.name]
        s.models = tuple(models)
        u = urlsplit(s.url)
        s.upstream = Upstream(u.hostname or "127.0.0.1", u.port or 80)
        rt.failures = 0
        if rt.held:
            self.resume(s.spec.name, "a start succeeded")
        if not rt.discovered:
            rt.models.update(models)
            rt.discovered = True
        return self.transition(s, S.READY, spec=s.spec.name, models=list(models), concurrency=s.concurrency)

    def fail(self, s: Server, why: str) -> None:
        """``s`` cannot serve (bad /Info, lost, start-up timeout): gone, and its job cancelled."""
        if self.transition(s, S.GONE, why):
            self.spawn(self.backend.cancel(s.id))

    def stop(self, s: Server, reason: str, fallback: bool = True) -> None:
        """Lease stop first (the launcher ends its server); the backend's cancel is the second line."""
        was = s.state
        if not self.transition(s, S.STOPPING, reason):
            return
        if was in (S.REQUESTED, S.STARTING) or not fallback:
            # No launcher listens for a lease yet (or we are shutting down): cancel right away.
            self.spawn(self.backend.cancel(s.id))
        else:
            self.spawn(self._cancel_later(s))

    async def _cancel_later(self, s: Server) -> None:
        await asyncio.sleep(LEASE_STOP_GRACE_S)
        if s.state is not S.GONE:
            await self.backend.cancel(s.id)

    def resume(self, spec: str, reason: str) -> bool:
        """Let a held spec start servers again (a retry became ready, or the operator said so)."""
        rt = self.specs[spec]
        if not rt.held:
            return False
        rt.held, rt.held_reason, rt.failures = False, "", 0
        self.bus.emit(Ev.SPEC_RESUMED, spec=spec, reason=reason)
        self.changed()
        return True

    def drain(self, s: Server, reason: str) -> bool:
        """Take no new calls on ``s``; the scaler stops it once its calls are done. No replacement
        is forced (demand and ``min_servers`` start one as usual)."""
        if not self.transition(s, S.DRAINING, reason):
            return False
        s.drain_reason, s.replaced = reason, True
        self.changed()
        return True

    def pause(self, spec: str, paused: bool) -> bool:
        """Start no servers of ``spec`` (True) or start them again (False); returns whether it changed.
        Running servers keep serving and waiting calls keep waiting: a pause loses no call."""
        rt = self.specs[spec]
        if rt.paused == paused:
            return False
        rt.paused = paused
        self.changed()
        return True

    def hold(self, spec: str, failures: int, reason: str, held_reason: str | None = None) -> None:
        """Start no more servers of ``spec``; fail the calls nothing else can serve."""
        rt = self.specs[spec]
        if rt.held:
            return
        rt.held = True
        rt.held_reason = held_reason or f"server '{spec}' failed to start {failures} times: {reason}"
        self.bus.emit(Ev.SPEC_HELD, spec=spec, failures=failures, reason=reason)
        self.fail_unservable(rt.held_reason)

    # -- a reloaded configuration (reload.py decides what changed) --------------------------------
    def add_spec(self, spec: ServerSpec) -> None:
        """A new spec: its listed models are servable at once, others once a server says them."""
        self.specs[spec.name] = SpecRuntime(spec, set(spec.models), discovered=bool(spec.models))
        self.changed()

    def update_spec(self, spec: ServerSpec, relaunch: bool) -> list[Server]:
        """Take a changed spec. Limits (concurrency too) apply to the running servers at once; with
        ``relaunch`` (its command, environment, resources... changed) they become outdated and the
        policy replaces them one by one. Returns the servers to be replaced."""
        rt = self.specs[spec.name]
        if spec.models != rt.spec.models and spec.models:
            rt.models, rt.discovered = set(spec.models), True
        rt.spec = spec
        outdated = []
        for s in self.servers.values():
            if s.spec.name != spec.name:
                continue
            s.successor = False  # a new rollout pairs only its own successors
            if relaunch and s.state in (*NOT_YET_READY, S.READY):
                s.outdated = True
                outdated.append(s)
            elif not s.outdated:
                s.spec = spec
                if s.concurrency != spec.concurrency:
                    s.concurrency = spec.concurrency
                    if s.state is S.READY:
                        self.dispatcher.resized(s)  # more slots: waiting calls take them now
        if relaunch:
            rt.failures = 0  # a fixed command deserves a fresh start, held or not
            self.resume(spec.name, "its spec changed in a config reload")
        self.changed()
        return outdated

    def remove_spec(self, name: str, reason: str) -> None:
        """Start nothing more of ``name``: ready servers drain (their calls finish), others stop;
        calls waiting for models no other spec serves fail now with ``reason``."""
        rt = self.specs[name]
        rt.removed = reason
        for s in list(self.servers.values()):
            if s.spec.name == name:
                if s.state is S.READY:
                    self.drain(s, reason)
                elif s.state in NOT_YET_READY:
                    self.stop(s, reason)
        self.fail_unservable(reason)

    def forget_removed(self) -> list[str]:
        """Removed specs with no server left leave the pool; returns their names."""
        busy = {s.spec.name for s in self.servers.values()}
        gone = [n for n, rt in self.specs.items() if rt.removed and n not in busy]
        for n in gone:
            del self.specs[n]
        return gone

    # -- BackendEvents ---------------------------------------------------------------------------
    def job_deferred(self, server_id: str, reason: str) -> None:
        """The backend holds this start until resources this machine's servers hold are free (a
        rolling replacement then lets an old server go first)."""
        s = self.servers.get(server_id)
        if s is not None and not s.deferred:
            s.deferred = True
            self.bus.emit(Ev.SERVER_DEFERRED, server=server_id, spec=s.spec.name, reason=reason)
            self.changed()

    def job_started(self, server_id: str, job_id: str, host: str) -> None:
        s = self.servers.get(server_id)
        if s is None:
            return
        s.deferred = False
        s.job, s.host = job_id, host
        fields = {"spec": s.spec.name, "job": job_id, "host": host}
        if not self.transition(s, S.STARTING, **fields):
            # Registered already (the report lags a poll): the start time still goes on record.
            self.bus.emit(Ev.SERVER_STARTED, server=server_id, **fields)

    def job_ended(self, server_id: str, reason: str, failed: bool) -> None:
        s = self.servers.get(server_id)
        if s is not None:
            self.transition(s, S.GONE, reason)

    def job_deadline(self, server_id: str, deadline_wall: float) -> None:
        s = self.servers.get(server_id)
        if s is not None:
            s.deadline_wall = deadline_wall
            s.deadline_m = self.clock() + (deadline_wall - time.time())

    # -- what can be served ----------------------------------------------------------------------
    def can_serve(self, model: str) -> bool:
        if self.closing:
            return False
        if self.dispatcher.by_model.get(model):
            return True
        return any(
            not rt.held and not rt.removed and (model in rt.models or not rt.discovered)
            for rt in self.specs.values()
        )

    def unservable_reason(self, model: str) -> str:
        if self.closing:
            return "the balancer is shutting down"
        removed = [rt.removed for rt in self.specs.values() if rt.removed and model in rt.models]
        if removed:
            return f"no server for model '{model}': {removed[0]}"
        held = [rt.held_reason for rt in self.specs.values() if rt.held]
        return f"no server for model '{model}' became ready" + (f" ({'; '.join(held)})" if held else "")

    def fail_unservable(self, why: str) -> None:
        """Fail waiting calls that no spec can serve any more, so nothing waits forever."""
        for model in list(self.dispatcher.queues):
            if not self.can_serve(model):
                self.dispatcher.fail_waiters(model, NoServerError(why))
        self.changed()

    def known_models(self) -> list[str]:
        seen: dict[str, None] = {}
        for rt in self.specs.values():
            if not rt.removed:
                for m in sorted(rt.models):
                    seen[m] = None
        return list(seen)

    def all_discovered(self) -> bool:
        return all(rt.discovered or rt.held or rt.removed for rt in self.specs.values())

    def serves(self, model: str) -> bool:
        return any(model in rt.models and not rt.removed for rt in self.specs.values())

    # -- waiting on pool state -------------------------------------------------------------------
    def changed(self) -> None:
        """Wake ``wait_for`` callers and the scaler: pool state changed."""
        self._changed.set()
        self._changed = asyncio.Event()
        self.wake.set()

    async def wait_for(self, pred: Callable[[], Any], timeout: float, stop_on_close: bool = True) -> bool:
        """Wait until ``pred()`` holds, re-checking whenever pool state changes."""
        deadline = time.monotonic() + timeout
        while not pred():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.closing and stop_on_close):
                return bool(pred())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_tasks(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    def live(self) -> list[Server]:
        return list(self.servers.values())  # gone servers leave the dict
