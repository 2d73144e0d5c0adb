"""One campaign on the simulated cluster under one policy: ``simulate`` runs the campaign loop
(``loop.py``) from a snapshot of the replay without us, then lets the cluster run until every trace
job of the fixed harm set has started, and assembles the ``Result``.

``Result`` keeps what the yardsticks (``balancer.sim.yardsticks``) need, so every figure is a pure
function of a run's ``Result`` and the ``Replay`` it ran on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from balancer.config.schema import POLICIES
from balancer.sim.campaign import Campaign
from balancer.sim.cluster import Cluster
from balancer.sim.config import HARM_WINDOW_S, ON_NOTICE, SimConfig
from balancer.sim.forecasts import Learned
from balancer.sim.loop import Loop
from balancer.sim.replay import Replay

__all__ = ["HARM_WINDOW_S", "ON_NOTICE", "POLICIES", "Result", "SimConfig", "harm_set", "simulate"]


@dataclass
class Result:
    """What one policy did to one campaign, and what the cluster's own jobs saw meanwhile."""

    policy: str
    start: float
    makespan_s: float
    work_s: float  # the campaign's compute, server-seconds
    cpus: int
    max_servers: int
    startup_delay_s: float
    step_s: float
    call_wait_s: np.ndarray
    job_wait_s: np.ndarray  # our jobs that started
    jobs_submitted: int
    jobs_never_started: int
    calls_done: int  # distinct calls completed
    calls_repeated: int  # completions of a call already completed (must be 0)
    useful_cpu_s: float  # CPU-seconds of completed calls
    held_cpu_s: float  # CPU-seconds our jobs held
    startup_cpu_s: float  # of those: from each job's start to its server being ready
    killed_cpu_s: float  # of those: calls computed, then lost with their server's job
    pending_max: int
    pending_mean: float  # time-averaged over the campaign
    beyond_max: int  # most pending starts beyond what admission allowed at a tick
    held_max: int  # most servers holding CPUs at once (preempted ones in their grace time aside)
    serving_max: int  # most calls in service at once (on servers not preempted)
    preempted: int
    requeued: int
    harm_jobs: np.ndarray  # the fixed set of trace jobs harm is measured on (indices)
    harm_start: np.ndarray  # their start times in this run
    harm_cpus: np.ndarray
    harm_run: np.ndarray  # their run times as the cluster ran them
    ours_cpu_s: np.ndarray  # CPU-seconds our jobs held per grid slot, from the start's slot on
    timeline: dict[str, np.ndarray] = field(default_factory=dict)
    forecasts: list[tuple[float, np.ndarray]] = field(default_factory=list)


def harm_set(replay: Replay, start: float, window_s: float = HARM_WINDOW_S) -> np.ndarray:
    """The trace jobs harm is measured on, the same for every policy: those queued at ``start``
    (submitted before it, started after it in the replay without us) or submitted within
    ``window_s`` after it."""
    sub, st = replay.submit, replay.start
    return np.flatnonzero((sub < start + window_s) & ((sub >= start) | (st > start)))


def _source(policy: str, replay: Replay, c: Cluster, cfg: SimConfig) -> Learned | None:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    if policy == "demand":
        return None
    horizon = max(1, int(cfg.horizon_s // cfg.step_s))
    return Learned(cfg.forecaster, cfg.step_s, horizon, replay.trace.unix_start, c.procs)


def simulate(replay: Replay, start: float, campaign: Campaign, policy: str, cfg: SimConfig) -> Result:
    """Run ``campaign`` from ``start`` (a time ``replay`` has a snapshot of) under ``policy``."""
    if cfg.on_notice not in ON_NOTICE:
        raise ValueError(f"unknown on_notice {cfg.on_notice!r} (known: {', '.join(ON_NOTICE)})")
    c = replay.snapshots[start].clone()
    source = _source(policy, replay, c, cfg)
    sim = Loop(c, start, campaign, cfg, policy)
    sim.run(cfg.limits(policy), source)
    # The cost to the cluster's own jobs, on one fixed set: run until every one of them started.
    jobs = harm_set(replay, start, cfg.harm_window_s)
    while c.pending_trace_before(start + cfg.harm_window_s):
        c.step()
    ours = sorted(c.ours)
    started = [j for j in ours if not math.isnan(c.start[j])]
    held = sum((c.end[j] - c.start[j]) * c.cpus[j] for j in started)
    k0 = int((start - c.t0) // cfg.step_s)
    return Result(
        policy=policy,
        start=start,
        makespan_s=float(sim.done_at - start) if sim.done_at is not None else math.inf,
        work_s=campaign.work_s,
        cpus=cfg.cpus,
        max_servers=cfg.max_servers,
        startup_delay_s=cfg.startup_delay_s,
        step_s=cfg.step_s,
        call_wait_s=sim.wait,
        job_wait_s=np.asarray([c.start[j] - c.submit[j] for j in started]),
        jobs_submitted=len(ours),
        jobs_never_started=len(ours) - len(started),
        calls_done=int(sim.completed.sum()),
        calls_repeated=sim.repeated,
        useful_cpu_s=sim.busy_total * cfg.cpus,
        held_cpu_s=float(held),
        startup_cpu_s=sim.startup_cpu_s,
        killed_cpu_s=sim.killed_cpu_s,
        pending_max=sim.pending_max,
        pending_mean=sim.pend_area / max(1e-9, (sim.done_at or c.now) - start),
        beyond_max=sim.beyond_max,
        held_max=sim.held_max,
        serving_max=sim.serving_max,
        preempted=sim.preempted,
        requeued=sim.requeued,
        harm_jobs=jobs,
        harm_start=np.asarray(c.start, dtype=np.float64)[jobs],
        harm_cpus=np.asarray(c.cpus, dtype=np.float64)[jobs],
        harm_run=np.asarray(c.run, dtype=np.float64)[jobs],
        ours_cpu_s=np.asarray(c.ours_area[k0:], dtype=np.float64),
        timeline={k: np.asarray(v) for k, v in sim.line.items()},
        forecasts=list(source.made) if source is not None else [],
    )
