"""``GET /metrics`` of a balancer in-process (real model servers, tests/fakes.py): parsed with
prometheus-client's own parser, the figures agree with the journal (bounded label sets:
unit/test_metrics)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import umbridge
from prometheus_client.parser import text_string_to_metric_families

from balancer.ops.metrics import BUCKETS
from tests.fakes import serve_in_thread
from tests.helpers import test_model_spec, wait_until

P = "umbridge_balancer_"
_STATE_OF = {
    "server.requested": "requested",
    "server.adopted": "requested",
    "server.started": "starting",
    "server.registered": "registered",
    "server.ready": "ready",
    "server.draining": "draining",
    "server.stopping": "stopping",
}


def scrape(url: str, token: str) -> dict[str, list[Any]]:
    r = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def by_labels(samples: list[Any], *names: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[n] for n in names): s.value for s in samples}


def test_metrics_agree_with_journal(tmp_path: Path) -> None:
    spec = test_model_spec(min_servers=2, max_servers=2, idle_timeout_s=600, concurrency=2)
    with serve_in_thread(tmp_path, [spec], env={"TEST_EXTRA_MODELS": "1"}) as b:
        token = b.token()
        assert requests.get(b.url + "/metrics", timeout=10).status_code == 401  # the token is required
        wait_until(lambda: len(b.events("server.ready")) == 2, 60, what="two servers ready")

        forward = umbridge.HTTPModel(b.url, "forward")  # Info, ModelInfo on the way
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda x: forward([[x]]), [float(i) for i in range(40)]))
        assert outs[3] == [[6.0]]
        assert forward.gradient(0, 0, [[1.0]], [1.0]) == [2.0]
        for name in ("no-such-model", "another-invented-name"):  # a client's model names: one label
            r = requests.post(b.url + "/Evaluate", json={"name": name, "input": [[1.0]]}, timeout=10)
            assert r.status_code == 400
        r = requests.post(b.url + "/Evaluate", json={"name": "fail", "input": [[1.0]]}, timeout=10)
        assert r.status_code == 500  # the model's own error answer, passed on

        # The demand policy takes its first capacity sample after its first scaling pass, not before.
        wait_until(lambda: b.events("capacity.sample"), 30, what="the first capacity sample")
        m = scrape(b.url, token)
        events = b.events()
        received = {e["call"]: e for e in events if e["ev"] == "call.received"}

        def key(e: dict[str, Any]) -> tuple[str, str]:
            c = received[e["call"]]
            model = c["model"]
            label = "_none" if model is None else model if model in ("forward", "fail", "nan") else "_unknown"
            return label, c["op"]

        completed = [e for e in events if e["ev"] == "call.completed"]
        ok = Counter(key(e) for e in completed if e["status"] < 400)
        model_error = Counter(key(e) for e in completed if e["status"] >= 400)
        failed = Counter(key(e) for e in events if e["ev"] == "call.failed")
        calls = by_labels(m[P + "calls_total"], "model", "op", "outcome")
        want = {(*k, "ok"): n for k, n in ok.items()}
        want |= {(*k, "model_error"): n for k, n in model_error.items()}
        want |= {(*k, "failed"): n for k, n in failed.items()}
        assert calls == want
        assert calls[("forward", "Evaluate", "ok")] == 40
        assert calls[("forward", "Gradient", "ok")] == 1
        assert calls[("_unknown", "Evaluate", "failed")] == 2
        assert calls[("fail", "Evaluate", "model_error")] == 1

        # Histograms: one observation per completed call (makespan), per first dispatch (queue wait),
        # per forwarded answer (service); +Inf bucket == count.
        makespan = by_labels(m[P + "makespan_seconds_count"], "model", "op")
        assert makespan == dict(Counter(key(e) for e in completed))
        inf_buckets = [s for s in m[P + "makespan_seconds_bucket"] if s.labels["le"] == "+Inf"]
        inf = by_labels(inf_buckets, "model", "op")
        assert inf == makespan
        assert len([s for s in m[P + "makespan_seconds_bucket"] if s.labels["model"] == "forward"
                    and s.labels["op"] == "Evaluate"]) == len(BUCKETS) + 1  # fmt: skip
        first = Counter(key(e) for e in events if e["ev"] == "call.dispatched" and e["attempt"] == 1)
        assert by_labels(m[P + "queue_wait_seconds_count"], "model", "op") == dict(first)
        service = Counter(key(e) for e in completed if e.get("service_s") is not None)
        assert by_labels(m[P + "service_seconds_count"], "model", "op") == dict(service)
        fwd = ("forward", "Evaluate")
        total = sum(e["service_s"] for e in completed if e.get("service_s") is not None and key(e) == fwd)
        assert abs(by_labels(m[P + "service_seconds_sum"], "model", "op")[fwd] - total) < 1e-6

        # Servers by spec and state, from the journal's server events.
        state: dict[str, str] = {}
        for e in events:
            if e["ev"] in _STATE_OF:
                state[e["server"]] = _STATE_OF[e["ev"]]
            elif e["ev"] in ("server.failed", "server.stopped"):
                state.pop(e["server"], None)
        servers = {k: v for k, v in by_labels(m[P + "servers"], "spec", "state").items() if v}
        assert servers == {("testmodel", s): n for s, n in Counter(state.values()).items()}
        assert servers == {("testmodel", "ready"): 2}
        starts = sum(s.value for s in m[P + "server_starts_total"])
        assert starts == len([e for e in events if e["ev"] == "server.requested"]) == 2
        assert by_labels(m[P + "server_failures_total"], "spec") == {("testmodel",): 0}
        assert by_labels(m[P + "queue_depth"], "model") == {("fail",): 0, ("forward",): 0, ("nan",): 0}
        assert m[P + "calls_in_flight"][0].value == 0
        # Capacity and forecast figures: the last capacity sample's, and the forecast service's switches.
        sample = [e for e in events if e["ev"] == "capacity.sample"][-1]
        assert m[P + "cluster_idle_cpus"][0].value == sample["idle_cpus"]
        assert m[P + "cluster_total_cpus"][0].value == sample["total_cpus"]
        assert m[P + "forecast_enabled"][0].value == 1 and m[P + "forecast_in_use"][0].value == 0
        # No per-call or per-server label anywhere.
        for samples in m.values():
            for s in samples:
                assert not {"call", "server", "id"} & set(s.labels)
        # The launchers' listener serves it too (for a Prometheus on another host), with the token.
        control = b.find("balancer.started")["control_url"]  # type: ignore[index]
        assert requests.get(control + "/metrics", timeout=10).status_code == 401
        assert by_labels(scrape(control, token)[P + "calls_total"], "model", "op", "outcome") == calls
