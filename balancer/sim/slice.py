"""A slice of a real trace, time-compressed, as one plan both the live replay (``sim/live.py``,
``bench/live_replay.py``) and the simulator run: the same jobs, sizes, run times and limits.

Compression ``c`` divides every time: a job submitted ``s`` trace seconds into the slice is
submitted at ``s / c``; it runs ``min(run, request) / c`` (the simulator's default ``overrun="cap"``)
as a sleep job of its size, capped at the cluster's CPUs. Its limit is SLURM's ``--time``, which has
whole minutes only: ``request / c`` is rounded *up* to a minute, at least one. That is the one
deviation from the trace (EASY plans with the longer limits; a sleep never reaches its limit), and
the simulator is given the rounded limits too, so live and simulated schedulers plan alike.

The slice starts ``warmup_s`` (trace seconds) before the campaign, so the cluster holds the trace's
load when the campaign begins; time 0 of the plan is the slice's start. With ``carry_in`` the jobs
the trace records as running or queued at that moment come first, all at time 0 (a running one with
what it had left), so the machine starts as loaded as it was rather than empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from balancer.capacity.swf import SwfTrace

SLURM_MINUTE_S = 60.0  # --time granularity


@dataclass(frozen=True)
class Slice:
    """The planned jobs in submit order (times in compressed seconds from the slice's start)."""

    source: str  # the trace's path
    machine_cpus: int  # the trace machine's size
    cluster_cpus: int  # the cluster replayed onto (job sizes capped at it)
    compression: float
    start_s: float  # trace seconds: the campaign's start
    warmup_s: float  # trace seconds of load before it
    span_s: float  # trace seconds after it
    unix_start: float  # the trace's epoch
    index: np.ndarray  # each job's row in the trace
    submit: np.ndarray
    run: np.ndarray  # the sleep
    limit: np.ndarray  # --time, whole minutes in seconds
    limit_exact: np.ndarray  # request / c before rounding
    cpus: np.ndarray
    users: np.ndarray
    capped: int  # jobs whose size was capped at the cluster
    carried: int = 0  # the first ones: running or queued when the slice starts (``carry_in``)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def campaign_start(self) -> float:
        """When the campaign starts, compressed seconds from the slice's start."""
        return self.warmup_s / self.compression

    @property
    def length(self) -> float:
        """The slice's submission window, compressed seconds."""
        return (self.warmup_s + self.span_s) / self.compression

    @property
    def limits_raised(self) -> int:
        """Jobs whose limit the rounding to minutes raised by more than a second."""
        return int((self.limit - self.limit_exact > 1.0).sum())


def compressed_limit(req_s: np.ndarray, compression: float) -> np.ndarray:
    """``req / c`` rounded up to whole minutes, at least one: what ``--time`` can say."""
    x = np.asarray(req_s, dtype=np.float64) / compression
    return np.maximum(1.0, np.ceil(x / SLURM_MINUTE_S - 1e-9)) * SLURM_MINUTE_S


def plan_slice(
    trace: SwfTrace,
    start_s: float,
    span_s: float,
    compression: float,
    cluster_cpus: int | None = None,
    warmup_s: float = 0.0,
    carry_in: bool = False,
) -> Slice:
    """The trace's jobs submitted in ``[start_s - warmup_s, start_s + span_s)``, compressed.

    ``carry_in``: also the jobs the trace records as running or queued when the slice starts
    (submitted before it, ending after it), submitted at time 0 in the order they started, a running
    one with what it had left of its run and its request: the machine as loaded as it was."""
    if not compression > 0 or not math.isfinite(compression):
        raise ValueError(f"the compression must be > 0, got {compression}")
    if not span_s > 0 or not warmup_s >= 0:
        raise ValueError("the slice's span must be > 0 and its warm-up >= 0")
    cluster = int(cluster_cpus or trace.max_procs)
    if cluster < 1:
        raise ValueError(f"the cluster needs at least 1 CPU, got {cluster}")
    j = trace.jobs
    last = float(j["submit"].max())
    if not 0 <= start_s - warmup_s <= last:
        raise ValueError(f"the slice starts outside the trace (0 .. {last:.0f} s)")
    procs = np.minimum(trace.procs, trace.max_procs)
    t0 = start_s - warmup_s
    run_all = np.maximum(j["run"], 0.0)
    req_all = np.where(j["req_time"] > 0, j["req_time"], run_all)
    run_all = np.minimum(run_all, req_all)  # killed at its request, as the simulator's default "cap"
    began = j["submit"] + np.maximum(j["wait"], 0.0)  # as recorded
    carried = np.zeros(0, dtype=int)
    if carry_in:
        live = (j["submit"] < t0) & (j["wait"] >= 0) & (began + run_all > t0) & (procs > 0)
        carried = np.flatnonzero(live)
        carried = carried[np.argsort(began[carried], kind="stable")]
    keep = (j["submit"] >= t0) & (j["submit"] < start_s + span_s) & (procs > 0)
    new = np.flatnonzero(keep)
    new = new[np.argsort(j["submit"][new], kind="stable")]
    idx = np.concatenate([carried, new]).astype(int)
    done = np.concatenate([np.maximum(0.0, t0 - began[carried]), np.zeros(len(new))])  # ran before t0
    run = run_all[idx] - done
    req = req_all[idx] - done
    sub = np.concatenate([np.zeros(len(carried)), j["submit"][new] - t0])
    size = procs[idx].astype(int)
    return Slice(
        source=str(trace.path),
        machine_cpus=int(trace.max_procs),
        cluster_cpus=cluster,
        compression=float(compression),
        start_s=float(start_s),
        warmup_s=float(warmup_s),
        span_s=float(span_s),
        unix_start=float(trace.unix_start),
        index=idx,
        submit=sub / compression,
        run=run / compression,
        limit=compressed_limit(np.maximum(req, 1.0), compression),
        limit_exact=np.maximum(req, 1.0) / compression,
        cpus=np.minimum(size, cluster),
        users=j["user"][idx].astype(int),
        capped=int((size > cluster).sum()),
        carried=len(carried),
    )


def as_trace(sl: Slice) -> SwfTrace:
    """The slice as a trace of its own (compressed seconds, the cluster's CPUs): the simulator's
    input, so it replays exactly what the live cluster was given."""
    n = len(sl)
    unknown = np.full(n, -1.0)
    jobs = {
        "id": np.arange(1, n + 1, dtype=np.float64),
        "submit": np.asarray(sl.submit, dtype=np.float64),
        "wait": unknown,
        "run": np.asarray(sl.run, dtype=np.float64),
        "procs": np.asarray(sl.cpus, dtype=np.float64),
        "req_procs": np.asarray(sl.cpus, dtype=np.float64),
        "req_time": np.asarray(sl.limit, dtype=np.float64),
        "status": np.ones(n),
        "user": np.asarray(sl.users, dtype=np.float64),
    }
    epoch = sl.unix_start + sl.start_s - sl.warmup_s
    return SwfTrace(f"{sl.source} (slice)", sl.cluster_cpus, epoch, 0.0, jobs)


def swf_lines(sl: Slice) -> list[str]:
    """The slice in SWF (18 fields a line, header first): ``balancer simulate --trace`` reads it."""
    head = [
        f"; sliced from {sl.source}: trace seconds {sl.start_s - sl.warmup_s:.0f} ..",
        f";   {sl.start_s + sl.span_s:.0f}, compressed {sl.compression:g}x, limits rounded up to minutes",
        f"; MaxProcs: {sl.cluster_cpus}",
        f"; UnixStartTime: {int(sl.unix_start + sl.start_s - sl.warmup_s)}",
    ]
    rows = []
    for i in range(len(sl)):
        f = [i + 1, f"{sl.submit[i]:.3f}", -1, f"{sl.run[i]:.3f}", int(sl.cpus[i]), -1, -1, int(sl.cpus[i])]
        f += [f"{sl.limit[i]:.0f}", -1, 1, int(sl.users[i]), -1, -1, -1, -1, -1, -1]
        rows.append(" ".join(str(x) for x in f))
    return head + rows


def sbatch_argv(sl: Slice, i: int, partition: str, name: str, chdir: str) -> list[str]:
    """``sbatch`` for planned job ``i``: a sleep of its run time, its size as tasks, its limit."""
    return [
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        f"--partition={partition}",
        f"--ntasks={int(sl.cpus[i])}",
        f"--time={int(sl.limit[i] // SLURM_MINUTE_S)}",
        f"--chdir={chdir}",
        "--output=/dev/null",
        f"--wrap=sleep {sl.run[i]:.3f}",
    ]
