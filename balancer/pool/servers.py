"""Server records: what the pool knows of one server, with its marks for the policy in one table.

The marks (``Mark``) are what the policy reads besides the state: set by the pool as reports and
actions arrive (``Server.mark``), read as the record's plain fields (``policy.types.ServerView``).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from balancer.config.schema import ServerSpec
from balancer.http.upstream import Upstream
from balancer.policy.types import Phase
from balancer.pool.states import PHASE, ServerState


class Mark(enum.Flag):
    """Per-server marks the policy reads."""

    NONE = 0
    REPLACED = enum.auto()  # a replacement was already started for it (draining servers)
    OUTDATED = enum.auto()  # a reload changed how its spec starts: a successor replaces it
    SUCCESSOR = enum.auto()  # started in a rolling replacement, to take an outdated one's place
    DEFERRED = enum.auto()  # the backend holds its start until cores or GPUs are free


@dataclass(eq=False, slots=True)
class Server:
    id: str
    spec: ServerSpec
    requested_m: float
    state: ServerState = ServerState.REQUESTED
    concurrency: int = 1
    outstanding: int = 0
    idle_since_m: float = 0.0
    serving: bool = False  # a dispatcher member (kept in step with READY by the pool)
    url: str | None = None
    host: str | None = None
    job: str | None = None
    models: tuple[str, ...] = ()
    deadline_wall: float | None = None  # Unix time its job will be killed
    deadline_m: float | None = None  # the same on the monotonic clock, for the policy
    # The marks (``Mark``) as plain flags: the policy reads them for every server on every pass,
    # and an enum.Flag's ``in`` is a Python-level call (10,000 servers: ~2 ms a pass).
    replaced: bool = False
    outdated: bool = False
    successor: bool = False
    deferred: bool = False
    drain_reason: str | None = None  # why the operator drained it (the policy's drains leave it None)
    lease_waiter: asyncio.Future[None] | None = None
    upstream: Upstream | None = None  # keep-alive connections, set when the server is ready
    calls: int = 0  # calls it answered (for the dashboard: ``Pool.count_call``, no event)
    busy_s: float = 0.0  # summed dispatch-to-answer time of those calls
    ready_m: float | None = None  # when it became ready: its utilisation's denominator starts
    started_m: float | None = None  # when its job began to run (the start-up timeout counts from it)
    preemptible: bool = False  # its job runs in the preemptible partition or QOS
    preempted: bool = False  # the scheduler took its job back: calls it loses are not charged an attempt

    @property
    def phase(self) -> Phase:
        return PHASE[self.state]

    def mark(self, m: Mark, on: bool = True) -> None:
        for flag, name in _FIELD.items():
            if flag & m:
                setattr(self, name, on)


_FIELD = {
    Mark.REPLACED: "replaced",
    Mark.OUTDATED: "outdated",
    Mark.SUCCESSOR: "successor",
    Mark.DEFERRED: "deferred",
}
