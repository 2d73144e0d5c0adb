"""The trace replayed once without our jobs: what every simulated campaign starts from and is
measured against (the cluster at each campaign start, its jobs' start times, its idle CPUs)."""

from __future__ import annotations

import math

import numpy as np

from balancer.capacity.swf import SwfTrace
from balancer.sim.cluster import Cluster


class Replay:
    """The trace replayed without our jobs: snapshots at campaign starts, start times, idle truth."""

    def __init__(self, trace: SwfTrace, starts: list[float], step_s: float = 900.0) -> None:
        c = Cluster.from_trace(trace, step_s)
        self.trace = trace
        self.snapshots: dict[float, Cluster] = {}
        for t in sorted(starts):
            c.advance_to(t)
            self.snapshots[t] = c.clone()
        while c.next_time() < math.inf:
            c.step()
        self.start = np.asarray(c.start[: c.n_trace])
        self.submit = np.asarray(c.submit[: c.n_trace])
        self.others_idle = c.others_idle_series()
        self.step_s = step_s
