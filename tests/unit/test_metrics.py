"""Metrics label sets stay bounded (``GET /metrics`` of a real balancer against its journal:
inproc/test_metrics_journal)."""

from __future__ import annotations

from typing import Any

from balancer.ops.metrics import Metrics


class _Spec:
    def __init__(self, name: str, models: set[str]) -> None:
        self.models, self.held, self.name = models, False, name


class _Pool:
    """Just what ``Metrics`` reads of a pool."""

    def __init__(self) -> None:
        from balancer.calls.dispatcher import Dispatcher

        self.specs = {"a": _Spec("a", {"m"})}
        self.dispatcher = Dispatcher()

    def live(self) -> list[Any]:
        return []


def test_label_sets_stay_bounded() -> None:
    """Ten thousand calls with invented model names and server ids add no series."""
    metrics = Metrics(_Pool())  # type: ignore[arg-type]
    before = len(metrics.expose().splitlines())
    for i in range(10_000):
        metrics({"ev": "call.failed", "call": i, "status": 400, "op": "Evaluate", "model": f"x{i}", "m": 0.0})
        metrics({"ev": "server.requested", "server": f"s{i}", "spec": "a", "reason": "demand", "m": 0.0})
        metrics({"ev": "server.failed", "server": f"s{i}", "reason": "lost", "m": 0.0})
    text = metrics.expose().decode()
    assert len(text.splitlines()) <= before + 4  # the first series of each kind, no more
    assert 'umbridge_balancer_calls_total{model="_unknown",op="Evaluate",outcome="failed"} 10000.0' in text
    assert 'umbridge_balancer_server_failures_total{spec="a"} 10000.0' in text
    assert not metrics._server_spec  # nothing kept per finished server (nor per call: none is kept)


def test_preempted_servers_are_counted_apart_from_failures() -> None:
    metrics = Metrics(_Pool())  # type: ignore[arg-type]
    metrics({"ev": "server.requested", "server": "s1", "spec": "a", "reason": "demand", "m": 0.0})
    metrics({"ev": "server.preempted", "server": "s1", "spec": "a", "job": "7", "host": "n1", "m": 0.0})
    metrics({"ev": "server.stopped", "server": "s1", "reason": "job 7 PREEMPTED", "m": 0.0})
    text = metrics.expose().decode()
    assert 'umbridge_balancer_server_preemptions_total{spec="a"} 1.0' in text
    assert 'umbridge_balancer_server_failures_total{spec="a"} 0.0' in text
    assert 'umbridge_balancer_servers{spec="a",state="preempted"} 0.0' in text  # a state like any other
