"""``balancer serve``'s console: the life cycle as one readable line per event on stderr.

A bus subscriber beside the journal (which stays the full record): servers requested, started,
ready, failed (the reason carries the model's last stderr lines and the log file's path), a spec
held and how to resume it, reloads applied or refused, and a summary at the end. ``-q`` keeps the
warnings and errors, ``-v`` adds the scaler's decisions and each failed call. Lines go through a
writer thread: a terminal or pipe that stalls never stalls the event loop.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from balancer.observe.events import Ev, Event, EventBus

QUIET, NORMAL, VERBOSE = 0, 1, 2
CLIP = 600  # characters of one reason on a line (a reason carries stderr lines and a path)

# The level from which each event is shown (QUIET: always, it is a warning or an error).
LEVELS: dict[str, int] = {
    Ev.SERVER_FAILED: QUIET,
    Ev.SPEC_HELD: QUIET,
    Ev.CONFIG_REJECTED: QUIET,
    Ev.BALANCER_ERROR: QUIET,
    Ev.SERVER_EXPOSED: QUIET,
    Ev.SERVER_REQUESTED: NORMAL,
    Ev.SERVER_STARTED: NORMAL,
    Ev.SERVER_READY: NORMAL,
    Ev.SERVER_DRAINING: NORMAL,
    Ev.SERVER_STOPPED: NORMAL,
    Ev.SERVER_PREEMPTED: NORMAL,
    Ev.SPEC_RESUMED: NORMAL,
    Ev.CONFIG_RELOADED: NORMAL,
    Ev.BALANCER_STOPPING: NORMAL,
    Ev.BALANCER_STOPPED: NORMAL,
    Ev.SCALE_DECISION: VERBOSE,
    Ev.CALL_FAILED: VERBOSE,
}
COUNTED = frozenset(
    {Ev.CALL_COMPLETED, Ev.CALL_FAILED, Ev.SERVER_REQUESTED, Ev.SERVER_STARTED, Ev.SERVER_FAILED}
)


def _clip(text: Any, n: int = CLIP) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 3] + "..."


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min"


class Console:
    """Formats events as lines (``line``) and writes those at or below ``level``."""

    def __init__(
        self,
        level: int = NORMAL,
        out: TextIO | None = None,
        clock: Callable[[float], str] = lambda t: time.strftime("%H:%M:%S", time.localtime(t)),
        threaded: bool = True,
    ) -> None:
        self.level = level
        self.out = out if out is not None else sys.stderr
        self.clock = clock
        self.spec_of: dict[str, str] = {}  # server -> spec (a failed event names no spec)
        self.since: dict[str, float] = {}  # server -> monotonic time it was asked for
        self.running: dict[str, float] = {}  # server -> monotonic time its job started
        self.answered = self.failed_calls = self.started = self.failed_servers = 0
        self.server_s = 0.0
        self._q: queue.SimpleQueue[str | None] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._q = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._drain, name="console", daemon=True)
            self._thread.start()

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Subscribe to the events it shows or counts; returns the unsubscribe function."""
        return bus.subscribe(self, only=frozenset(LEVELS) | COUNTED)

    def __call__(self, e: Event) -> None:
        self._count(e)
        if LEVELS.get(e["ev"], VERBOSE + 1) <= self.level:
            text = self.line(e)
            if text:
                self._write(f"{self.clock(e['t'])} {text}")
        if e["ev"] in (Ev.SERVER_FAILED, Ev.SERVER_STOPPED):  # a long run keeps no gone server
            self.spec_of.pop(e.get("server", ""), None)
            self.since.pop(e.get("server", ""), None)

    # -- what each event says ----------------------------------------------------------------------
    def _count(self, e: Event) -> None:
        ev, sid = e["ev"], str(e.get("server", ""))
        if ev == Ev.SERVER_REQUESTED:  # at every level: a failure at -q still names its spec
            self.spec_of[sid] = e.get("spec") or ""
            self.since[sid] = e["m"]
        if ev == Ev.CALL_COMPLETED:
            self.answered += 1
        elif ev == Ev.CALL_FAILED:
            self.failed_calls += 1
        elif ev == Ev.SERVER_STARTED and sid not in self.running:
            self.started += 1
            self.running[sid] = e["m"]
        elif ev == Ev.SERVER_FAILED:
            self.failed_servers += 1
        if ev in (Ev.SERVER_FAILED, Ev.SERVER_STOPPED) and sid in self.running:
            self.server_s += e["m"] - self.running.pop(sid)

    def _who(self, e: Event) -> str:
        sid = e.get("server", "?")
        spec = e.get("spec") or self.spec_of.get(sid)
        if spec:
            self.spec_of[sid] = spec
        return f"server {sid} ({spec})" if spec else f"server {sid}"

    def line(self, e: Event) -> str | None:
        """The event as one line (no time stamp); None for an event it does not show."""
        ev = e["ev"]
        if ev.startswith("server."):
            return self._server_line(e)
        if ev == Ev.SPEC_HELD:
            n, spec = e.get("failures"), e.get("spec")
            return (
                f"ERROR spec {spec} held after {n} failed start{'s' * (n != 1)}: its calls fail with the "
                f"reason above, one retry now and then; once fixed: `balancer resume {spec}`"
            )
        if ev == Ev.SPEC_RESUMED:
            return f"spec {e.get('spec')} resumed: {e.get('reason')}"
        if ev == Ev.CONFIG_RELOADED:
            return f"config {describe_reload(e)}"
        if ev == Ev.CONFIG_REJECTED:
            return f"WARNING config reload refused, nothing changed: {_clip(e.get('reason'))}"
        if ev == Ev.BALANCER_ERROR:
            return f"ERROR {e.get('where')}: {_clip(e.get('error'))}"
        if ev == Ev.SCALE_DECISION:
            why = _clip(e.get("reason"), 200)
            return f"scale {e.get('spec')}: {e.get('action')} {e.get('target')} ({why})"
        if ev == Ev.CALL_FAILED:
            return f"call {e.get('call')} failed ({e.get('status')}): {_clip(e.get('reason'), 300)}"
        if ev == Ev.BALANCER_STOPPING:
            return f"stopping ({e.get('reason')}), {e.get('inflight', 0)} calls in flight"
        if ev == Ev.BALANCER_STOPPED:
            return self.summary(e["m"])
        return None

    def _server_line(self, e: Event) -> str | None:
        ev, who, sid = e["ev"], self._who(e), e.get("server", "")
        if ev == Ev.SERVER_REQUESTED:
            return f"{who}: requested ({_clip(e.get('reason'), 200)})"
        if ev == Ev.SERVER_STARTED:
            where = " ".join(x for x in (f"job {e['job']}" if e.get("job") else "", e.get("host") or "") if x)
            return f"{who}: started" + (f", {where}" if where else "")
        if ev == Ev.SERVER_READY:
            took = f" after {_secs(e['m'] - self.since[sid])}" if sid in self.since else ""
            return f"{who}: ready{took}, models {', '.join(e.get('models') or []) or '-'}"
        if ev == Ev.SERVER_FAILED:
            return f"ERROR {who} failed: {_clip(e.get('reason'))}"
        if ev == Ev.SERVER_DRAINING:
            return f"{who}: draining ({_clip(e.get('reason'), 200)})"
        if ev == Ev.SERVER_STOPPED:
            return f"{who}: stopped ({_clip(e.get('reason'), 200)})"
        if ev == Ev.SERVER_PREEMPTED:
            return f"WARNING {who}: preempted ({_clip(e.get('reason'), 200)})"
        if ev == Ev.SERVER_EXPOSED:
            return f"WARNING {who} listens on {e.get('addresses')} too, not only on loopback"
        return None

    def summary(self, now_m: float) -> str:
        """The shutdown line: calls, servers and server-hours (still running ones up to ``now_m``)."""
        hours = (self.server_s + sum(now_m - m for m in self.running.values())) / 3600
        used = f"{hours:.1f} server-hours" if hours >= 0.1 else f"{hours * 60:.1f} server-minutes"
        return (
            f"summary: {self.answered} calls answered, {self.failed_calls} failed; servers: {self.started} "
            f"started, {self.failed_servers} failed; {used}"
        )

    # -- writing -------------------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        if self._q is not None:
            self._q.put(text)
        else:
            self._emit(text)

    def _emit(self, text: str) -> None:
        try:
            print(text, file=self.out, flush=True)
        except (OSError, ValueError):  # a closed stderr: the journal still has it
            pass

    def _drain(self) -> None:
        assert self._q is not None
        while (text := self._q.get()) is not None:
            self._emit(text)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (the summary) and end the writer thread."""
        if self._q is not None and self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout)
            self._q = None


def describe_reload(doc: Any) -> str:
    """One line for an applied reload (the CLI, SIGHUP and the console say the same)."""
    parts = []
    if doc.get("added"):
        parts.append("added " + ", ".join(doc["added"]))
    if doc.get("removed"):
        parts.append("removed " + ", ".join(doc["removed"]) + " (draining)")
    for name, keys in doc.get("changed", {}).items():
        n = doc.get("replacing", {}).get(name)
        more = f", replacing {n} server{'s' * (n != 1)} one by one" if n is not None else ""
        parts.append(f"changed {name} ({', '.join(keys)}{more})")
    if doc.get("settings"):
        parts.append("settings " + ", ".join(doc["settings"]))
    what = "; ".join(parts) or "no changes"
    return f"reloaded {doc.get('path')} (hash {doc.get('hash')}): {what}"
