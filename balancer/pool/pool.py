"""The pool: the facade over server records, spec state and ONE state machine for every server.

Every change of a server's state goes through ``Pool.transition``, checked against
``states.TRANSITIONS``: it emits the event, keeps the dispatcher's membership in step (a server
takes calls exactly while READY), wakes the scaler and waiters, and counts a server that died
before it was ready as a failed start. A move the table does not allow is a stale report (a job's
end after the launcher said it exited): it returns False and changes nothing. The pool owns the
servers' jobs (``jobs``), counters and the demand of waiting calls (``demand``); backends report to
it (``BackendEvents``); what to do is decided by ``policy`` and applied by ``scaler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from balancer.backends.base import Backend
from balancer.config.schema import BalancerConfig, ServerSpec
from balancer.http.upstream import Upstream
from balancer.launcher.contract import unix_path
from balancer.observe.events import Ev, EventBus
from balancer.pool.adopt import ServerIds
from balancer.pool.demand import Demand
from balancer.pool.jobs import Jobs
from balancer.pool.members import Members, NoServerError
from balancer.pool.servers import Mark, Server
from balancer.pool.specs import SpecRuntime, Specs
from balancer.pool.states import ENTER_EVENT, NOT_YET_READY, TRANSITIONS, ServerState

S = ServerState
# State changes kept for a newly opened dashboard (its server timeline and failures): a few per
# server, so the last hundreds of servers.


class Pool:
    """Servers and their states; implements ``BackendEvents``. Runs on one event loop, no locks."""

    def __init__(
        self,
        cfg: BalancerConfig,
        bus: EventBus,
        backend: Backend,
        dispatcher: Members,
        clock: Callable[[], float] = time.monotonic,
        state_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.bus = bus
        self.backend = backend
        self.dispatcher = dispatcher
        self.clock = clock
        self.servers: dict[str, Server] = {}
        self.specs = Specs.of(cfg.servers)
        self.closing = False
        self.wake = asyncio.Event()  # something the scaler should look at now
        # model -> (input sizes, output sizes, spec) as its first ready server said, for config {}
        self.model_sizes: dict[str, tuple[list[int], list[int], str]] = {}
        self.demand = Demand(dispatcher)  # calls waiting, the scaler's input
        self.jobs = Jobs(backend, self.spawn, self.job_ended)  # submitted and cancelled here only
        self._changed = asyncio.Event()
        self._ids = ServerIds(state_dir, clock())
        self._tasks: set[asyncio.Task[Any]] = set()
        self.gone_calls = 0  # calls answered by servers no longer in ``servers``
        self.gone_s: dict[str, float] = {}  # spec -> seconds the jobs of its gone servers ran (cost)
        self.preempted_total = 0  # servers whose jobs the scheduler preempted (status, dashboard)

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
            if s.started_m is not None:
                name = s.spec.name
                self.gone_s[name] = self.gone_s.get(name, 0.0) + max(0.0, self.clock() - s.started_m)
            failed = was is not S.STOPPING and was is not S.PREEMPTED  # preempted: lost, not failed
            self.bus.emit(Ev.SERVER_FAILED if failed else Ev.SERVER_STOPPED, server=s.id, **fields)
            if s.upstream is not None:
                s.upstream.close()
            if failed and was in NOT_YET_READY and not self.closing:
                rt = self.specs[s.spec.name]
                rt.start_failed(reason or "", self.clock(), fields.get("log"), fields.get("stderr"))
        else:
            self.bus.emit(ENTER_EVENT[to], server=s.id, **fields)
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

    # -- creating, readying, ending servers: the pool owns their jobs ----------------------------
    def add_server(self, spec: str, reason: str) -> Server:
        rt = self.specs[spec]
        s = Server(self._ids.next(), rt.spec, self.clock(), concurrency=rt.spec.concurrency)
        self.servers[s.id] = s
        self.bus.emit(Ev.SERVER_REQUESTED, server=s.id, spec=spec, reason=reason)
        self.changed()
        return s

    def start_servers(
        self,
        spec: str,
        count: int,
        reason: str,
        time_limit_s: float | None = None,
        successor: bool = False,
        preemptible: bool = False,
    ) -> list[Server]:
        """Add ``count`` servers of ``spec`` and submit their jobs, as one submit (``successor``: in a
        rolling replacement; ``preemptible``: to the backend's preemptible partition or QOS). A
        backend error fails these starts; the balancer keeps serving."""
        servers = [self.add_server(spec, reason) for _ in range(count)]
        for s in servers:
            s.mark(Mark.SUCCESSOR, successor)
            s.preemptible = preemptible
        self.jobs.submit(servers, time_limit_s)
        return servers

    def mark(self, server_ids: Iterable[str], m: Mark, on: bool = True) -> None:
        """Set (or clear) a policy mark on the named servers still live."""
        for sid in server_ids:
            s = self.servers.get(sid)
            if s is not None:
                s.mark(m, on)

    def count_call(self, s: Server, busy_s: float) -> None:
        """``s`` answered a call that held it ``busy_s``: its dashboard counters (no event)."""
        s.calls += 1
        s.busy_s += busy_s

    @property
    def adopt_until(self) -> float:
        return self._ids.adopt_until

    def adoptable(self, server_id: str) -> bool:
        """Whether ``server_id`` is an earlier balancer's (this run directory) not yet taken back."""
        return self._ids.adoptable(server_id)

    def adopt(self, server_id: str, spec: str, doc: dict[str, Any]) -> Server | None:
        """A server an earlier balancer with this run directory started registers again: take it
        back (it then registers as any new one). None if it is not ours to adopt."""
        if spec not in self.specs or not self._ids.take(server_id):
            return None
        rt = self.specs[spec]
        s = Server(server_id, rt.spec, self.clock(), concurrency=rt.spec.concurrency)
        self.servers[server_id] = s
        self.bus.emit(Ev.SERVER_ADOPTED, server=server_id, spec=spec, job=doc.get("job"), url=doc.get("url"))
        self.changed()
        return s

    def register(self, s: Server, url: str, doc: dict[str, Any]) -> bool:
        """The launcher reported ``url``; False if ``s`` is past the point of registering."""
        if s.state not in (S.REQUESTED, S.STARTING):
            return False
        s.url = url.rstrip("/")
        s.host = doc.get("host") or s.host
        s.job = s.job or doc.get("job")
        if s.started_m is None:  # registration overtook the backend's start report (or adopted)
            s.started_m = self.clock()
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
        sock = unix_path(s.url)
        if sock is not None:
            s.upstream = Upstream("localhost", 80, unix=sock)
        else:
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
            self.jobs.cancel(s)

    def stop(self, s: Server, reason: str, fallback: bool = True) -> None:
        """Lease stop first (the launcher ends its server); the backend's cancel is the second line."""
        was = s.state
        if not self.transition(s, S.STOPPING, reason):
            return
        if was in (S.REQUESTED, S.STARTING) or not fallback:
            # No launcher listens for a lease yet (or we are shutting down): cancel right away.
            self.jobs.cancel(s)
        else:
            self.jobs.cancel_after_grace(s)

    def drain(self, s: Server, reason: str) -> bool:
        """Take no new calls on ``s``; the scaler stops it once its calls are done. No replacement
        is forced (demand and ``min_servers`` start one as usual)."""
        if not self.transition(s, S.DRAINING, reason):
            return False
        s.drain_reason = reason
        s.mark(Mark.REPLACED)
        self.changed()
        return True

    # -- a spec's life cycle ---------------------------------------------------------------------
    def resume(self, spec: str, reason: str) -> bool:
        """Let a held spec start servers again (a retry became ready, or the operator said so)."""
        rt = self.specs[spec]
        if not rt.held:
            return False
        rt.held, rt.held_reason, rt.failures = False, "", 0
        self.bus.emit(Ev.SPEC_RESUMED, spec=spec, reason=reason)
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

    def add_spec(self, spec: ServerSpec) -> None:
        """A new spec (a reload): its listed models are servable at once, others once a server says them."""
        self.specs[spec.name] = SpecRuntime.of(spec)
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
            s.mark(Mark.SUCCESSOR, False)  # a new rollout pairs only its own successors
            if relaunch and s.state in (*NOT_YET_READY, S.READY):
                s.mark(Mark.OUTDATED)
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
        self.specs[name].removed = reason
        for s in list(self.servers.values()):
            if s.spec.name == name:
                if s.state is S.READY:
                    self.drain(s, reason)
                elif s.state in NOT_YET_READY:
                    self.stop(s, reason)
        self.fail_unservable(reason)

    def forget_removed(self) -> list[str]:
        """Removed specs with no server left leave the pool; returns their names."""
        return self.specs.forget_removed({s.spec.name for s in self.servers.values()})

    # -- BackendEvents ---------------------------------------------------------------------------
    def job_deferred(self, server_id: str, reason: str) -> None:
        """The backend holds this start until resources this machine's servers hold are free (a
        rolling replacement then lets an old server go first)."""
        s = self.servers.get(server_id)
        if s is not None and not s.deferred:
            s.mark(Mark.DEFERRED)
            self.bus.emit(Ev.SERVER_DEFERRED, server=server_id, spec=s.spec.name, reason=reason)
            self.changed()

    def job_started(self, server_id: str, job_id: str, host: str) -> None:
        s = self.servers.get(server_id)
        if s is None:
            return
        s.mark(Mark.DEFERRED, False)
        s.job, s.host = job_id, host
        if s.started_m is None:  # the start-up timeout counts from here, not from the request
            s.started_m = self.clock()
        fields = {"spec": s.spec.name, "job": job_id, "host": host}
        if not self.transition(s, S.STARTING, **fields):
            # Registered already (the report lags a poll): the start time still goes on record.
            self.bus.emit(Ev.SERVER_STARTED, server=server_id, **fields)

    def job_ended(self, server_id: str, reason: str, failed: bool, **detail: Any) -> None:
        """``detail``: what the launcher knows of a failed start (``log``, its path; ``stderr``, the
        model's last lines), journaled with ``server.failed`` and kept on the spec for the views."""
        s = self.servers.get(server_id)
        if s is not None:
            self.transition(s, S.GONE, reason, **{k: v for k, v in detail.items() if v})

    def job_preempted(self, server_id: str, reason: str) -> None:
        """The scheduler takes the job back (the launcher's notice, or the job's state). The server
        stops at once and its calls in flight go back to the queue for other servers (the dispatcher
        retries a call whose server broke, without charging it an attempt): the CPUs go to the job
        that preempted ours now rather than at the end of the grace time, which the simulator
        measured as the policy that costs other users nothing (``sim`` ``on_notice="now"``). Never
        a failed start: no failure count, no hold. Journaled once, whoever reports first."""
        s = self.servers.get(server_id)
        if s is None or s.state is S.PREEMPTED:
            return
        if not self.transition(s, S.PREEMPTED, reason, spec=s.spec.name, job=s.job, host=s.host):
            return  # stopping already: its job ends anyway
        s.preempted = True
        self.preempted_total += 1
        self.stop(s, "preempted: its calls go to other servers")

    def job_deadline(self, server_id: str, deadline_wall: float) -> None:
        s = self.servers.get(server_id)
        if s is not None:
            s.deadline_wall = deadline_wall
            s.deadline_m = self.clock() + (deadline_wall - time.time())

    # -- what can be served -----------------------------------------------------------------
    def can_serve(self, model: str) -> bool:
        if self.closing:
            return False
        return bool(self.dispatcher.by_model.get(model)) or self.specs.may_serve(model)

    def unservable_reason(self, model: str) -> str:
        if self.closing:
            return "the balancer is shutting down"
        return self.specs.unservable_reason(model)

    def fail_unservable(self, why: str) -> None:
        """Fail waiting calls that no spec can serve any more, so nothing waits forever."""
        for model in list(self.dispatcher.queues):
            if not self.can_serve(model):
                self.dispatcher.fail_waiters(model, NoServerError(why))
        self.changed()

    def known_models(self) -> list[str]:
        return self.specs.known_models()

    def all_discovered(self) -> bool:
        return self.specs.all_discovered()

    def serves(self, model: str) -> bool:
        return self.specs.serves(model)

    async def wait_as_demand(self, model: str, pred: Callable[[], Any], timeout: float) -> None:
        """Wait (up to ``timeout``) for ``pred``, counting as demand for ``model`` meanwhile ("" = a
        model no discovered spec has), so the scaler starts a server rather than one per call."""
        with self.demand.counting(model):
            self.wake.set()
            await self.wait_for(pred, timeout)

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
