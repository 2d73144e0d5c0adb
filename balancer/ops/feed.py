"""The dashboard's live feed: one server-sent event stream per open tab, one bus subscriber for all.

``Feed`` is the only event-bus subscriber for all open tabs, and it subscribes only while at least one
tab is connected: with none, the per-call path pays nothing for the dashboard. While subscribed it
aggregates (answered calls and latencies per one-second bucket, failures, server state changes,
scale decisions, capacity samples) and once a second sends ONE coalesced message, serialised once,
to every tab, never one per call. A tab first gets a snapshot built from the pool, the scaler, the
forecast and the recent rare events (``balancer/observe/recent.py``), then the ticks; both carry
the specs' badges and the cost so far (``views.cost``), computed here, not in the page. A tab that
reads too slowly is closed once its backlog passes ``MAX_BACKLOG`` (EventSource reconnects and gets a
fresh snapshot); a closed tab leaves nothing behind. Rows are made in ``balancer/ops/views.py``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from balancer.http.messages import Request, Stream, StreamOut
from balancer.observe.events import Ev, EventBus
from balancer.observe.histogram import bin_middle, log_bin, quantile_bins
from balancer.observe.recent import RECENT_FAILURES, Recent
from balancer.ops.views import cost, dashboard_row, dashboard_spec, decision_line, decision_lines, strip
from balancer.pool.pool import Pool
from balancer.profiling.gpus import server_gpus

WINDOW_S = 300  # the charts' and the latency percentiles' span: the last five minutes
MAX_BACKLOG = 1 << 20  # bytes a tab may leave unread before it is closed
MAX_TICK_EVENTS = 200  # rare events carried by one tick (more in one second: the newest)
MAX_OPEN_CALLS = 200_000  # received calls awaiting their answer, tracked for their latency


def _percentiles(hist: dict[int, int], qs: tuple[float, ...]) -> list[float | None]:
    """Latency percentiles of a window: per-second histograms (``observe.histogram``, ~5 % wide
    bins) merge into it by adding counts."""
    return [None if b is None else round(bin_middle(b), 6) for b in quantile_bins(hist, qs)]


class Tab(Stream):
    """One open dashboard tab (an EventSource connection)."""

    __slots__ = ("feed", "out")

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.out: StreamOut | None = None

    def open(self, out: StreamOut) -> None:
        self.out = out
        out.write(b"retry: 2000\n\n")  # reconnect after 2 s when the balancer restarts
        self.feed.join(self)

    def closed(self) -> None:
        self.out = None
        self.feed.leave(self)

    def send(self, data: bytes) -> None:
        out = self.out
        if out is None:
            return
        if out.buffered() > MAX_BACKLOG:
            out.close()  # too slow: it reconnects and starts again from a snapshot
            return
        out.write(data)


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=str) + b"\n\n"


class Feed:
    """The one bus subscriber behind every open tab; see the module docstring."""

    def __init__(
        self,
        pool: Pool,
        bus: EventBus,
        scaler: Any = None,  # scaler.Scaler: status and recent decisions
        forecast: Any = None,  # forecast.service.ForecastService
        monitor: Any = None,  # cluster.monitor.CapacityMonitor, or None: no samples
        inflight: Callable[[], int] = lambda: 0,
        wall: Callable[[], float] = time.time,
        usage_latest: dict[str, dict[str, Any]] | None = None,  # server -> last server.usage (GPU use)
        recent: Recent | None = None,  # the recent rare events a new tab is shown
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.scaler = scaler
        self.forecast = forecast
        self.monitor = monitor
        self.inflight = inflight
        self.wall = wall
        self.usage_latest = usage_latest if usage_latest is not None else {}
        self.recent = recent if recent is not None else Recent(bus)
        self.tabs: set[Tab] = set()
        self.opened = 0  # tabs ever opened (for the status API and tests)
        self._unsubscribe: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            Ev.CALL_RECEIVED: self._received,
            Ev.CALL_COMPLETED: self._completed,
            Ev.CALL_FAILED: self._call_failed,
            Ev.SCALE_DECISION: self._decision,
            Ev.OPERATOR_ACTION: self._operator,
            Ev.CONFIG_RELOADED: self._reloaded,
            Ev.CAPACITY_SAMPLE: self._capacity,
            Ev.SERVER_FAILED: self._server_failed,
            Ev.SPEC_HELD: self._spec_held,
            Ev.BALANCER_ERROR: self._error,
            Ev.BALANCER_STOPPING: self._plain,
            Ev.FORECAST_TRAINED: self._forecast,
            Ev.FORECAST_CHANGED: self._forecast,
        }
        for ev in (
            Ev.SERVER_REQUESTED, Ev.SERVER_STARTED, Ev.SERVER_ADOPTED, Ev.SERVER_REGISTERED,
            Ev.SERVER_READY, Ev.SERVER_DRAINING, Ev.SERVER_STOPPING, Ev.SERVER_STOPPED,
            Ev.SERVER_PREEMPTED,
        ):  # fmt: skip
            self._handlers[ev] = self._server
        self._reset()

    # -- tabs -------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Stream:
        """``GET /dashboard/events``: the stream of one tab."""
        return Tab(self)

    def join(self, tab: Tab) -> None:
        if not self.tabs:
            self._start()
        self.tabs.add(tab)
        self.opened += 1
        tab.send(_sse(self.snapshot()))

    def leave(self, tab: Tab) -> None:
        self.tabs.discard(tab)
        if not self.tabs:
            self._stop()

    def status(self) -> dict[str, Any]:
        return {"tabs": len(self.tabs), "opened": self.opened, "subscribed": self._unsubscribe is not None}

    def _start(self) -> None:
        self._reset()
        self._unsubscribe = self.bus.subscribe(self._on_event)
        self._timer = asyncio.get_running_loop().call_later(self._to_next_second(), self._tick)

    def _stop(self) -> None:
        """The last tab left: off the bus, no timer, aggregates dropped."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reset()

    def _to_next_second(self) -> float:
        now = self.wall()
        return math.ceil(now + 1e-3) - now

    def _reset(self) -> None:
        self._open: dict[int, float] = {}  # call -> monotonic time received
        self._n = 0  # answered calls in this second
        self._failed_n = 0
        self._hist: dict[int, int] = {}  # this second's latencies (received -> answered)
        self._svc: dict[int, int] = {}  # this second's service times (dispatched -> answered)
        self._win: dict[int, int] = {}  # the window's latencies
        self._win_parts: deque[dict[int, int]] = deque()
        self._series: deque[list[Any]] = deque(maxlen=WINDOW_S)
        self._events: list[dict[str, Any]] = []
        self._call_fail_reason = ""

    # -- the bus ----------------------------------------------------------------------------------
    def _on_event(self, e: dict[str, Any]) -> None:
        h = self._handlers.get(e["ev"])
        if h is not None:
            h(e)

    def _received(self, e: dict[str, Any]) -> None:
        if e["op"] != "Info" and len(self._open) < MAX_OPEN_CALLS:
            self._open[e["call"]] = e["m"]

    def _completed(self, e: dict[str, Any]) -> None:
        t0 = self._open.pop(e["call"], None)
        if e["server"] is None:
            return  # answered from the metadata cache: not a model evaluation
        self._n += 1
        if t0 is not None:
            b = log_bin(e["m"] - t0)
            self._hist[b] = self._hist.get(b, 0) + 1
        b = log_bin(e.get("service_s") or 0.0)
        self._svc[b] = self._svc.get(b, 0) + 1

    def _call_failed(self, e: dict[str, Any]) -> None:
        self._open.pop(e["call"], None)
        self._failed_n += 1
        self._call_fail_reason = f"{e.get('status')}: {e.get('reason')}"

    def _note(self, item: dict[str, Any]) -> None:
        ev = self._events
        if len(ev) >= MAX_TICK_EVENTS:
            del ev[0]
        ev.append(item)

    def _server(self, e: dict[str, Any]) -> None:
        sid = e["server"]
        s = self.pool.servers.get(sid)
        state = s.state.value if s is not None else "gone"
        spec = s.spec.name if s is not None else e.get("spec")
        self._note({"kind": "server", "t": e["t"], "server": sid, "spec": spec, "state": state,
                    "reason": e.get("reason"), "failed": False})  # fmt: skip

    def _server_failed(self, e: dict[str, Any]) -> None:
        self._note({"kind": "server", "t": e["t"], "server": e["server"], "spec": None, "state": "gone",
                    "reason": e.get("reason"), "failed": True})  # fmt: skip
        self._failure(e["t"], f"server {e['server']} failed", e.get("reason"))

    def _failure(self, t: float, what: str, reason: Any) -> None:
        """A failure for this second's tick (``Recent`` keeps it for the tabs opened later)."""
        self._note({"kind": "failure", "t": t, "what": what, "reason": reason})

    def _spec_held(self, e: dict[str, Any]) -> None:
        what = f"spec {e['spec']} held after {e.get('failures')} failed starts"
        self._failure(e["t"], what, e.get("reason"))

    def _error(self, e: dict[str, Any]) -> None:
        self._failure(e["t"], f"error in {e.get('where')}", e.get("error"))

    def _decision(self, e: dict[str, Any]) -> None:
        self._note({"kind": "decision", **strip(e)})

    def _operator(self, e: dict[str, Any]) -> None:
        self._note({"kind": "decision", **decision_line(e)})

    def _reloaded(self, e: dict[str, Any]) -> None:
        self._note({"kind": "decision", **decision_line(e)})

    def _capacity(self, e: dict[str, Any]) -> None:
        self._note({"kind": "capacity", **strip(e)})

    def _forecast(self, e: dict[str, Any]) -> None:
        self._note({"kind": "forecast"})  # the tab asks for nothing: the next tick carries the status

    def _plain(self, e: dict[str, Any]) -> None:
        self._note({"kind": e["ev"], **strip(e)})

    # -- once a second ----------------------------------------------------------------------------
    def _tick(self) -> None:
        self._timer = None
        if not self.tabs:
            return
        try:
            data = _sse(self._tick_message())
        except Exception as exc:  # a bug here must not end the feed; the journal says what
            self.bus.emit(Ev.BALANCER_ERROR, where="dashboard", error=f"{type(exc).__name__}: {exc}")
            data = b": tick failed\n\n"
        for tab in list(self.tabs):
            tab.send(data)
        if self.tabs:
            self._timer = asyncio.get_running_loop().call_later(self._to_next_second(), self._tick)

    def _tick_message(self) -> dict[str, Any]:
        now = self.wall()
        hist, svc = self._hist, self._svc
        p50, p90 = _percentiles(hist, (0.5, 0.9))
        (s50,) = _percentiles(svc, (0.5,))
        win = self._win
        for b, c in hist.items():
            win[b] = win.get(b, 0) + c
        self._win_parts.append(hist)
        if len(self._win_parts) > WINDOW_S:
            for b, c in self._win_parts.popleft().items():
                left = win[b] - c
                if left:
                    win[b] = left
                else:
                    del win[b]
        w50, w90 = _percentiles(win, (0.5, 0.9))
        queues = self._queues()
        point = [round(now), self._n, self._failed_n, p50, p90, s50, sum(queues.values())]
        self._series.append(point)
        if self._failed_n:
            what = f"{self._failed_n} call(s) failed"
            self.recent.failure(now, what, self._call_fail_reason)
            self._failure(now, what, self._call_fail_reason)
        events, self._events = self._events, []
        msg: dict[str, Any] = {
            "type": "tick",
            "t": now,
            "point": point,
            "window": {"p50": w50, "p90": w90, "calls": sum(win.values())},
            "totals": self._totals(),
            "queues": queues,
            "servers": self._servers(now),
            "specs": self._specs(),
            "events": events,
        }
        if any(e["kind"] in ("forecast", "capacity") for e in events):
            msg["forecast"] = self._forecast_status()
        self._n = self._failed_n = 0
        self._hist, self._svc = {}, {}
        return msg

    # -- views of the objects ---------------------------------------------------------------------
    def _queues(self) -> dict[str, int]:
        waiting = {m or "(not yet known)": n for m, n in self.pool.demand.by_model().items()}
        for m in self.pool.known_models():
            waiting.setdefault(m, 0)
        return waiting

    def _totals(self) -> dict[str, Any]:
        pool, recent = self.pool, self.recent
        return {
            "calls": pool.gone_calls + sum(s.calls for s in pool.servers.values()),
            "inflight": self.inflight(),
            "preempted": pool.preempted_total,
            "failed_calls": recent.failed_calls,
            "server_failures": recent.server_failures,
            "cost": cost(pool, pool.clock()),
            "scaler": self.scaler.status() if self.scaler is not None else None,
        }

    def _specs(self) -> dict[str, Any]:
        """Each spec's badges and, where measured, its workload's key figures."""
        wl = self.recent.workload
        return {n: {**dashboard_spec(rt), "workload": wl.get(n)} for n, rt in self.pool.specs.items()}

    def _servers(self, now: float) -> list[dict[str, Any]]:
        m, backend, latest = self.pool.clock(), self.pool.backend, self.usage_latest
        servers = self.pool.servers.values()
        return [dashboard_row(s, m, now, server_gpus(backend, latest, s.id)) for s in servers]

    def _forecast_status(self) -> dict[str, Any] | None:
        fc = self.forecast
        if fc is None:
            return None
        st = fc.status()
        st.pop("backtest", None)
        tr = fc.trained
        if tr is not None:
            p = tr.prediction
            st["prediction"] = {"start": p.start, "step_s": p.step_s,
                                "mean": [round(float(x), 2) for x in p.mean]}  # fmt: skip
        if self.monitor is not None:
            st["collector"] = self.monitor.status()
        return st

    def snapshot(self) -> dict[str, Any]:
        """Everything a new tab shows, from the objects (once per connection)."""
        now = self.wall()
        pool, recent = self.pool, self.recent
        failures = list(recent.failures)
        for name, rt in pool.specs.items():
            if rt.held:
                held = {"kind": "failure", "t": now, "what": f"spec {name} held", "reason": rt.held_reason}
                failures.append(held)
        err = self.scaler.error if self.scaler is not None else None
        if err:
            failures.append({"kind": "failure", "t": now, "what": "scaler pass failed", "reason": err})
        failures.sort(key=lambda f: f["t"])
        return {
            "type": "snapshot",
            "t": now,
            "window_s": WINDOW_S,
            "specs": self._specs(),
            "servers": self._servers(now),
            "timeline": list(recent.timeline),
            "decisions": decision_lines(recent.decisions),
            "failures": failures[-RECENT_FAILURES:],
            "series": list(self._series),
            "totals": self._totals(),
            "queues": self._queues(),
            "capacity": [strip(e) for e in recent.capacity],
            "forecast": self._forecast_status(),
        }
