"""What our own pool holds of the cluster: CPUs per partition of the servers whose jobs run.

Capacity is idle + ours (issue 20): the collectors stamp this on each sample and the forecast view
carries it, so that our own load never reads as the cluster filling up. One truth, the pool's
records, rather than a second look at the scheduler's queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from balancer.config.schema import ServerSpec
from balancer.pool.servers import Server
from balancer.pool.states import ServerState

S = ServerState
# States whose job runs (the backend reported its start); a queued or preempted job holds nothing.
RUNNING = frozenset({S.STARTING, S.REGISTERED, S.READY, S.DRAINING})


def holds_cpus(s: Server) -> bool:
    """Its job runs: from the backend's start report until it is gone; a stopping server holds its
    CPUs while its job, seen running, ends."""
    if s.state in RUNNING:
        return True
    return s.state is S.STOPPING and (s.started_m is not None or s.host is not None)


def held_cpus(servers: Iterable[Server], partition_of: Callable[[ServerSpec, bool], str]) -> dict[str, float]:
    """Partition -> CPUs our running jobs hold ("": the default partition, or the whole machine)."""
    held: dict[str, float] = {}
    for s in servers:
        if holds_cpus(s):
            part = partition_of(s.spec, s.preemptible)
            held[part] = held.get(part, 0.0) + float(s.spec.resources.cpus)
    return held
