"""A server's states and the one table of moves between them.

``Pool.transition`` checks every change against ``TRANSITIONS``; a move the table does not allow is
a stale report (a job's end arriving after the launcher said it exited) and changes nothing.
"""

from __future__ import annotations

import enum

from balancer.observe.events import Ev
from balancer.policy.types import Phase


class ServerState(str, enum.Enum):
    """A server's life, in order. It takes calls only while READY."""

    REQUESTED = "requested"  # asked of the backend
    STARTING = "starting"  # the backend has a job for it
    REGISTERED = "registered"  # the launcher reported its URL; the balancer checks /Info
    READY = "ready"
    DRAINING = "draining"  # finishing its calls before its job's time limit; takes no new ones
    STOPPING = "stopping"  # told to stop (lease), waiting for its job to end
    # The scheduler preempts its job (the launcher's notice, or the job's state): no new calls, its
    # calls in flight go back to the queue, it stops at once (-> STOPPING); never a failed start.
    PREEMPTED = "preempted"
    GONE = "gone"


S = ServerState
NOT_YET_READY = frozenset({S.REQUESTED, S.STARTING, S.REGISTERED})
# Allowed moves. Registration may overtake the backend's "started" report (a poll interval).
# Any live server may be preempted (a job is preempted whatever its launcher did), except one the
# balancer itself stops: that job ends anyway. A preempted server is stopped at once (Pool.job_preempted).
TRANSITIONS: dict[ServerState, frozenset[ServerState]] = {
    S.REQUESTED: frozenset({S.STARTING, S.REGISTERED, S.STOPPING, S.PREEMPTED, S.GONE}),
    S.STARTING: frozenset({S.REGISTERED, S.STOPPING, S.PREEMPTED, S.GONE}),
    S.REGISTERED: frozenset({S.READY, S.STOPPING, S.PREEMPTED, S.GONE}),
    S.READY: frozenset({S.DRAINING, S.STOPPING, S.PREEMPTED, S.GONE}),
    S.DRAINING: frozenset({S.STOPPING, S.PREEMPTED, S.GONE}),
    S.PREEMPTED: frozenset({S.STOPPING, S.GONE}),
    S.STOPPING: frozenset({S.GONE}),
    S.GONE: frozenset(),
}
# The event a server entering a state journals (GONE journals failed or stopped, by where it came from).
ENTER_EVENT = {
    S.REQUESTED: Ev.SERVER_REQUESTED,
    S.STARTING: Ev.SERVER_STARTED,
    S.REGISTERED: Ev.SERVER_REGISTERED,
    S.READY: Ev.SERVER_READY,
    S.DRAINING: Ev.SERVER_DRAINING,
    S.STOPPING: Ev.SERVER_STOPPING,
    S.PREEMPTED: Ev.SERVER_PREEMPTED,
}
# The pool's states folded into what the policy needs to tell apart.
PHASE = {
    S.REQUESTED: Phase.STARTING,
    S.STARTING: Phase.STARTING,
    S.REGISTERED: Phase.STARTING,
    S.READY: Phase.READY,
    S.DRAINING: Phase.DRAINING,
    S.STOPPING: Phase.STOPPING,
    S.PREEMPTED: Phase.STOPPING,  # gone for the policy: demand may start a replacement at once
    S.GONE: Phase.STOPPING,
}
