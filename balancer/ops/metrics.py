"""Prometheus metrics at ``GET /metrics``: a bus subscriber plus a scrape-time collector.

The per-call path pays only for plain dict and list updates here (no locks, no ``.labels()``
look-ups): counts and histogram buckets are kept as Python ints and turned into metric families
when Prometheus scrapes, by ``prometheus_client``'s exposition code over this balancer's own
``CollectorRegistry`` (never the global one, so two balancers in one process stay apart). State
(queue depth, servers by spec and state, forecast figures) is read from the pool, dispatcher and
forecast service at scrape time, so it costs nothing between scrapes.

Label sets are bounded: models are those the configuration or discovery knows (a client may send
any name: others count as ``_unknown``, calls without a model as ``_none``), ops are UM-Bridge's,
specs are configured; never a call or server id.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from balancer.http.messages import Reply, Request, error_reply
from balancer.observe.events import Ev, Event
from balancer.pool.pool import Pool
from balancer.pool.states import ServerState

PREFIX = "umbridge_balancer_"
CONTENT_TYPE = b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
# Seconds: from a cached metadata answer (sub-ms) to a model that computes for an hour.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
_Labels = TypeVar("_Labels", bound=tuple[str, ...])  # one label value per label name
_BOUNDS = (*(repr(float(b)) for b in BUCKETS), "+Inf")  # the buckets' ``le`` labels, formatted once
UNKNOWN = "_unknown"  # a model name no spec serves (clients choose names: never a label of its own)
NONE = "_none"  # a call without a model (Info, an unreadable body)
_STATES = tuple(s.value for s in ServerState if s is not ServerState.GONE)


class _Hist:
    """Non-cumulative bucket counts (the last is +Inf), their sum and count."""

    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def family_args(self) -> tuple[list[tuple[str, int]], float]:
        acc = 0
        out: list[tuple[str, int]] = []
        for bound, n in zip(_BOUNDS, self.buckets, strict=True):
            acc += n
            out.append((bound, acc))
        return out, self.sum


class Metrics(Collector):
    """Counts calls, servers and scaling events from the bus; exposes them with the live state."""

    def __init__(self, pool: Pool, inflight: Callable[[], int] = lambda: 0, forecast: Any = None) -> None:
        self.pool = pool
        self.inflight = inflight
        self.forecast = forecast
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._known: frozenset[str] = frozenset(m for rt in pool.specs.values() for m in rt.models)
        self._call_counts: dict[tuple[str, str, str], int] = {}
        self._retries: dict[str, int] = {}
        self._makespan: dict[tuple[str, str], _Hist] = {}
        self._queue_wait: dict[tuple[str, str], _Hist] = {}
        self._service: dict[tuple[str, str], _Hist] = {}
        self._server_spec: dict[str, str] = {}  # live servers only: server.failed names no spec
        self._starts: dict[tuple[str, str], int] = {}
        self._failures: dict[str, int] = {}
        self._preemptions: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._sample: dict[str, Any] = {}
        self._handlers: dict[str, Callable[[Event], None]] = {
            Ev.CALL_COMPLETED: self._completed,
            Ev.CALL_FAILED: self._failed,
            Ev.CALL_REQUEUED: self._requeued,
            Ev.SERVER_REQUESTED: self._requested,
            Ev.SERVER_ADOPTED: self._adopted,
            Ev.SERVER_READY: self._ready,
            Ev.CONFIG_RELOADED: self._ready,  # a new spec's listed models, a removed one's
            Ev.SERVER_FAILED: self._server_failed,
            Ev.SERVER_STOPPED: self._server_stopped,
            Ev.SERVER_PREEMPTED: self._server_preempted,
            Ev.SPEC_HELD: self._spec_held,
            Ev.CAPACITY_SAMPLE: self._capacity,
        }

    # -- the bus subscriber (per-call path: keep it to dict and list updates) ---------------------
    def __call__(self, e: Event) -> None:
        h = self._handlers.get(e["ev"])
        if h is not None:
            h(e)

    @property
    def events(self) -> frozenset[str]:
        """The events it reads: the bus calls it for no other (a call's first two events among them)."""
        return frozenset(self._handlers)

    def _label(self, model: str | None) -> str:
        if model is None:
            return NONE
        return model if model in self._known else UNKNOWN

    # A call's model, operation, makespan and queue wait come with its last event (``call.completed``
    # or ``call.failed``), so the per-call path calls this subscriber once per call, not three times.
    def _completed(self, e: Event) -> None:
        key = (self._label(e.get("model")), e.get("op") or "?")
        outcome = "ok" if e["status"] < 400 else "model_error"
        ck = (*key, outcome)
        counts = self._call_counts
        counts[ck] = counts.get(ck, 0) + 1
        _observe(self._makespan, key, e.get("makespan_s") or 0.0)
        queued = e.get("queue_s")
        if queued is not None:
            _observe(self._queue_wait, key, queued)
        service = e.get("service_s")
        if service is not None:
            _observe(self._service, key, service)

    def _failed(self, e: Event) -> None:
        ck = (self._label(e.get("model")), e.get("op") or "?", "failed")
        self._call_counts[ck] = self._call_counts.get(ck, 0) + 1

    def _requeued(self, e: Event) -> None:
        m = self._label(e.get("model"))
        self._retries[m] = self._retries.get(m, 0) + 1

    # -- servers and specs ----------------------------------------------------------------------
    def _requested(self, e: Event) -> None:
        self._server_spec[e["server"]] = spec = e["spec"]
        key = (spec, e.get("reason") or "")
        self._starts[key] = self._starts.get(key, 0) + 1

    def _adopted(self, e: Event) -> None:
        self._server_spec[e["server"]] = e["spec"]

    def _ready(self, e: Event) -> None:
        # Discovery happens when a spec's first server is ready: its models become labels.
        self._known = frozenset(m for rt in self.pool.specs.values() if not rt.removed for m in rt.models)

    def _server_failed(self, e: Event) -> None:
        spec = self._server_spec.pop(e["server"], None)
        if spec is not None:
            self._failures[spec] = self._failures.get(spec, 0) + 1

    def _server_preempted(self, e: Event) -> None:
        spec = e.get("spec") or self._server_spec.get(e["server"])
        if spec is not None:
            self._preemptions[spec] = self._preemptions.get(spec, 0) + 1

    def _server_stopped(self, e: Event) -> None:
        self._server_spec.pop(e["server"], None)

    def _spec_held(self, e: Event) -> None:
        self._held[e["spec"]] = self._held.get(e["spec"], 0) + 1

    def _capacity(self, e: Event) -> None:
        self._sample = e

    # -- scrape ---------------------------------------------------------------------------------
    def expose(self) -> bytes:
        """The text exposition format of everything below."""
        return generate_latest(self.registry)

    async def endpoint(self, request: Request, authorized: Callable[[Request], bool]) -> Reply:
        if not authorized(request):
            return error_reply("Unauthorized", "missing or wrong balancer token", 401)
        return 200, CONTENT_TYPE, self.expose()

    def collect(self) -> Iterator[Any]:
        specs = list(self.pool.specs)
        c = CounterMetricFamily(
            PREFIX + "calls", "Calls by model, op and outcome (ok, model_error: the model's own error "
            "answer, failed: refused or not served by the balancer)", labels=("model", "op", "outcome"),
        )  # fmt: skip
        for (model, op, outcome), n in sorted(self._call_counts.items()):
            c.add_metric((model, op, outcome), n)
        yield c
        c = CounterMetricFamily(
            PREFIX + "call_retries", "Calls re-queued after their server was lost", labels=("model",)
        )
        for model, n in sorted(self._retries.items()):
            c.add_metric((model,), n)
        yield c
        for name, doc, hists in (
            ("makespan_seconds", "Received to answered, per call", self._makespan),
            ("queue_wait_seconds", "Received to first dispatch to a server", self._queue_wait),
            ("service_seconds", "Dispatch to full answer of the final attempt, at the balancer",
             self._service),
        ):  # fmt: skip
            h = HistogramMetricFamily(PREFIX + name, doc, labels=("model", "op"))
            for key, hist in sorted(hists.items()):
                buckets, total = hist.family_args()
                h.add_metric(key, buckets, total)
            yield h
        yield self._per_spec(
            "server_starts", "Servers requested, by spec and reason", ("spec", "reason"), self._starts
        )
        yield self._per_spec(
            "server_failures", "Servers that failed (start failure, lost, start-up timeout)", ("spec",),
            {(s,): self._failures.get(s, 0) for s in specs},
        )  # fmt: skip
        yield self._per_spec(
            "server_preemptions", "Servers whose jobs the scheduler preempted (lost, not failed)",
            ("spec",), {(s,): self._preemptions.get(s, 0) for s in specs},
        )  # fmt: skip
        yield self._per_spec(
            "spec_holds", "Times a spec was held after failed starts", ("spec",),
            {(s,): self._held.get(s, 0) for s in specs},
        )  # fmt: skip
        yield from self._state_gauges(specs)
        yield from self._forecast_gauges()

    @staticmethod
    def _per_spec(name: str, doc: str, labels: tuple[str, ...], counts: Mapping[_Labels, int]) -> Any:
        c = CounterMetricFamily(PREFIX + name, doc, labels=labels)
        for key, n in sorted(counts.items()):
            c.add_metric(key, n)
        return c

    def _state_gauges(self, specs: list[str]) -> Iterator[Any]:
        pool = self.pool
        by: dict[tuple[str, str], int] = {(s, st): 0 for s in specs for st in _STATES}
        for s in pool.live():
            key = (s.spec.name, s.state.value)
            by[key] = by.get(key, 0) + 1
        g = GaugeMetricFamily(PREFIX + "servers", "Live servers by spec and state", labels=("spec", "state"))
        for key, n in sorted(by.items()):
            g.add_metric(key, n)
        yield g
        g = GaugeMetricFamily(PREFIX + "spec_held", "1 while a spec is held (no starts)", labels=("spec",))
        for name, rt in pool.specs.items():
            g.add_metric((name,), 1 if rt.held else 0)
        yield g
        disp = pool.dispatcher
        g = GaugeMetricFamily(PREFIX + "queue_depth", "Calls waiting for a server slot", labels=("model",))
        depth: dict[str, int] = dict.fromkeys(self._known, 0)
        for model in disp.queues:
            label = self._label(model)
            depth[label] = depth.get(label, 0) + disp.waiting(model)
        for model, n in sorted(depth.items()):
            g.add_metric((model,), n)
        yield g
        yield GaugeMetricFamily(
            PREFIX + "calls_in_flight", "Evaluation calls in the balancer", self.inflight()
        )

    def _forecast_gauges(self) -> Iterator[Any]:
        """Capacity and forecast figures, each only where present."""
        sample = self._sample
        for key, name, doc in (
            ("idle_cpus", "cluster_idle_cpus", "Idle CPUs at the last capacity sample"),
            ("total_cpus", "cluster_total_cpus", "Total CPUs at the last capacity sample"),
            ("pending_jobs", "cluster_pending_jobs", "Pending jobs at the last capacity sample"),
            ("predicted_idle_cpus", "forecast_idle_cpus", "Idle CPUs the forecast predicted for the "
             "last capacity sample"),
            ("expected_wait_s", "cluster_expected_wait_seconds", "The scheduler's expected wait for a "
             "job of ours at the last capacity sample"),
        ):  # fmt: skip
            v = sample.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                yield GaugeMetricFamily(PREFIX + name, doc, float(v))
        if self.forecast is None:
            return
        st = self.forecast.status()
        yield GaugeMetricFamily(PREFIX + "forecast_enabled", "1 while the forecast may steer scaling",
                                1 if st.get("enabled") else 0)  # fmt: skip
        yield GaugeMetricFamily(PREFIX + "forecast_in_use", "1 while scaling uses a forecast",
                                1 if st.get("in_use") else 0)  # fmt: skip
        for key, name, doc in (
            ("backtest_mae", "forecast_backtest_mae", "Backtest MAE (idle CPUs) of the forecaster in use"),
            ("baseline_mae", "forecast_baseline_mae", "Backtest MAE (CPUs) of the best baseline forecaster"),
        ):
            v = st.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                yield GaugeMetricFamily(PREFIX + name, doc, float(v))


def _observe(hists: dict[tuple[str, str], _Hist], key: tuple[str, str], v: float) -> None:
    h = hists.get(key)
    if h is None:
        h = hists[key] = _Hist()
    h.buckets[bisect_left(BUCKETS, v)] += 1
    h.sum += v
