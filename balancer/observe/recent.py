"""The recent rare events, kept so that a dashboard tab opened late still shows them.

One bus subscriber for the events a new tab's snapshot lists: server state changes (the timeline),
scale decisions with the operator's changes and config reloads (the decisions), capacity samples
and failures. It subscribes to those events only (``EventBus.subscribe(only=...)``), so a call's
events never reach it, and each list is a bounded ring: a long run holds no more than the newest.
Decisions and samples are kept as the events themselves; ``balancer/ops/views.py`` makes the
page's lines of them when a tab opens. It also keeps two running figures a late tab needs and the
pool does not count: the failed calls (the failures tile counts calls, not lines) and each spec's
latest workload verdict (its key figures). Failed calls are rare, so subscribing to
``call.failed`` costs the call path nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from balancer.observe.events import Ev, Event, EventBus

RECENT_TRANSITIONS = 1000
RECENT_DECISIONS = 100
RECENT_SAMPLES = 720  # 12 h at one a minute
RECENT_FAILURES = 100

# A server event -> the state it enters (a server gone journals failed or stopped).
_STATE = {
    Ev.SERVER_REQUESTED: "requested",
    Ev.SERVER_ADOPTED: "requested",
    Ev.SERVER_STARTED: "starting",
    Ev.SERVER_REGISTERED: "registered",
    Ev.SERVER_READY: "ready",
    Ev.SERVER_DRAINING: "draining",
    Ev.SERVER_STOPPING: "stopping",
    Ev.SERVER_PREEMPTED: "preempted",
    Ev.SERVER_STOPPED: "gone",
    Ev.SERVER_FAILED: "gone",
}
_DECISIONS = frozenset({Ev.SCALE_DECISION, Ev.OPERATOR_ACTION, Ev.CONFIG_RELOADED})
KEPT = frozenset({
    *_STATE, *_DECISIONS, Ev.CAPACITY_SAMPLE, Ev.SPEC_HELD, Ev.BALANCER_ERROR, Ev.CALL_FAILED,
    Ev.WORKLOAD_CLASSIFIED,
})  # fmt: skip


class Recent:
    """The newest state changes, decisions, capacity samples and failures; see the module docstring."""

    def __init__(self, bus: EventBus) -> None:
        self.timeline: deque[dict[str, Any]] = deque(maxlen=RECENT_TRANSITIONS)
        self.decisions: deque[Event] = deque(maxlen=RECENT_DECISIONS)
        self.capacity: deque[Event] = deque(maxlen=RECENT_SAMPLES)
        self.failures: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)
        self._spec: dict[str, str] = {}  # live server -> its spec (most server events carry only the id)
        self.failed_calls = 0
        self.server_failures = 0
        self.workload: dict[str, dict[str, Any]] = {}  # spec -> {"cls", "figures"} as last classified
        bus.subscribe(self, only=KEPT)

    def __call__(self, e: Event) -> None:
        ev = e["ev"]
        if ev in _DECISIONS:
            self.decisions.append(e)
        elif ev == Ev.CAPACITY_SAMPLE:
            self.capacity.append(e)
        elif ev in _STATE:
            self._server(e, ev)
        elif ev == Ev.SPEC_HELD:
            what = f"spec {e['spec']} held after {e.get('failures')} failed starts"
            self.failure(e["t"], what, e.get("reason"))
        elif ev == Ev.BALANCER_ERROR:
            self.failure(e["t"], f"error in {e.get('where')}", e.get("error"))
        elif ev == Ev.CALL_FAILED:
            self.failed_calls += 1
        elif ev == Ev.WORKLOAD_CLASSIFIED:
            self.workload[e["spec"]] = {"cls": e.get("cls"), "figures": e.get("figures") or {}}

    def _server(self, e: Event, ev: str) -> None:
        sid = e["server"]
        if ev == Ev.SERVER_REQUESTED or ev == Ev.SERVER_ADOPTED:
            self._spec[sid] = e.get("spec") or ""
        gone = ev == Ev.SERVER_STOPPED or ev == Ev.SERVER_FAILED
        spec = self._spec.pop(sid, None) if gone else self._spec.get(sid)
        failed = ev == Ev.SERVER_FAILED
        self.server_failures += failed
        reason = "adopted after a restart" if ev == Ev.SERVER_ADOPTED else e.get("reason")
        state = _STATE[ev]
        self.timeline.append(
            {"t": e["t"], "server": sid, "spec": spec, "state": state, "reason": reason, "failed": failed}
        )
        if failed:
            self.failure(e["t"], f"server {sid} ({spec}) failed", reason)

    def failure(self, t: float, what: str, reason: Any) -> None:
        """A failure for the dashboard's list (also the feed's "N call(s) failed" of a second)."""
        self.failures.append({"kind": "failure", "t": t, "what": what, "reason": reason})
