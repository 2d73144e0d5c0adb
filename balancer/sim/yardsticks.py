"""Yardsticks of one simulated campaign: pure, deterministic functions of its ``Result`` and the
``Replay`` it ran on (issue 20).

- Bounds. D, dedicated: the campaign's work spread over ``max_servers`` from the start, plus the
  start-up delay: no policy can be faster without more servers. H, idle harvest: the campaign run
  only on the CPUs that the replay *without us* left idle (up to ``max_servers``), plus start-up: a
  policy faster than H took CPUs the cluster's own jobs would have used. Both ignore that calls are
  indivisible; H uses each grid slot's mean idle CPUs.
- Harm, on one fixed set of trace jobs per start, the same for every policy (``run.harm_set``):
  extra CPU-weighted wait, extra mean bounded slowdown, p95 extra wait, share of jobs delayed.
- Harvest fraction: the share of our CPU-seconds that ran on CPUs the replay without us left idle,
  slot by slot (``min(ours, idle) / ours`` summed over slots: within a slot it is an upper bound).
- Queue footprint and waste, in CPU-seconds both sides.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from balancer.sim.run import Result


class Replay(Protocol):
    """What the yardsticks read of the run without us (``replay.Replay``, or a live run's
    ``live.Baseline``): the trace jobs' submits and starts; the idle series and the grace time are
    read as attributes where present (``idle`` or ``others_idle``, ``preempt_grace_s``)."""

    submit: np.ndarray
    start: np.ndarray


BSLD_THRESHOLD_S = 10.0  # bounded slowdown: runs shorter than this count as this long
DELAYED_S = 1.0  # a job started more than this later than without us was delayed


def replay_idle(replay: Replay) -> np.ndarray:
    """Mean idle CPUs per grid slot of the replay without us."""
    idle = getattr(replay, "idle", None)
    return np.asarray(getattr(replay, "others_idle", None) if idle is None else idle, dtype=np.float64)


def dedicated_bound_s(r: Result) -> float:
    """D: the work on ``max_servers`` dedicated servers from the start, plus the start-up delay."""
    return r.work_s / r.max_servers + r.startup_delay_s


def harvest_bound_s(r: Result, idle: np.ndarray) -> float:
    """H: the work run only on the CPUs the replay without us left idle (up to ``max_servers``
    servers of ``cpus``), from the start, plus the start-up delay; inf if the trace ends first."""
    step = r.step_s
    k0 = int(r.start // step)
    servers = np.minimum(r.max_servers, idle[k0:] / r.cpus)
    if not len(servers):
        return math.inf
    span = np.full(len(servers), step)
    span[0] = (k0 + 1) * step - r.start  # the start's slot is only partly ahead
    done = np.cumsum(servers * span)
    i = int(np.searchsorted(done, r.work_s))
    if i >= len(done):
        return math.inf
    before = done[i - 1] if i else 0.0
    t_end = (k0 + i) * step + (r.work_s - before) / servers[i] if i else r.start + r.work_s / servers[0]
    return float(t_end - r.start + r.startup_delay_s)


def harm(r: Result, replay: Replay) -> dict[str, float]:
    """What the campaign cost the trace's own jobs of the fixed set, against the replay without us:
    extra CPU-weighted wait (CPU-h), extra mean bounded slowdown, p95 extra wait (s), share delayed;
    and the part of the CPU-weighted wait from jobs delayed no longer than the preemption grace
    time (the direct cost of preempting us; the rest is EASY's cascade, which goes both ways)."""
    jobs = r.harm_jobs
    if not len(jobs):
        zero = ("harm_cpu_h", "harm_bsld", "harm_p95_s", "harm_delayed", "harm_grace_cpu_h")
        return dict.fromkeys(zero, 0.0)
    sub = replay.submit[jobs]
    base = replay.start[jobs]
    extra = r.harm_start - base
    run = np.maximum(r.harm_run, 0.0)
    den = np.maximum(run, BSLD_THRESHOLD_S)
    bsld = np.maximum(1.0, (r.harm_start - sub + run) / den)
    bsld0 = np.maximum(1.0, (base - sub + run) / den)
    w = extra * r.harm_cpus
    grace = float(getattr(replay, "preempt_grace_s", 0.0))
    return {
        "harm_cpu_h": float(w.sum() / 3600.0),
        "harm_bsld": float(bsld.mean() - bsld0.mean()),
        "harm_p95_s": float(np.percentile(extra, 95)),
        "harm_delayed": float((extra > DELAYED_S).mean()),
        "harm_grace_cpu_h": float((w[(extra > 0) & (extra <= grace + DELAYED_S)]).sum() / 3600.0),
    }


def harvest_fraction(r: Result, idle: np.ndarray) -> float:
    """Share of our jobs' CPU-seconds on CPUs the replay without us left idle, slot by slot."""
    ours = r.ours_cpu_s
    k0 = int(r.start // r.step_s)
    free = idle[k0 : k0 + len(ours)] * r.step_s
    n = min(len(ours), len(free))
    total = float(ours.sum())
    if total <= 0:
        return math.nan
    return float(np.minimum(ours[:n], free[:n]).sum() / total)


def waste(r: Result) -> dict[str, float]:
    """CPU-seconds our jobs held beyond useful compute, per useful CPU-second, and its parts."""
    u = r.useful_cpu_s
    if u <= 0:
        return {
            "waste": math.nan,
            "waste_idle": math.nan,
            "waste_startup": math.nan,
            "waste_killed": math.nan,
        }
    total = r.held_cpu_s - u
    idle = total - r.startup_cpu_s - r.killed_cpu_s
    return {
        "waste": total / u,
        "waste_idle": idle / u,
        "waste_startup": r.startup_cpu_s / u,
        "waste_killed": r.killed_cpu_s / u,
    }


def figures(r: Result, replay: Replay) -> dict[str, float]:
    """Every yardstick of one run, as plain floats (NaN where one does not apply)."""
    idle = replay_idle(replay)
    d = dedicated_bound_s(r)
    h = harvest_bound_s(r, idle)
    campaign_cpu_h = r.work_s * r.cpus / 3600.0
    out = {
        "makespan_h": r.makespan_s / 3600.0,
        "makespan_s": r.makespan_s,
        "D_h": d / 3600.0,
        "H_h": h / 3600.0,
        "makespan_D": r.makespan_s / d,
        "makespan_H": r.makespan_s / h if math.isfinite(h) else math.nan,
    }
    hm = harm(r, replay)
    out.update(hm)
    out["harm_per_cpu_h"] = hm["harm_cpu_h"] / campaign_cpu_h
    out["harm_grace_per_cpu_h"] = hm["harm_grace_cpu_h"] / campaign_cpu_h
    out["harvest_fraction"] = harvest_fraction(r, idle)
    out["pending_max"] = float(r.pending_max)
    out["pending_mean"] = r.pending_mean
    out["submissions"] = float(r.jobs_submitted)
    out["beyond_admission_max"] = float(max(0, r.beyond_max))
    out["held_max"] = float(r.held_max)
    out["serving_max"] = float(r.serving_max)
    out.update(waste(r))
    out["preempted"] = float(r.preempted)
    out["requeued"] = float(r.requeued)
    out["calls_missing"] = float(len(r.call_wait_s) - r.calls_done + r.calls_repeated)
    cw = r.call_wait_s
    out["call_wait_p50_s"] = float(np.percentile(cw, 50)) if len(cw) else math.nan
    jw = r.job_wait_s
    out["job_wait_mean_s"] = float(jw.mean()) if len(jw) else math.nan
    return {k: float(v) for k, v in out.items()}
