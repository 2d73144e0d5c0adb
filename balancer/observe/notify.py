"""Notifications (``[notify]``): events become coalesced, rate-limited messages sent through apprise.

A bus subscriber turns events into notices of a few kinds (``config.NOTIFY_KINDS``). A notice
waits ``coalesce_s`` for more of its kind and then goes out as ONE message with a count (a storm of
50 server failures is one mail, not 50), and a kind sends at most one message per
``min_interval_s`` (what arrives meanwhile joins the next one). Messages are sent by apprise on one
dedicated thread, so a slow or dead mail server never holds the event loop, a call or the scaler;
each send's outcome is journaled (``notify.sent`` / ``notify.failed``). On shutdown whatever is
pending goes out at once with a run summary, and the balancer waits for it at most
``shutdown_wait_s``.

A daemon thread rather than ``asyncio.to_thread``: ``asyncio.run`` joins the default executor's
threads on exit, so a mail server that never answers would hold the balancer's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from balancer.config.schema import NotifySettings
from balancer.observe.events import Ev, Event, EventBus
from balancer.units import human_duration

EXAMPLES = 5  # lines quoted per message; the rest is a count


@dataclass
class _Notice:
    """Events of one kind waiting to go out together."""

    kind: str
    first_m: float
    count: int = 0
    examples: list[str] = field(default_factory=list)
    specs: Counter[str] = field(default_factory=Counter)

    def add(self, line: str, spec: str | None = None) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(line)
        if spec is not None:
            self.specs[spec] += 1


@dataclass(eq=False)
class _Message:
    kind: str
    title: str
    body: str
    count: int
    done: set[str] = field(default_factory=set)  # targets that answered


class _Sender:
    """One daemon thread that hands messages to apprise, one target (URL) at a time."""

    def __init__(self, urls: tuple[str, ...], report: Callable[[_Message, str, str | None], None]) -> None:
        import apprise  # config checked that it is installed

        self._apprise = apprise
        self.targets: list[tuple[str, Any]] = []
        for url in urls:
            plugin = apprise.Apprise.instantiate(url)
            if plugin is None:  # parse_notify checked them; a NotifySettings built by hand may not be
                raise ValueError(f"apprise cannot use the notification URL {url.split(':', 1)[0]}://...")
            # apprise spaces requests to one service ~5.5 s apart (sleeping in our one thread); the
            # coalescing here already sends at most one message per kind and min_interval_s.
            plugin.request_rate_per_sec = 0
            a = apprise.Apprise()
            a.add(plugin)
            self.targets.append((plugin.url(privacy=True), a))  # journaled without secrets
        self._report = report
        self._queue: queue.Queue[_Message | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def submit(self, msg: _Message) -> None:
        self._queue.put(msg)

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        apprise = self._apprise
        text = apprise.NotifyFormat.TEXT  # plain lines: a mail's text part keeps them
        while (msg := self._queue.get()) is not None:
            for target, a in self.targets:
                error: str | None
                try:
                    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
                        ok = bool(a.notify(body=msg.body, title=msg.title, body_format=text))
                    lines = captured.getvalue().strip().splitlines()
                    error = None if ok else (lines[-1] if lines else "not delivered")[:500]
                except Exception as exc:  # a broken plugin: journaled like any failure
                    error = f"{type(exc).__name__}: {exc}"[:500]
                self._report(msg, target, error)


class Notifier:
    """Subscribe it to the bus; ``close()`` on shutdown sends what is pending and the run summary."""

    def __init__(self, settings: NotifySettings, bus: EventBus, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.bus = bus
        self.clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender = _Sender(settings.urls, self._from_thread)
        self._pending: dict[str, _Notice] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._last_sent: dict[str, float] = {}
        self._unsent: list[_Message] = []  # handed to the thread, not yet answered by every target
        self._idle: asyncio.Event | None = None
        self._failures: deque[tuple[float, str, str]] = deque()  # (m, line, spec) below the threshold
        self._spec: dict[str, str] = {}  # live server -> spec (server.failed names no spec)
        self._ready: dict[str, set[str]] = {}  # spec -> its ready servers
        self._up: dict[str, float] = {}  # server -> when its allocation began (server-hours)
        self._window_open = False
        self.started_m = clock()
        self.totals: Counter[str] = Counter()
        self.server_s = 0.0
        self._on = set(settings.on)
        self._handlers = self._handlers_for(self._on)
        self._closed = False

    def _handlers_for(self, on: set[str]) -> dict[str, Callable[[Event], None]]:
        handlers: dict[str, Callable[[Event], None]] = {
            Ev.SERVER_REQUESTED: self._requested,
            Ev.SERVER_ADOPTED: self._adopted,
            Ev.SERVER_STARTED: self._up_since,
            Ev.SERVER_REGISTERED: self._up_since,
            Ev.SERVER_READY: self._server_ready,
            Ev.SERVER_DRAINING: self._not_ready,
            Ev.SERVER_STOPPING: self._not_ready,
            Ev.SERVER_STOPPED: self._server_stopped,
            Ev.SERVER_FAILED: self._server_failed,
        }
        if "spec_held" in on:
            handlers[Ev.SPEC_HELD] = self._spec_held
        if "run_finished" in on:  # the only per-call events this subscriber looks at
            handlers[Ev.CALL_COMPLETED] = self._call_completed
            handlers[Ev.CALL_FAILED] = self._call_failed
        if "forecast_window" in on:
            handlers[Ev.CAPACITY_SAMPLE] = self._capacity
        return handlers

    def reconfigure(self, settings: NotifySettings) -> None:
        """A reloaded ``[notify]``: thresholds, kinds and addresses apply from now on. Messages the
        old addresses were already given still go out to them (their thread ends after them)."""
        if settings.urls != self.settings.urls:
            old = self._sender
            self._sender = _Sender(settings.urls, self._from_thread)
            old.stop()
            self._unsent.clear()  # the old thread still reports them; nothing waits on them here
        self.settings = settings
        self._on = set(settings.on)
        self._handlers = self._handlers_for(self._on)

    def __call__(self, e: Event) -> None:
        if self._closed:  # shutdown sent the last messages; the sender is gone
            return
        h = self._handlers.get(e["ev"])
        if h is not None:
            h(e)

    # -- events -> notices ----------------------------------------------------------------------
    def _call_completed(self, e: Event) -> None:
        self.totals["calls"] += 1
        if e["status"] >= 400:
            self.totals["model_errors"] += 1

    def _call_failed(self, e: Event) -> None:
        self.totals["calls"] += 1
        self.totals["failed_calls"] += 1

    def _requested(self, e: Event) -> None:
        self._spec[e["server"]] = e["spec"]
        self.totals["servers"] += 1

    def _adopted(self, e: Event) -> None:
        self._spec[e["server"]] = e["spec"]
        self._up.setdefault(e["server"], e["m"])

    def _up_since(self, e: Event) -> None:
        if e["server"] in self._spec:
            self._up.setdefault(e["server"], e["m"])

    def _server_ready(self, e: Event) -> None:
        self._ready.setdefault(e["spec"], set()).add(e["server"])

    def _not_ready(self, e: Event) -> None:
        spec = self._spec.get(e["server"])
        if spec is not None:
            self._ready.get(spec, set()).discard(e["server"])

    def _gone(self, e: Event) -> str | None:
        server = e["server"]
        since = self._up.pop(server, None)
        if since is not None:
            self.server_s += e["m"] - since
        return self._spec.pop(server, None)

    def _server_stopped(self, e: Event) -> None:
        spec = self._gone(e)
        if spec is not None:
            self._ready.get(spec, set()).discard(e["server"])

    def _server_failed(self, e: Event) -> None:
        server, now = e["server"], e["m"]
        spec = self._gone(e) or "?"
        line = f"{server} ({spec}): {e.get('reason') or 'failed'}"
        self.totals["server_failures"] += 1
        ready = self._ready.get(spec)
        if ready is not None and server in ready:
            ready.discard(server)
            if not ready and "spec_lost" in self._on:
                lost = f"spec '{spec}' has no ready server left; last: {line}"
                self._notice("spec_lost", now).add(lost, spec)
        if "server_failures" not in self._on:
            return
        pending = self._pending.get("server_failures")
        if pending is not None:
            pending.add(line, spec)
            return
        fails = self._failures
        fails.append((now, line, spec))
        while fails and fails[0][0] < now - self.settings.failure_window_s:
            fails.popleft()
        if len(fails) >= self.settings.failure_threshold:
            notice = self._notice("server_failures", fails[0][0])
            for _, ln, sp in fails:
                notice.add(ln, sp)
            fails.clear()

    def _spec_held(self, e: Event) -> None:
        spec = e["spec"]
        line = f"spec '{spec}' held after {e.get('failures')} failed starts: {e.get('reason')}"
        self._notice("spec_held", e["m"]).add(line, spec)

    def _capacity(self, e: Event) -> None:
        predicted = e.get("predicted_idle_cpus")
        if predicted is None:
            return
        is_open = predicted >= self.settings.window_cpus
        if is_open and not self._window_open:
            line = (f"the forecast predicts {predicted:g} idle CPUs now (observed {e.get('idle_cpus')}, "
                    f"{e.get('source')}); servers may start without waiting")  # fmt: skip
            self._notice("forecast_window", e["m"]).add(line)
        self._window_open = is_open

    def _notice(self, kind: str, first_m: float) -> _Notice:
        """The kind's pending notice; a new one is due after ``coalesce_s`` and ``min_interval_s``."""
        n = self._pending.get(kind)
        if n is None:
            n = self._pending[kind] = _Notice(kind, first_m)
            now = self.clock()
            st = self.settings
            due = max(now + st.coalesce_s, self._last_sent.get(kind, -1e18) + st.min_interval_s)
            self._loop = loop = asyncio.get_running_loop()
            self._timers[kind] = loop.call_later(due - now, self._flush, kind)
        return n

    # -- notices -> messages --------------------------------------------------------------------
    def _flush(self, kind: str) -> None:
        self._timers.pop(kind, None)
        n = self._pending.pop(kind, None)
        if n is None:
            return
        now = self.clock()
        self._last_sent[kind] = now
        title, head = self._render(n, now)
        lines = [head, *(f"  {x}" for x in n.examples)]
        if n.count > len(n.examples):
            lines.append(f"  ... and {n.count - len(n.examples)} more")
        self._send(_Message(kind, f"{self.settings.title_prefix}: {title}", "\n".join(lines), n.count))

    @staticmethod
    def _render(n: _Notice, now: float) -> tuple[str, str]:
        span = f"{max(0.0, now - n.first_m):.0f} s"
        by_spec = ", ".join(f"{s} {c}" for s, c in n.specs.most_common())
        if n.kind == "server_failures":
            return (f"{n.count} server failures",
                    f"{n.count} server failures in the last {span} (by spec: {by_spec}), e.g.:")  # fmt: skip
        if n.kind == "spec_held":
            return f"{n.count} spec(s) held", f"{n.count} spec(s) held after failed starts ({by_spec}):"
        if n.kind == "spec_lost":
            return f"all servers of {by_spec} lost", f"a spec lost all its ready servers {n.count} time(s):"
        return "forecast window opened", "idle capacity ahead:"

    def _summary(self) -> _Message:
        t = self.totals
        now = self.clock()
        server_h = (self.server_s + sum(now - m for m in self._up.values())) / 3600
        wall = now - self.started_m
        body = "\n".join((
            f"wall time: {human_duration(wall)}",
            f"calls: {t['calls']} ({t['failed_calls']} failed, {t['model_errors']} model errors)",
            f"servers: {t['servers']} started, {t['server_failures']} failed",
            f"server-hours: {server_h:.2f}",
        ))  # fmt: skip
        title = f"{self.settings.title_prefix}: run finished ({t['calls']} calls, {human_duration(wall)})"
        return _Message("run_finished", title, body, 1)

    def _send(self, msg: _Message) -> None:
        self._unsent.append(msg)
        self._sender.submit(msg)

    def _from_thread(self, msg: _Message, target: str, error: str | None) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing left to journal into
                loop.call_soon_threadsafe(self._result, msg, target, error)

    def _result(self, msg: _Message, target: str, error: str | None) -> None:
        if error is None:
            self.bus.emit(Ev.NOTIFY_SENT, kind=msg.kind, target=target, count=msg.count, title=msg.title)
        else:
            self.bus.emit(Ev.NOTIFY_FAILED, kind=msg.kind, target=target, count=msg.count, error=error)
        msg.done.add(target)
        if len(msg.done) == len(self._sender.targets) and msg in self._unsent:
            self._unsent.remove(msg)
        if not self._unsent and self._idle is not None:
            self._idle.set()

    async def close(self) -> None:
        """Send what is pending now (no coalescing, no rate limit) and the run summary; wait for
        them at most ``shutdown_wait_s``; journal what is still unsent then as failed."""
        self._loop = asyncio.get_running_loop()
        self._closed = True
        for kind in list(self._pending):
            timer = self._timers.pop(kind, None)
            if timer is not None:
                timer.cancel()
            self._flush(kind)
        if "run_finished" in self._on:
            self._send(self._summary())
        self._sender.stop()
        self._idle = asyncio.Event()
        if self._unsent:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_wait_s)
        why = f"still sending when the balancer stopped (waited {self.settings.shutdown_wait_s:g} s)"
        for msg in self._unsent:
            for target, _ in self._sender.targets:
                if target not in msg.done:
                    self.bus.emit(Ev.NOTIFY_FAILED, kind=msg.kind, target=target, count=msg.count, error=why)
        self._unsent.clear()
        self._loop = None  # late answers from the thread are dropped, not journaled after stop


class Notifications:
    """The run's notifier, if any: none until ``[notify]`` has a first address (apprise and its
    thread only then), started by a reload that gives one, reconfigured by the next ones."""

    def __init__(self, settings: NotifySettings, bus: EventBus) -> None:
        self.bus = bus
        self.notifier: Notifier | None = None
        if settings.urls:
            self._start(settings)

    def _start(self, settings: NotifySettings) -> None:
        self.notifier = Notifier(settings, self.bus)
        self.bus.subscribe(self.notifier)

    def reconfigure(self, settings: NotifySettings) -> None:
        """A reloaded ``[notify]``: the notifier takes it, or starts with the first address."""
        if self.notifier is not None:
            self.notifier.reconfigure(settings)
        elif settings.urls:
            self._start(settings)

    async def close(self) -> None:
        """Pending notices and the run summary, a bounded wait (``Notifier.close``)."""
        if self.notifier is not None:
            await self.notifier.close()
