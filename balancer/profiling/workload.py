"""Workload class of a model from the launcher's measured counters: cpu, memory, io or wait.

The class says what a model's servers spend their busy time on, so the balancer can use it: the
local backend never runs more CPU-bound servers than the machine has cores (each one pinned to
its own), and an operator reads from ``balancer analyze`` why a model scales the way it does.

``classify`` is a pure function over a plain dict of counters summed over the samples taken while a
server had calls (``Counters``), so a profile store can keep the counters and re-classify later.
``UsageAggregator`` is the bus subscriber that builds those counters from ``server.usage`` events
per spec and journals ``workload.classified`` when a verdict first becomes confident and whenever
it changes. The thresholds (README, "Workload classes") were set on the example models in
``models/`` and are deliberately coarse: each verdict names the figure that decided it.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from balancer.observe.events import Ev, EventBus

CLASSES: Final = ("cpu", "memory", "io", "wait")

# Thresholds, per busy call slot (a server with 2 calls running may use 2 cores and still wait).
# "CPU demand" is the cores a busy slot used over the node's fair share of a core per runnable task
# (cpus / load1, at most 1): a spinner that got 0.35 cores on a node with 6 runnable tasks per 2
# cores wanted a whole one.
MIN_SAMPLES: Final = 3  # busy samples before any verdict: one sample may be a start-up burst
BUSY_MIN: Final = 0.5  # a sample counts when its server had calls running at least half its interval
CPU_BUSY: Final = 0.7  # cores per busy slot at or above: the slot computes (cpu or memory)
WAIT_IDLE: Final = 0.2  # cores per busy slot below: the slot sleeps (wait, unless it does io)
IO_MB_S: Final = 5.0  # MB/s read+written (storage layer) per busy slot at or above: io ...
IO_CPU_MAX: Final = 0.7  # ... when the slot's CPU stays below this (else copying is computing)
IO_MB_S_ANY: Final = 100.0  # ... or this much io whatever the CPU
IOWAIT_PCT: Final = 20.0  # the node's iowait % at or above, with a slot below CPU_BUSY: io
MEM_CPU_MIN: Final = 0.35  # CPU demand per busy slot at or above (busy enough to compute), with ...
MEM_RSS_MB: Final = 256.0  # ... a peak RSS at or above this (bandwidth is not in the counters) ...
MEM_FAULTS_S: Final = 20000.0  # ... or this many minor page faults/s (80 MB/s of fresh pages): memory
CPU_CONTENDED: Final = 0.35  # cores per busy slot at or above, with ...
PREEMPTED: Final = 0.3  # ... this share of its context switches involuntary: cpu (it wanted more)


@dataclass
class Counters:
    """Sums over a spec's busy samples (a server with calls during the sample interval)."""

    samples: int = 0
    busy_s: float = 0.0  # summed interval_s of those samples (server-seconds)
    slot_s: float = 0.0  # summed interval_s x calls running (call-slot-seconds)
    cpu_s: float = 0.0
    io_bytes: float = 0.0
    ctx_vol: float = 0.0
    ctx_invol: float = 0.0
    minflt: float = 0.0
    majflt: float = 0.0
    iowait_pct_s: float = 0.0  # node iowait % x interval
    share_s: float = 0.0  # the node's fair CPU share per runnable task (cpus / load1, at most 1) x interval
    rss_peak_bytes: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass(frozen=True)
class Verdict:
    cls: str | None  # one of CLASSES, None: not enough samples yet
    figures: dict[str, float]
    why: str
    confident: bool = True  # False: a figure lies near a threshold


def figures_of(c: dict[str, Any]) -> dict[str, float]:
    """The per-slot rates a verdict is based on, from a ``Counters`` dict."""
    slot_s = max(float(c.get("slot_s") or c.get("busy_s") or 0.0), 1e-9)
    busy_s = max(float(c.get("busy_s") or 0.0), 1e-9)
    ctx = float(c.get("ctx_vol", 0.0)) + float(c.get("ctx_invol", 0.0))
    cpu = float(c.get("cpu_s", 0.0)) / slot_s
    share = min(1.0, max(0.05, float(c["share_s"]) / busy_s)) if c.get("share_s") else 1.0
    return {
        "samples": int(c.get("samples", 0)),
        "busy_s": round(float(c.get("busy_s", 0.0)), 1),
        "cpu_per_slot": round(cpu, 3),
        "fair_share": round(share, 3),
        "cpu_demand": round(cpu / share, 3),  # what it got over what a task could get on that node
        "io_mb_s": round(float(c.get("io_bytes", 0.0)) / slot_s / 1e6, 3),
        "ctx_vol_s": round(float(c.get("ctx_vol", 0.0)) / slot_s, 1),
        "ctx_invol_s": round(float(c.get("ctx_invol", 0.0)) / slot_s, 1),
        "preempted": round(float(c.get("ctx_invol", 0.0)) / max(ctx, 1.0), 3),
        "minflt_s": round(float(c.get("minflt", 0.0)) / busy_s, 1),
        "majflt_s": round(float(c.get("majflt", 0.0)) / busy_s, 2),
        "iowait_pct": round(float(c.get("iowait_pct_s", 0.0)) / busy_s, 1),
        "rss_peak_mb": round(float(c.get("rss_peak_bytes", 0.0)) / 2**20, 1),
    }


def classify(counters: dict[str, Any]) -> Verdict:
    """The workload class from summed counters; pure. The rules go in order, the first that holds wins:
    io (storage traffic or iowait while the CPU idles), memory (a large or fault-heavy resident set
    while busy), cpu (a busy slot, or a half-busy one preempted often: it wants more than it gets on
    a full node), wait (the rest: the slot sleeps or waits on sockets)."""
    f = figures_of(counters)
    if f["samples"] < MIN_SAMPLES:
        return Verdict(None, f, f"{f['samples']} busy samples, {MIN_SAMPLES} needed", False)
    cpu, io = f["cpu_demand"], f["io_mb_s"]
    if (io >= IO_MB_S and cpu < IO_CPU_MAX) or io >= IO_MB_S_ANY:
        return Verdict("io", f, f"{io:g} MB/s of io per busy slot at CPU demand {cpu:g}", io >= 2 * IO_MB_S)
    if f["iowait_pct"] >= IOWAIT_PCT and cpu < CPU_BUSY:
        return Verdict("io", f, f"node iowait {f['iowait_pct']:g}% at CPU demand {cpu:g}", True)
    if cpu >= MEM_CPU_MIN and (f["rss_peak_mb"] >= MEM_RSS_MB or f["minflt_s"] >= MEM_FAULTS_S):
        why = f"peak RSS {f['rss_peak_mb']:g} MB, {f['minflt_s']:g} minor faults/s at CPU demand {cpu:g}"
        return Verdict("memory", f, why, True)
    if cpu >= CPU_BUSY:
        return Verdict("cpu", f, f"CPU demand {cpu:g} per busy slot (>= {CPU_BUSY})", True)
    if cpu >= CPU_CONTENDED and f["preempted"] >= PREEMPTED:
        why = f"CPU demand {cpu:g}, {f['preempted']:.0%} of its switches preempted: wants more"
        return Verdict("cpu", f, why, True)
    if cpu < WAIT_IDLE:
        return Verdict("wait", f, f"CPU demand {cpu:g} per busy slot (< {WAIT_IDLE}), {io:g} MB/s io", True)
    # Between the two: the larger share decides, flagged as not confident.
    cls = "cpu" if cpu >= (WAIT_IDLE + CPU_BUSY) / 2 else "wait"
    return Verdict(cls, f, f"CPU demand {cpu:g} per busy slot, between {WAIT_IDLE} and {CPU_BUSY}", False)


@dataclass
class _Last:
    cpu_s: float = 0.0
    io: float = 0.0
    ctx_vol: float = 0.0
    ctx_invol: float = 0.0
    minflt: float = 0.0
    majflt: float = 0.0


@dataclass
class SpecWorkload:
    counters: Counters = field(default_factory=Counters)
    verdict: Verdict | None = None
    prior: str | None = None


# every server: (id, calls answered, calls running, summed seconds of its answered calls)
Busy = Callable[[], Iterable[tuple[str, int, int, float]]]


class UsageAggregator:
    """Sums each spec's ``server.usage`` samples taken while the server had calls, and journals the
    verdict (``workload.classified``) once confident and on every change. One sample per server per
    monitor interval, never per call: its cost does not grow with the call rate.

    Samples arrive in batches with a launcher's lease poll, long after they were taken, so whether
    a server had calls is looked up at the sample's own time (``sample_t``) in a short history of
    the servers' call counters, snapshotted once per monitor interval (``start``)."""

    def __init__(self, bus: EventBus, busy: Busy, models: Callable[[str], list[str]]) -> None:
        self.bus = bus
        self.busy = busy
        self._models_of = models
        self.specs: dict[str, SpecWorkload] = {}
        self._old: set[str] = set()  # servers of a spec version a reload replaced (``forget``)
        self.latest: dict[str, dict[str, Any]] = {}  # server -> its last usage sample (GPU use)
        self._last: dict[str, _Last] = {}
        # server -> (wall time, calls answered, calls running, busy seconds) snapshots, oldest first
        self._hist: dict[str, deque[tuple[float, int, int, float]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._every = 0.0
        self._keep = 64

    def start(self, interval_s: float, lease_s: float = 30.0) -> None:
        """Snapshot the call counters every ``interval_s`` (0: the launchers do not sample)."""
        if interval_s <= 0:
            return
        self._every = max(0.05, interval_s / 2)
        self._keep = min(4000, int(lease_s / self._every) + 16)  # a lease poll's batch and more
        self.snapshot()

    def close(self) -> None:
        """Stop snapshotting; journal each spec's verdict over the whole run (``final``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for spec, w in self.specs.items():
            if w.verdict is not None and w.verdict.cls is not None:
                self._emit(spec, w, w.verdict, final=True)

    def models(self, spec: str) -> list[str]:
        """The spec's models, [] for one a reload removed (or any lookup that fails)."""
        try:
            return list(self._models_of(spec))
        except Exception:
            return []

    def forget(self, spec: str) -> None:
        """A reload changed what ``spec`` runs (command, environment, job script): its counters,
        verdict and prior so far were of the old version, so they go (``journal_priors`` for the
        new version sets the prior again); samples of the servers still running the old version are
        not counted from now on. Sync, cheap; no event."""
        self.specs.pop(spec, None)
        self._old.update(sid for sid, e in self.latest.items() if e.get("spec") == spec)

    def _emit(self, spec: str, w: SpecWorkload, v: Verdict, final: bool = False) -> None:
        self.bus.emit(
            Ev.WORKLOAD_CLASSIFIED, spec=spec, models=self.models(spec), cls=v.cls, figures=v.figures,
            why=v.why, confident=v.confident, prior=w.prior, counters=w.counters.as_dict(), final=final,
        )  # fmt: skip

    def snapshot(self) -> None:
        now = time.time()
        live = set()
        for sid, calls, running, busy_s in self.busy():
            live.add(sid)
            h = self._hist.get(sid)
            if h is None:
                h = self._hist[sid] = deque(maxlen=self._keep)
            h.append((now, calls, running, busy_s))
        for sid in [k for k in self._hist if k not in live and k not in self.latest]:
            del self._hist[sid]
        if self._every:
            self._timer = asyncio.get_running_loop().call_later(self._every, self.snapshot)

    def busy_at(self, sid: str, start: float, end: float) -> float:
        """Call slots busy on average in the wall-clock window [start, end] (0: idle), from the
        snapshots around it: the answered calls' time over the span, or the calls running where
        one ran through the whole span (a long call answers nothing meanwhile)."""
        h = self._hist.get(sid)
        if not h:
            return 0.0
        ts = [x[0] for x in h]
        i = max(0, bisect.bisect_right(ts, start) - 1)  # the last snapshot at or before the window
        j = min(len(h) - 1, bisect.bisect_left(ts, end))  # the first at or after it
        if h[j][0] < start or j <= i:
            return 0.0  # no snapshot brackets the window yet
        runs = [h[k][2] for k in range(i, j + 1)]
        if min(runs) > 0:
            return float(min(runs))
        span = h[j][0] - h[i][0]
        return min(float(max(1, max(runs))), (h[j][3] - h[i][3]) / span) if span > 0 else 0.0

    def set_prior(self, spec: str, cls: str | None) -> None:
        self.specs.setdefault(spec, SpecWorkload()).prior = cls

    def current(self, spec: str) -> str | None:
        """The measured class, else the prior from the source, else None."""
        w = self.specs.get(spec)
        if w is None:
            return None
        if w.verdict is not None and w.verdict.cls is not None:
            return w.verdict.cls
        return w.prior

    def view(self, spec: str) -> dict[str, Any] | None:
        w = self.specs.get(spec)
        if w is None:
            return None
        v = w.verdict
        return {
            "class": self.current(spec),
            "source": "measured" if v is not None and v.cls else ("prior" if w.prior else None),
            "prior": w.prior,
            "figures": v.figures if v is not None else None,
            "why": v.why if v is not None else None,
        }

    # The events it reads (subscribe with ``only=EVENTS``): no call's events reach it.
    EVENTS = frozenset({Ev.SERVER_USAGE, Ev.SERVER_STOPPED, Ev.SERVER_FAILED})

    def __call__(self, e: dict[str, Any]) -> None:
        ev = e["ev"]
        if ev == Ev.SERVER_USAGE:
            self._sample(e)
        elif ev in (Ev.SERVER_STOPPED, Ev.SERVER_FAILED):
            self._last.pop(e.get("server", ""), None)
            self.latest.pop(e.get("server", ""), None)
            self._old.discard(e.get("server", ""))

    def _sample(self, e: dict[str, Any]) -> None:
        sid, spec = e.get("server"), e.get("spec")
        if not isinstance(sid, str) or not isinstance(spec, str):
            return
        self.latest[sid] = e
        io = float(e.get("io_read_bytes") or 0) + float(e.get("io_write_bytes") or 0)
        now = _Last(
            float(e.get("cpu_s") or 0.0), io, float(e.get("ctx_vol") or 0), float(e.get("ctx_invol") or 0),
            float(e.get("minflt") or 0), float(e.get("majflt") or 0),
        )  # fmt: skip
        dt = float(e.get("interval_s") or 0.0)
        end = float(e.get("sample_t") or e["t"])
        running = self.busy_at(sid, end - dt, end)
        last = self._last.get(sid)
        self._last[sid] = now
        if last is None or running < BUSY_MIN or sid in self._old:
            return  # the first sample has no deltas; a (mostly) idle interval says nothing of the model
        w = self.specs.setdefault(spec, SpecWorkload())
        c = w.counters
        c.samples += 1
        c.busy_s += dt
        c.slot_s += dt * running
        c.cpu_s += max(0.0, now.cpu_s - last.cpu_s)
        c.io_bytes += max(0.0, now.io - last.io)
        c.ctx_vol += max(0.0, now.ctx_vol - last.ctx_vol)
        c.ctx_invol += max(0.0, now.ctx_invol - last.ctx_invol)
        c.minflt += max(0.0, now.minflt - last.minflt)
        c.majflt += max(0.0, now.majflt - last.majflt)
        node = e.get("node") or {}
        c.iowait_pct_s += float(node.get("iowait_pct") or 0.0) * dt
        cpus, load = float(node.get("cpus") or 0), float(node.get("load1") or 0)
        c.share_s += (min(1.0, cpus / load) if cpus > 0 and load > 0 else 1.0) * dt
        c.rss_peak_bytes = max(c.rss_peak_bytes, float(e.get("rss_peak_bytes") or e.get("rss_bytes") or 0))
        v = classify(c.as_dict())
        if v.cls is None:
            return
        if w.verdict is None or w.verdict.cls != v.cls:
            self._emit(spec, w, v)
        w.verdict = v


async def journal_priors(
    specs: Iterable[Any], bus: EventBus, agg: UsageAggregator, store: Any = None
) -> None:
    """The prior of every spec, journaled as ``workload.prior`` before the first start, so the local
    backend already pins a model that looks CPU-bound: the class its profile's counters give (earlier
    runs measured it: ``profiling.store`` keeps them), else the guess from its Python source. Both read
    files, off the event loop. A reload calls it again for its new and changed specs only: each
    call sets the priors of the specs it is given and touches no other."""
    from balancer.profiling.prior import as_fields, prior_of

    for spec in specs:
        fields = await asyncio.to_thread(_profile_prior, store, spec) if store is not None else None
        if fields is None:
            fields = {**as_fields(await asyncio.to_thread(prior_of, spec.server_command(), spec.cwd)),
                      "source": "source"}  # fmt: skip
        agg.set_prior(spec.name, fields["cls"])
        bus.emit(Ev.WORKLOAD_PRIOR, spec=spec.name, models=list(spec.models), **fields)


def _profile_prior(store: Any, spec: Any) -> dict[str, Any] | None:
    """The class of the spec's profile (its summed busy-sample counters), None without one."""
    try:
        from balancer.profiling.store import spec_hash

        figures = store.spec_figures(spec.name, spec_hash(spec))
    except Exception:  # a store that cannot be read: the source prior will do
        return None
    counters = (figures or {}).get("workload")
    if not counters:
        return None
    v = classify(counters)
    if v.cls is None:
        return None
    return {"cls": v.cls, "counts": {}, "script": None, "why": f"profile of earlier runs: {v.why}",
            "source": "profile"}  # fmt: skip
