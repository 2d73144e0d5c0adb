"""A trace slice (``sim/slice.py``) replayed onto a real SLURM controller, and the simulator's
yardsticks computed from what SLURM recorded, by the same functions (``sim/yardsticks.py``).

``replay`` submits each planned job with ``sbatch`` at its compressed submit time (asyncio
subprocesses; any ``SLURM_CONF`` in ``env``: one node or many) while ``Poller`` watches every job
with ``squeue``. When a run is over, ``read_jobcomp`` reads SLURM's completion log (``jobcomp/filetxt``:
whole seconds) and ``records`` merges both into one start and end per job, to the poll's precision
where it saw the job and to SLURM's whole second where it did not (a job shorter than a poll).

``baseline`` turns a run of the slice alone into what the simulator's replay without us is (the trace
jobs' starts, the idle CPUs per slot); ``live_result`` turns a run with a campaign into a ``Result``,
so ``yardsticks.figures`` measures live and simulated runs with one definition.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from balancer.sim.run import Result
from balancer.sim.slice import Slice, sbatch_argv

TRACE_PREFIX = "trace-"  # the replayed jobs' names: trace-<plan index>
STARTED = frozenset({"RUNNING", "COMPLETING", "COMPLETED", "TIMEOUT", "PREEMPTED", "FAILED", "NODE_FAIL"})
OVER = frozenset(
    {"COMPLETED", "CANCELLED", "TIMEOUT", "PREEMPTED", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE"}
)


class ReplayError(RuntimeError):
    """The live replay could not submit or read a job, phrased for the user."""


@dataclass
class Job:
    """One job as SLURM ran it (Unix seconds; NaN: never)."""

    id: str
    name: str = ""
    partition: str = ""
    cpus: int = 0
    submit: float = math.nan
    start: float = math.nan
    end: float = math.nan
    state: str = ""


@dataclass
class Seen:
    """What the poller saw of one job: when it was first seen started, and first seen over."""

    name: str = ""
    partition: str = ""
    cpus: int = 0
    first_seen: float = math.nan
    started: float = math.nan
    over: float = math.nan
    state: str = ""


# -- submitting and watching ------------------------------------------------------------------------


async def _run(argv: list[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=dict(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def replay(
    sl: Slice, env: Mapping[str, str], t0: float, chdir: str, partition: str = "debug"
) -> dict[int, tuple[str, float]]:
    """Submit every planned job at ``t0 + submit`` (Unix seconds); plan index -> (job id, when
    ``sbatch`` was called). Jobs due at once go one after the other, as a user's script would."""
    out: dict[int, tuple[str, float]] = {}
    for i in range(len(sl)):
        delay = t0 + float(sl.submit[i]) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = time.time()
        rc, stdout, stderr = await _run(sbatch_argv(sl, i, partition, f"{TRACE_PREFIX}{i}", chdir), env)
        if rc != 0:
            raise ReplayError(f"sbatch of trace job {i} failed ({rc}): {stderr.strip()}")
        out[i] = (stdout.strip().split(";")[0], t)
    return out


SQUEUE_FMT = "%A|%i|%j|%T|%P|%C"  # %A: an array element's own job id, %i: base_index


class Poller:
    """Every job's first start and end as ``squeue -t all`` shows them, every ``every_s``."""

    def __init__(self, env: Mapping[str, str], every_s: float = 0.25, skip_earlier: bool = False) -> None:
        self.env = dict(env)
        self.skip_earlier = skip_earlier
        self.every_s = every_s
        self.seen: dict[str, Seen] = {}
        self.aliases: dict[str, str] = {}  # an array element's "base_index" -> its own job id
        self.polls = 0
        # With ``skip_earlier``: the jobs the first poll lists (squeue -t all keeps finished jobs for
        # MinJobAge), not this run's.
        self.earlier: set[str] = set()

    def update(self, text: str, now: float) -> None:
        """Fold one ``squeue -h -t all -o SQUEUE_FMT`` output seen at ``now`` into ``seen``."""
        listed = set()
        for line in text.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 6 or not parts[0]:
                continue
            jid, alias, name, state, part, cpus = parts
            if self.skip_earlier and self.polls == 0:
                self.earlier.add(jid)
            if jid in self.earlier:
                continue
            listed.add(jid)
            if alias != jid:
                self.aliases[alias] = jid
            s = self.seen.setdefault(jid, Seen(name, part, 0, now))
            s.state = state
            if cpus.isdigit():
                s.cpus = max(s.cpus, int(cpus))
            if state in STARTED and math.isnan(s.started):
                s.started = now
            if state in OVER and math.isnan(s.over):
                s.over = now
        for jid, s in self.seen.items():  # forgotten by slurmctld: over by now
            if jid not in listed and math.isnan(s.over):
                s.over = now
        self.polls += 1

    async def poll_once(self) -> None:
        rc, out, _ = await _run(["squeue", "-h", "-t", "all", "-o", SQUEUE_FMT], self.env)
        if rc == 0:
            self.update(out, time.time())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            try:
                await asyncio.wait_for(stop.wait(), self.every_s)
            except asyncio.TimeoutError:
                pass


# -- what SLURM recorded ----------------------------------------------------------------------------


def _when(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()  # local time, as slurmctld writes it
    except ValueError:
        return math.nan


def read_jobcomp(path: str | Path, ids: Iterable[str] | None = None) -> dict[str, Job]:
    """``jobcomp/filetxt`` lines (``JobId=.. Name=.. JobState=.. StartTime=..``): id -> ``Job``;
    a job that never ran (``NodeCnt=0``) has no start. Only ``ids`` where given."""
    want = None if ids is None else set(ids)
    out: dict[str, Job] = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise ReplayError(f"cannot read SLURM's job completion log {path}: {exc.strerror or exc}") from None
    for line in text.splitlines():
        kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
        jid = kv.get("JobId", "")
        if not jid or (want is not None and jid not in want):
            continue
        ran = kv.get("NodeCnt", "0") not in ("0", "")
        out[jid] = Job(
            jid,
            kv.get("Name", ""),
            kv.get("Partition", ""),
            int(kv.get("ProcCnt", "0") or 0),
            _when(kv.get("SubmitTime", "")),
            _when(kv.get("StartTime", "")) if ran else math.nan,
            _when(kv.get("EndTime", "")),
            kv.get("JobState", ""),
        )
    return out


def _within(poll: float, whole: float, half: float) -> float:
    """The poll's time (less half a poll) where it fits SLURM's whole second, else that second's middle."""
    if math.isnan(whole):
        return poll - half if not math.isnan(poll) else math.nan
    if math.isnan(poll):
        return whole + 0.5
    return min(max(poll - half, whole), whole + 1.0)


def records(seen: Mapping[str, Seen], comp: Mapping[str, Job], poll_s: float) -> dict[str, Job]:
    """One ``Job`` per id from the poller and the completion log: starts and ends to the poll's
    precision, held within SLURM's own whole second."""
    out: dict[str, Job] = {}
    half = poll_s / 2
    for jid in set(seen) | set(comp):
        s, c = seen.get(jid), comp.get(jid)
        j = Job(jid)
        if c is not None:
            j = Job(jid, c.name, c.partition, c.cpus, c.submit, c.start, c.end, c.state)
        if s is not None:
            j.name = j.name or s.name
            j.partition = j.partition or s.partition
            j.cpus = j.cpus or s.cpus
            j.state = j.state or s.state
            ran = c is None or not math.isnan(c.start)
            j.start = _within(s.started, c.start if c else math.nan, half) if ran else math.nan
            j.end = _within(s.over, c.end if c else math.nan, half)
            if math.isnan(j.submit):
                j.submit = s.first_seen
        out[jid] = j
    return out


# -- the yardsticks' inputs -------------------------------------------------------------------------


@dataclass
class Baseline:
    """A live run of the slice alone, in the shape ``yardsticks`` reads a ``Replay`` (times in
    seconds from the run's start)."""

    submit: np.ndarray
    start: np.ndarray
    run: np.ndarray
    cpus: np.ndarray
    idle: np.ndarray  # mean idle CPUs per slot from 0
    step_s: float
    preempt_grace_s: float
    procs: int


def trace_jobs(
    sl: Slice, jobs: Mapping[str, Job], ids: Mapping[int, tuple[str, float]], t0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per planned job: start and actual run (NaN where it never started), from the run's ``t0``."""
    n = len(sl)
    start, run = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        jid = ids.get(i, ("", 0.0))[0]
        j = jobs.get(jid)
        if j is not None and not math.isnan(j.start):
            start[i] = j.start - t0
            # Still running when the run was cut (cancelled then, or not over): as planned, which a
            # sleep job keeps to the poll's precision.
            cut = math.isnan(j.end) or j.state == "CANCELLED"
            run[i] = float(sl.run[i]) if cut else max(0.0, j.end - j.start)
    return start, run


def busy_series(intervals: Iterable[tuple[float, float, int]], step_s: float, slots: int) -> np.ndarray:
    """CPU-seconds held per slot of ``step_s`` from 0 by jobs running ``(start, end, cpus)``."""
    area = np.zeros(slots)
    for a, b, c in intervals:
        if math.isnan(a) or math.isnan(b) or b <= a:
            continue
        k = int(a // step_s)
        while a < b and k < slots:
            seg = min(b, (k + 1) * step_s)
            if k >= 0:
                area[k] += (seg - a) * c
            a = seg
            k += 1
    return area


def baseline(
    sl: Slice,
    jobs: Mapping[str, Job],
    ids: Mapping[int, tuple[str, float]],
    t0: float,
    step_s: float,
    grace_s: float,
    pad_s: float = 3600.0,
) -> Baseline:
    """The slice's live run without us: what harm and harvest are measured against."""
    start, run = trace_jobs(sl, jobs, ids, t0)
    ends = start + run
    last = float(np.nanmax(ends)) if np.isfinite(ends).any() else 0.0
    # Complete slots, and idle beyond the last trace job for as long as a campaign could run.
    slots = int((max(last, sl.length) + pad_s) // step_s)
    busy = busy_series(zip(start, ends, sl.cpus, strict=True), step_s, slots)
    idle = np.maximum(0.0, sl.cluster_cpus - busy / step_s)
    return Baseline(
        np.asarray(sl.submit, dtype=np.float64),
        start,
        run,
        np.asarray(sl.cpus, dtype=np.float64),
        idle,
        step_s,
        grace_s,
        sl.cluster_cpus,
    )


@dataclass
class Campaign:
    """What the live campaign did, as the client and the balancer's journal saw it."""

    start: float  # Unix seconds: the calls went out
    done: float  # the last answer
    compute_s: np.ndarray  # each call's compute time
    call_wait_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    calls_done: int = 0
    requeued: int = 0
    preempted: int = 0
    ready_after_start_s: dict[str, float] = field(default_factory=dict)  # job id -> start to ready


def harm_set(base: Baseline, start: float, window_s: float) -> np.ndarray:
    """``run.harm_set`` on a live baseline: queued at ``start`` or submitted within the window."""
    sub, st = base.submit, base.start
    return np.flatnonzero((sub < start + window_s) & ((sub >= start) | (st > start) | np.isnan(st)))


def live_result(
    policy: str,
    sl: Slice,
    base: Baseline,
    jobs: Mapping[str, Job],
    ids: Mapping[int, tuple[str, float]],
    t0: float,
    camp: Campaign,
    cpus: int,
    max_servers: int,
    startup_delay_s: float,
    window_s: float,
) -> Result:
    """A live run with a campaign as the simulator's ``Result``: our jobs are every job of the run
    that is not a trace job."""
    step = base.step_s
    cs = sl.campaign_start
    start, run = trace_jobs(sl, jobs, ids, t0)
    trace_ids = {v[0] for v in ids.values()}
    ours = [j for j in jobs.values() if j.id not in trace_ids and not j.name.startswith(TRACE_PREFIX)]
    done = camp.done - t0
    k0 = int(cs // step)
    last = max([done] + [j.end - t0 for j in ours if not math.isnan(j.end)])
    slots = int(last // step) + 1
    iv = [(j.start - t0, j.end - t0, j.cpus) for j in ours]
    area = busy_series(iv, step, slots)[k0:]
    # Pending allocations over the campaign: from submit to start (or to the end, never started).
    edges: list[tuple[float, int]] = []
    for j in ours:
        a = j.submit - t0
        b = (j.start if not math.isnan(j.start) else j.end) - t0
        if not math.isnan(a) and not math.isnan(b) and b > a:
            edges += [(a, 1), (b, -1)]
    edges.sort()
    n, pmax, parea, pt = 0, 0, 0.0, cs
    for t, d in edges:
        if t > cs:
            parea += n * max(0.0, min(t, done) - pt)
            pt = max(pt, min(t, done))
        n += d
        if cs <= t <= done or (t < cs and n > 0):
            pmax = max(pmax, n)
    parea += n * max(0.0, done - pt)
    started = [j for j in ours if not math.isnan(j.start)]
    held = sum((j.end - j.start) * j.cpus for j in started if not math.isnan(j.end))
    startup = sum(
        min(camp.ready_after_start_s.get(j.id, startup_delay_s), j.end - j.start) * j.cpus for j in started
    )
    hs = harm_set(base, cs, window_s)
    ok = hs[np.isfinite(start[hs]) & np.isfinite(base.start[hs])]
    busy_now = 0
    held_max = 0
    for _, d in sorted([(j.start, j.cpus) for j in started] + [(j.end, -j.cpus) for j in started]):
        busy_now += d
        held_max = max(held_max, busy_now // max(1, cpus))
    return Result(
        policy=policy,
        start=cs,
        makespan_s=camp.done - camp.start,
        work_s=float(camp.compute_s.sum()),
        cpus=cpus,
        max_servers=max_servers,
        startup_delay_s=startup_delay_s,
        step_s=step,
        call_wait_s=camp.call_wait_s,
        job_wait_s=np.asarray([j.start - j.submit for j in started]),
        jobs_submitted=len(ours),
        jobs_never_started=len(ours) - len(started),
        calls_done=camp.calls_done,
        calls_repeated=0,
        useful_cpu_s=float(camp.compute_s.sum()) * cpus,
        held_cpu_s=float(held),
        startup_cpu_s=float(startup),
        killed_cpu_s=0.0,
        pending_max=pmax,
        pending_mean=parea / max(1e-9, done - cs),
        beyond_max=0,
        held_max=held_max,
        serving_max=0,
        preempted=camp.preempted,
        requeued=camp.requeued,
        harm_jobs=ok,
        harm_start=start[ok],
        harm_cpus=np.asarray(sl.cpus, dtype=np.float64)[ok],
        harm_run=run[ok],
        ours_cpu_s=area,
    )
