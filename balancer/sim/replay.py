"""The trace replayed once without our jobs: what every simulated campaign starts from and is
measured against (the cluster at each campaign start, its jobs' start times, its idle CPUs).
Jobs that ran past their request are killed at it by default (``overrun="cap"``; why: ``cluster``)."""

from __future__ import annotations

import math

import numpy as np

from balancer.capacity.swf import SwfTrace
from balancer.sim.cluster import Cluster


class Replay:
    """The trace replayed without our jobs: snapshots at campaign starts, the trace jobs as they
    ran (the fixed set that harm is measured on), and the idle CPUs (the harvest's truth)."""

    def __init__(
        self,
        trace: SwfTrace,
        starts: list[float],
        step_s: float = 900.0,
        scheduler: str = "easy",
        preempt_grace_s: float = 60.0,
        overrun: str = "cap",
        one_node: bool = False,
    ) -> None:
        c = Cluster.from_trace(trace, step_s, scheduler, preempt_grace_s, overrun, one_node)
        self.trace = trace
        self.step_s = step_s
        self.scheduler = scheduler
        self.preempt_grace_s = preempt_grace_s
        self.overrun = overrun
        self.procs = c.procs
        self.snapshots: dict[float, Cluster] = {}
        for t in sorted(starts):
            c.advance_to(t)
            self.snapshots[t] = c.clone()
        while c.next_time() < math.inf:
            c.step()
        n = c.n_trace
        self.start = np.asarray(c.start[:n])
        self.end = np.asarray(c.end[:n])
        self.submit = np.asarray(c.submit[:n])
        self.cpus = np.asarray(c.cpus[:n])
        self.run = np.asarray(c.run[:n])  # as replayed: capped at the request under "cap"
        self.req = np.asarray(c.req[:n])
        self.users = np.asarray(c.users[:n])
        self.idle = c.idle_series()  # mean idle CPUs per slot from t0 (nothing of ours ran)
        self.others_idle = c.others_idle_series()  # the same here; kept for the forecasts
        self.overrun_cpu_h = c.overrun_cpu_h
        self.overrun_jobs = c.overrun_jobs
