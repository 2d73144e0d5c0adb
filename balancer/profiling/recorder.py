"""The profiler: a bus subscriber that adds up one run's figures per spec and model, flushes them
into the profile store (``profiling.store``) every ``flush_s`` and at shutdown, sizes ``"auto"``
resources at start, and says when a spec's resources are far from what it uses.

Everything on the event path is dict arithmetic (the subscriber runs inside every ``emit``); the
store is written in a worker thread, so a slow disk never stalls the loop.

CPU-seconds per call: for each server, the growth of its process tree's CPU time between two of
its usage samples, divided by the calls it completed between them (by the launcher's sampling time
and the call's completion time); summed over the spec's servers.
CPU before a server's first sample (start-up, imports) and after its last one is left out, as are
the calls in those stretches, so the figure is the steady cost of serving, idle time included.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from balancer.observe.events import Ev, Event, EventBus
from balancer.observe.histogram import INV_LOG_BASE
from balancer.profiling.advice import cpu_advice, memory_advice
from balancer.profiling.autosize import open_store
from balancer.profiling.store import (
    COUNTERS,
    SPEC_ROW,
    ProfileStore,
    delta,
    log_bin,
    spec_hash,
    util_bin,
)

log = logging.getLogger(__name__)

EVAL_OPS = frozenset({"Evaluate", "Gradient", "ApplyJacobian", "ApplyHessian"})
# The events the profiler reads: it subscribes to these only (``Profiler._handlers``).
EVENTS = frozenset({
    Ev.CALL_DISPATCHED, Ev.CALL_COMPLETED, Ev.CALL_REQUEUED, Ev.CALL_FAILED,
    Ev.SERVER_USAGE, Ev.SERVER_REQUESTED, Ev.SERVER_ADOPTED, Ev.SERVER_READY, Ev.WORKLOAD_CLASSIFIED,
    Ev.SERVER_STOPPED, Ev.SERVER_FAILED,
})  # fmt: skip
MAX_SPANS = 100_000  # calls kept per server between two usage samples


def _given(res: Any) -> dict[str, Any]:
    """A spec's resources as its profile row keeps them (``resources``)."""
    return {"cpus": res.cpus, "memory": res.memory, "gpus": res.gpus, "time_limit": res.time_limit}


@dataclasses.dataclass
class _Server:
    spec: str
    requested_m: float | None = None
    ready_m: float | None = None
    wall_mark: float | None = None  # wall time counted up to here
    # Calls by wall time (event ``t``), matched against each sample's ``sample_t``: samples reach
    # the balancer in batches with the lease poll, so arrival order says nothing about timing.
    open: dict[str, float] = dataclasses.field(default_factory=dict)  # call -> dispatched at
    spans: deque[tuple[float, float, bool]] = dataclasses.field(default_factory=deque)  # start, end, done
    sampled: dict[str, Any] | None = None  # the last usage sample's counters


class Profiler:
    """Subscribe it to the bus; ``start`` runs the periodic flush, ``close`` the last one."""

    def __init__(self, cfg: Any, bus: EventBus, store: ProfileStore) -> None:
        self.settings = cfg.profiles
        self.bus = bus
        self.store = store
        self.specs = {s.name: s for s in cfg.servers}
        self.hashes = {s.name: spec_hash(s) for s in cfg.servers}
        # Figures are kept per key: a spec's name for its current version, ``name\0hash`` for a
        # version a reload replaced while its servers still run (``reconfigure``): key -> name.
        self.names: dict[str, str] = {}
        self.servers: dict[str, _Server] = {}
        self.calls: dict[Any, str] = {}  # call -> the server it is on now (dispatched, not ended)
        self.spec_figs: dict[str, dict[str, Any]] = {}
        self.model_figs: dict[tuple[str, str], dict[str, Any]] = {}
        self._op_figs: dict[tuple[str, str, str], tuple[dict[str, Any], ...]] = {}
        self.mismatches: dict[tuple[str, str], dict[str, Any]] = {}
        self._flushed: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0
        self.error: str | None = None
        self._on = self._handlers()

    # -- reload ------------------------------------------------------------------------------------
    def reconfigure(self, cfg: Any) -> None:
        """Take a reloaded configuration (sync: nothing is flushed here). A new spec gets figures
        from now on. A spec whose ``spec_hash`` changed (command, job script) keeps its figures so
        far, and the servers it still runs, under its old hash (a key of its own): its new servers'
        figures go to the new hash's profile, never merged with the old one; a change back to a hash
        seen earlier in the run continues that hash's figures. A removed spec stays known until the
        run ends, so its remaining servers' figures flush under its hash. ``[profiles] path`` is
        the store opened at start; the other settings apply at once."""
        self.settings = cfg.profiles
        for spec in cfg.servers:
            name, new = spec.name, spec_hash(spec)
            old = self.hashes.get(name)
            if old is not None and old != new:
                self._rekey(name, f"{name}\0{old}")
                if f"{name}\0{new}" in self.hashes:
                    self._rekey(f"{name}\0{new}", name)
            before = self.specs.get(name)
            self.specs[name], self.hashes[name] = spec, new
            if before is not None and before.resources != spec.resources:
                f = self.spec_figs.get(name)
                if f is not None:  # the store keeps the latest resources given (a replace key)
                    f["resources"] = _given(spec.resources)
                for k in [k for k in self.mismatches if k[0] == name]:  # advice on what was given
                    del self.mismatches[k]

    def _rekey(self, src: str, dst: str) -> None:
        """Move the figures, servers and advice of key ``src`` to ``dst`` (a free key)."""
        name = self.names.pop(src, src)
        if dst != name:
            self.names[dst] = name
        self.specs[dst] = self.specs.pop(src)
        self.hashes[dst] = self.hashes.pop(src)
        if src in self.spec_figs:
            self.spec_figs[dst] = self.spec_figs.pop(src)
        for spec, model in [k for k in self.model_figs if k[0] == src]:
            self.model_figs[(dst, model)] = self.model_figs.pop((spec, model))
        for k in [k for k in self._op_figs if k[0] == src]:
            del self._op_figs[k]  # a lookup cache of the dicts just moved
        for spec, resource in [k for k in self.mismatches if k[0] == src]:
            self.mismatches[(dst, resource)] = self.mismatches.pop((spec, resource))
        for s in self.servers.values():
            if s.spec == src:
                s.spec = dst

    # -- the event path ----------------------------------------------------------------------------
    def __call__(self, e: Event) -> None:
        handler = self._on.get(e["ev"])
        if handler is not None:
            handler(e)

    def _handlers(self) -> dict[str, Callable[[Event], None]]:
        """One handler per event the profiler reads (``EVENTS``), so the bus calls it for no other."""
        return {
            Ev.CALL_DISPATCHED: self._dispatched,
            Ev.CALL_COMPLETED: self._call_completed,
            Ev.CALL_REQUEUED: self._call_ended,
            Ev.CALL_FAILED: self._call_ended,
            Ev.SERVER_USAGE: self._usage,
            Ev.SERVER_REQUESTED: self._requested,
            Ev.SERVER_ADOPTED: self._requested,
            Ev.SERVER_READY: self._ready,
            Ev.WORKLOAD_CLASSIFIED: self._classified,
            Ev.SERVER_STOPPED: self._server_ended,
            Ev.SERVER_FAILED: self._server_ended,
        }

    # A call's operation and model come with its ``call.completed`` (issue 23: the profiler no
    # longer reads every ``call.received``); only the model calls (dispatched to a server) count.
    def _dispatched(self, e: Event) -> None:
        s = self.servers.get(e["server"])
        if s is not None:
            self.calls[e["call"]] = e["server"]
            s.open[e["call"]] = e["t"]

    def _call_completed(self, e: Event) -> None:
        server = self.calls.pop(e["call"], None)
        if server is not None and e.get("op") in EVAL_OPS:
            self._completed(server, e)

    def _call_ended(self, e: Event) -> None:
        """A requeued call leaves its server (and comes back dispatched); a failed one is over."""
        server = self.calls.pop(e["call"], None)
        if server is not None and server in self.servers:
            self._span(self.servers[server], e, done=False)

    def _requested(self, e: Event) -> None:
        if e.get("spec") in self.specs:
            requested = e["m"] if e["ev"] == Ev.SERVER_REQUESTED else None
            self.servers[e["server"]] = _Server(e["spec"], requested)

    def _classified(self, e: Event) -> None:
        if e.get("spec") in self.specs and isinstance(e.get("counters"), dict):
            f = self._spec(e["spec"])
            f["workload"] = dict(e["counters"])  # the run's busy-sample sums so far (workload.py)
            if e.get("cls"):
                f["workload_class"] = e["cls"]

    def _server_ended(self, e: Event) -> None:
        s = self.servers.pop(e["server"], None)
        if s is not None and s.ready_m is not None:
            f = self._spec(s.spec)
            f["lifetime_max"] = max(f.get("lifetime_max", 0.0), e["m"] - s.ready_m)
            f["wall_s"] += e["m"] - (s.wall_mark or s.ready_m)

    def _spec(self, spec: str) -> dict[str, Any]:
        f = self.spec_figs.get(spec)
        if f is None:
            given = _given(self.specs[spec].resources)
            f = self.spec_figs[spec] = {
                "calls": 0, "servers": 0, "samples": 0, "busy_samples": 0, "cpu_s": 0.0,
                "cpu_s_window": 0.0, "calls_window": 0, "wall_s": 0.0, "util_sum_busy": 0.0,
                "iowait_sum": 0.0, "iowait_n": 0, "rss_peak_bytes": 0, "gpu_mem_peak_bytes": 0,
                "util_hist": {}, "startup_hist": {}, "resources": given,
                **{k: 0 for k in COUNTERS},
            }  # fmt: skip
        return f

    def _ready(self, e: Event) -> None:
        s = self.servers.get(e["server"])
        if s is None:
            return
        s.ready_m = s.wall_mark = e["m"]
        f = self._spec(s.spec)
        f["servers"] += 1
        if s.requested_m is not None:
            took = e["m"] - s.requested_m
            b = log_bin(took)
            f["startup_hist"][b] = f["startup_hist"].get(b, 0) + 1
            f["startup_max"] = max(f.get("startup_max", 0.0), took)

    def _completed(self, server: str, e: Event) -> None:
        s = self.servers.get(server)
        service = e.get("service_s")
        if s is None or service is None:
            return
        self._span(s, e, done=True)
        key = (s.spec, e.get("model") or "?", e["op"])
        figs = self._op_figs.get(key)
        if figs is None:
            figs = self._op_figs[key] = self._new_op(*key)
        f, m, o = figs
        f["calls"] += 1
        m["calls"] += 1
        o["n"] += 1
        o["sum_s"] += service
        if service > o["max"]:
            o["max"] = service
        b = math.floor(math.log(service if service > 1e-6 else 1e-6) * INV_LOG_BASE)  # histogram.log_bin
        hist = o["hist"]
        hist[b] = hist.get(b, 0) + 1

    def _new_op(self, spec: str, model: str, op: str) -> tuple[dict[str, Any], ...]:
        """The spec's, the model's and the operation's figures, looked up once per kind of call."""
        m = self.model_figs.get((spec, model))
        if m is None:
            m = self.model_figs[(spec, model)] = {"calls": 0, "ops": {}}
        o = m["ops"].setdefault(op, {"n": 0, "sum_s": 0.0, "max": 0.0, "hist": {}})
        return self._spec(spec), m, o

    @staticmethod
    def _span(s: _Server, e: Event, done: bool) -> None:
        start = s.open.pop(e["call"], None)
        if start is not None:
            if len(s.spans) >= MAX_SPANS:  # no usage samples come (monitoring off): bounded anyway
                s.spans.popleft()
            s.spans.append((start, e["t"], done))

    def _usage(self, e: Event) -> None:
        s = self.servers.get(e.get("server", ""))
        if s is None:
            if e.get("spec") not in self.specs:
                return
            s = self.servers[e["server"]] = _Server(e["spec"])  # e.g. adopted before we saw it
        f = self._spec(s.spec)
        f["samples"] += 1
        cpu = float(e.get("cpu_s") or 0.0)
        last = s.sampled or {}
        grew = cpu - last.get("cpu_s", 0.0)
        f["cpu_s"] += grew
        st = float(e.get("sample_t") or e["t"])
        lo = st - float(e.get("interval_s") or 0.0)
        busy = any(t0 <= st for t0 in s.open.values()) or any(t1 >= lo and t0 <= st for t0, t1, _ in s.spans)
        done = 0
        while s.spans and s.spans[0][1] <= st:  # calls that ended by this sample: its interval's
            done += s.spans.popleft()[2]
        if s.sampled is not None:
            f["cpu_s_window"] += grew
            f["calls_window"] += done
        for k in COUNTERS:
            if e.get(k) is not None:
                f[k] += e[k] - last.get(k, 0)
        if busy:
            util = float(e.get("cpu_util") or 0.0)
            f["busy_samples"] += 1
            f["util_sum_busy"] += util
            b = util_bin(util)
            f["util_hist"][b] = f["util_hist"].get(b, 0) + 1
        rss = max(e.get("rss_peak_bytes") or 0, e.get("rss_bytes") or 0)
        if rss > f["rss_peak_bytes"]:
            f["rss_peak_bytes"] = rss
        gpu = sum(g.get("mem_used_bytes") or 0 for g in e.get("gpus") or ())
        if gpu > f["gpu_mem_peak_bytes"]:
            f["gpu_mem_peak_bytes"] = gpu
        node = e.get("node") or {}
        if node.get("iowait_pct") is not None:
            f["iowait_sum"] += node["iowait_pct"]
            f["iowait_n"] += 1
        s.sampled = {"cpu_s": cpu, **{k: e.get(k) or 0 for k in COUNTERS}}
        if f["samples"] >= self.settings.mismatch_samples:
            self._check(s.spec, f)

    # -- mismatch ----------------------------------------------------------------------------------
    def _check(self, spec: str, f: dict[str, Any]) -> None:
        """Given against used, once per run per spec and resource (``profile.mismatch``)."""
        res = self.specs[spec].resources
        found = []
        if (spec, "cpus") not in self.mismatches and f["busy_samples"] >= self.settings.mismatch_samples:
            found.append(cpu_advice(res.cpus, f))
        if (spec, "memory") not in self.mismatches and res.memory and f["rss_peak_bytes"] > 0:
            found.append(memory_advice(res.memory, f, self.settings.memory_headroom))
        for a in found:
            if a is not None:
                self._mismatch(spec, a.resource, a.given, a.used, a.text)

    def _mismatch(self, spec: str, resource: str, given: Any, used: Any, advice: str) -> None:
        name = self.names.get(spec, spec)
        doc = {"spec": name, "resource": resource, "given": given, "used": used, "advice": advice}
        self.mismatches[(spec, resource)] = doc
        self.bus.emit(Ev.PROFILE_MISMATCH, **doc)

    def status(self) -> dict[str, Any]:
        """For ``/api/status``: the run's mismatch advice and the store's flushes."""
        return {
            "mismatches": list(self.mismatches.values()),
            "flushes": self.flushes,
            "error": self.error,
            "path": str(self.store.path),
        }

    # -- flushing ----------------------------------------------------------------------------------
    def snapshot(self, now_m: float) -> tuple[dict[tuple[str, str, str], dict[str, Any]], set[Any]]:
        """What this run added since the last snapshot, per store row, and which rows are new."""
        for s in self.servers.values():  # wall time of servers still alive, up to now
            if s.wall_mark is not None and s.ready_m is not None:
                f = self._spec(s.spec)
                f["wall_s"] += now_m - s.wall_mark
                f["lifetime_max"] = max(f.get("lifetime_max", 0.0), now_m - s.ready_m)
                s.wall_mark = now_m
        now: dict[tuple[str, str, str], dict[str, Any]] = {}
        names = self.names
        for spec, f in self.spec_figs.items():
            now[(names.get(spec, spec), self.hashes[spec], SPEC_ROW)] = f
        for (spec, model), f in self.model_figs.items():
            now[(names.get(spec, spec), self.hashes[spec], model)] = f
        # A deep copy, through JSON: its keys are the row keys joined.
        copied: dict[str, dict[str, Any]] = json.loads(json.dumps({"\0".join(k): v for k, v in now.items()}))
        out: dict[tuple[str, str, str], dict[str, Any]] = {}
        new: set[Any] = set()
        for joined, figs in copied.items():
            spec, spec_hash, model = joined.split("\0")
            key = (spec, spec_hash, model)
            before = self._flushed.get(key)
            d = delta(figs, before or {})
            if before is None:
                new.add(key)
            if d or before is None:
                out[key] = d
            self._flushed[key] = figs
        return out, new

    async def flush(self) -> None:
        rows, new = self.snapshot(asyncio.get_running_loop().time())
        if not rows:
            return
        try:
            await asyncio.to_thread(self.store.add, rows, new)
            self.flushes += 1
        except Exception as exc:  # a full disk loses a flush, never the run
            self.error = f"{type(exc).__name__}: {exc}"
            self.bus.emit(Ev.BALANCER_ERROR, where="profiles", error=self.error, count=1)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_s)
            await self.flush()

    async def close(self) -> None:
        """The last flush (at shutdown, after the servers stopped), then the store is closed."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await asyncio.to_thread(self.store.close)


def open_profiler(cfg: Any, bus: EventBus) -> Profiler | None:
    """The profiler on the bus, its store open; None with ``[profiles]`` off. A store that cannot be
    opened is journaled, and the run goes on without profiles."""
    if not cfg.profiles.enabled:
        return None
    try:
        store = open_store(cfg.profiles)
    except Exception as exc:  # sqlite3.Error, OSError: a read-only home must not stop the balancer
        bus.emit(Ev.BALANCER_ERROR, where="profiles", error=f"{type(exc).__name__}: {exc}", count=1)
        return None
    profiler = Profiler(cfg, bus, store)
    bus.subscribe(profiler, only=EVENTS)
    return profiler
