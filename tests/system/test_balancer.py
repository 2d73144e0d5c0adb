"""End-to-end behaviour of the balancer with real model servers and the official umbridge client."""

from __future__ import annotations

import os
import signal
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import umbridge

from tests.helpers import MODELS, pid_alive, test_model_spec, wait_until

EXTRA = {"TEST_EXTRA_MODELS": "1"}


def test_every_endpoint_and_two_models(start_balancer):
    b = start_balancer(
        [
            test_model_spec(max_servers=2),
            {"name": "eigen", "command": [sys.executable, str(MODELS / "eigen.py")], "max_servers": 1},
        ]
    )
    # Both specs are discovered from /Info (no models configured): the client sees both models.
    assert sorted(umbridge.supported_models(b.url)) == ["forward", "posterior"]
    m = umbridge.HTTPModel(b.url, "forward")
    assert m.supports_evaluate() and m.supports_gradient()
    assert m.supports_apply_jacobian() and m.supports_apply_hessian()
    assert m.get_input_sizes() == [1] and m.get_output_sizes() == [1]
    assert m([[3.0]]) == [[6.0]]
    assert m.gradient(0, 0, [[1.0]], [1.5]) == [3.0]
    assert m.apply_jacobian(0, 0, [[1.0]], [2.0]) == [4.0]
    assert m.apply_hessian(0, 0, 0, [[1.0]], [1.0], [1.0]) == [0.0]
    e = umbridge.HTTPModel(b.url, "posterior")
    assert e([[10]]) == [[1.0]]
    # Once servers are up, metadata calls never start another server and are answered by the cache.
    requested = len(b.events("server.requested"))
    for _ in range(20):
        umbridge.HTTPModel(b.url, "forward").get_input_sizes()
        umbridge.supported_models(b.url)
    assert len(b.events("server.requested")) == requested
    received = {e["call"]: e for e in b.events("call.received")}
    meta_done = [
        e
        for e in b.events("call.completed")
        if received[e["call"]]["op"] in ("Info", "InputSizes", "OutputSizes", "ModelInfo")
    ]
    assert len(meta_done) >= 60 and sum(e["cached"] for e in meta_done) >= 60 - 6


def test_metadata_before_any_server_starts_exactly_one(start_balancer):
    b = start_balancer([test_model_spec(models=["forward"], max_servers=4)])
    assert b.events("server.requested") == []  # min_servers = 0: nothing runs until asked
    body = {"name": "forward"}
    with ThreadPoolExecutor(6) as ex:
        answers = list(ex.map(lambda _: requests.post(f"{b.url}/ModelInfo", json=body, timeout=60), range(6)))
    assert all(r.status_code == 200 and r.json()["support"]["Evaluate"] for r in answers)
    assert len(b.events("server.requested")) == 1


def _check_concurrency_from_journal(events: list[dict], limit: int) -> dict[str, int]:
    """Replay dispatch/finish events per server; return the peak number of calls at once."""
    running: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    where: dict[int, str] = {}
    for e in events:
        if e["ev"] == "call.dispatched":
            where[e["call"]] = e["server"]
            running[e["server"]] += 1
            peak[e["server"]] = max(peak[e["server"]], running[e["server"]])
            assert running[e["server"]] <= limit, f"server {e['server']} exceeded concurrency {limit}"
        elif e["ev"] in ("call.completed", "call.requeued") and e.get("server") and e["call"] in where:
            running[where.pop(e["call"])] -= 1
    return dict(peak)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_64_concurrent_calls_over_4_servers(start_balancer, concurrency):
    b = start_balancer(
        [
            test_model_spec(
                models=["forward"],
                min_servers=4,
                max_servers=4,
                concurrency=concurrency,
                env={"TEST_DELAY": "20"},
            )
        ]
    )
    wait_until(lambda: len(b.events("server.ready")) == 4, 60, what="4 servers ready")
    model = umbridge.HTTPModel(b.url, "forward")
    with ThreadPoolExecutor(64) as ex:
        outs = list(ex.map(lambda i: model([[float(i)]]), range(64)))
    assert outs == [[[2.0 * i]] for i in range(64)]
    peak = _check_concurrency_from_journal(b.events(), concurrency)
    assert len(peak) == 4  # every server took calls
    assert max(peak.values()) == concurrency  # and the cap was used, never exceeded


def test_kill_9_of_a_server_during_a_call_retries_elsewhere(start_balancer):
    b = start_balancer(
        [test_model_spec(models=["forward"], min_servers=2, max_servers=2, env={"TEST_DELAY": "3000"})]
    )
    wait_until(lambda: len(b.events("server.ready")) == 2, 60, what="2 servers ready")
    model = umbridge.HTTPModel(b.url, "forward")
    t, result, dispatched = b.call_in_background(model, 21.0)
    victim = b.find("server.registered", server=dispatched["server"])
    os.kill(victim["pid"], signal.SIGKILL)
    t.join(60)
    assert result == [[[42.0]]]
    requeued = b.wait_event("call.requeued", call=dispatched["call"])
    assert requeued["server"] == dispatched["server"]
    assert b.find("server.failed", server=dispatched["server"])
    retry = b.find("call.dispatched", call=dispatched["call"], attempt=2)
    assert retry and retry["server"] != dispatched["server"]
    assert b.find("call.completed", call=dispatched["call"])["status"] == 200


def test_model_error_reaches_client_unchanged(start_balancer):
    b = start_balancer([test_model_spec(max_servers=1)], env=EXTRA)
    via = requests.post(f"{b.url}/Evaluate", json={"name": "fail", "input": [[1.0]]}, timeout=30)
    server_url = b.find("server.ready") and b.find("server.registered")["url"]
    direct = requests.post(f"{server_url}/Evaluate", json={"name": "fail", "input": [[1.0]]}, timeout=30)
    assert via.status_code == direct.status_code == 500
    assert via.content == direct.content
    assert via.headers["Content-Type"] == direct.headers["Content-Type"]
    with pytest.raises(Exception) as via_exc:
        umbridge.HTTPModel(b.url, "fail")([[1.0]])
    with pytest.raises(Exception) as direct_exc:
        umbridge.HTTPModel(server_url, "fail")([[1.0]])
    assert type(via_exc.value) is type(direct_exc.value)
    assert model_ok(b)


def model_ok(b) -> bool:
    return umbridge.HTTPModel(b.url, "forward")([[1.0]]) == [[2.0]]


def test_nan_output_passes_through_as_sent(start_balancer):
    b = start_balancer([test_model_spec(max_servers=1)], env=EXTRA)
    via = requests.post(f"{b.url}/Evaluate", json={"name": "nan", "input": [[1.0]]}, timeout=30)
    server_url = b.find("server.registered")["url"]
    direct = requests.post(f"{server_url}/Evaluate", json={"name": "nan", "input": [[1.0]]}, timeout=30)
    assert via.status_code == direct.status_code == 200
    assert via.content == direct.content and b"nan" in via.content and b"inf" in via.content
    # The official client sees exactly what it would see from the model server directly.
    outcomes = []
    for url in (b.url, server_url):
        try:
            outcomes.append(repr(umbridge.HTTPModel(url, "nan")([[1.0]])))
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    ("path", "body", "status", "kind"),
    [
        ("/Evaluate", b"{not json", 400, "InvalidInput"),
        ("/Evaluate", b'{"input": [[1.0]]}', 400, "InvalidInput"),
        ("/Evaluate", b'{"name": "nosuchmodel", "input": [[1.0]]}', 400, "ModelNotFound"),
        ("/Evaluate", b'{"name": "forward", "input": "1.0"}', 400, "InvalidInput"),
        ("/Evaluate", b'{"name": "forward", "input": [["a"]]}', 400, "InvalidInput"),
        ("/Evaluate", b'{"name": 7, "input": [[1.0]]}', 400, "InvalidInput"),
        ("/Evaluate", b'{"name": "forward", "input": [[1.0, 2.0]]}', 400, "InvalidInput"),
        ("/Evaluate", b'{"name": "forward", "input": [[1.0], [2.0]]}', 400, "InvalidInput"),
        (
            "/Gradient",
            b'{"name": "forward", "input": [[1.0]], "outWrt": 0, "inWrt": 3, "sens": [1.0]}',
            400,
            "InvalidInput",
        ),
        (
            "/Gradient",
            b'{"name": "forward", "input": [[1.0]], "outWrt": 0, "inWrt": 0, "sens": [1, 2]}',
            400,
            "InvalidInput",
        ),
        (
            "/ApplyJacobian",
            b'{"name": "forward", "input": [[1.0]], "outWrt": 0, "inWrt": 0}',
            400,
            "InvalidInput",
        ),
        ("/InputSizes", b'{"name": "nosuchmodel"}', 400, "ModelNotFound"),
        ("/Evaluate", b'{"name": "forward", "input": [[' + b"1.0," * 40000 + b"1.0]]}", 413, "InvalidInput"),
        ("/EvaluateShMem", b'{"name": "forward"}', 400, "UnsupportedFeature"),
    ],
)
def test_bad_input_gets_umbridge_error_json(shared_balancer, path, body, status, kind):
    b = shared_balancer
    r = requests.post(b.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == kind and err["message"]
    assert model_ok(b)  # and the balancer serves the next call


@pytest.fixture(scope="module")
def shared_balancer(tmp_path_factory):
    from tests.helpers import BalancerProc

    b = BalancerProc(
        tmp_path_factory.mktemp("shared"),
        [test_model_spec(models=["forward"], min_servers=1)],
        max_body_mb=0.1,
    )
    yield b
    assert b.stop() == 0


def test_shmem_probe_falls_back_to_http(shared_balancer):
    m = umbridge.HTTPModel(shared_balancer.url, "forward", use_shmem=True)
    assert not m.supports_shmem()
    assert m([[2.0]]) == [[4.0]]


def test_registration_requires_the_token(shared_balancer):
    b = shared_balancer
    doc = {"server": "s1", "url": "http://127.0.0.1:1"}
    wrong = {"Authorization": "Bearer wrong"}
    r = requests.post(f"{b.control_url}/api/servers/register", json=doc, timeout=10, headers=wrong)
    assert r.status_code == 401 and r.json()["error"]["type"] == "Unauthorized"
    r = requests.post(f"{b.control_url}/api/servers/s1/lease", json={}, timeout=10)
    assert r.status_code == 401
    # Refusals are journaled at most once per 5 s, each line with its count.
    wait_until(lambda: sum(e.get("count", 1) for e in b.events("auth.refused")) >= 2, 15)
    # The real server s1 keeps its registration.
    assert model_ok(b)


def test_idle_servers_stop_down_to_min(start_balancer):
    b = start_balancer(
        [
            test_model_spec(
                models=["forward"],
                min_servers=1,
                max_servers=3,
                idle_timeout_s=0.5,
                env={"TEST_DELAY": "500"},  # 12 calls: 6 s on one server, longer than a loaded start
            )
        ]
    )
    model = umbridge.HTTPModel(b.url, "forward")
    with ThreadPoolExecutor(6) as ex:
        list(ex.map(lambda i: model([[1.0]]), range(12)))
    assert len(b.events("server.ready")) >= 2  # demand grew the pool
    wait_until(
        lambda: len([e for e in b.events("server.stopped")]) == len(b.events("server.ready")) - 1,
        30,
        what="idle servers stopped",
    )
    assert all(e["reason"] == "idle" for e in b.events("scale.decision") if e["action"] == "stop")
    assert model([[1.0]]) == [[2.0]]  # the min_servers one still serves


def test_crash_looping_spec_is_held_and_calls_fail_cleanly(start_balancer):
    b = start_balancer(
        [
            {
                "name": "broken",
                "command": [sys.executable, "-c", "raise SystemExit(3)"],
                "models": ["forward"],
                "max_start_failures": 2,
            }
        ]
    )
    r = requests.post(f"{b.url}/Evaluate", json={"name": "forward", "input": [[1.0]]}, timeout=60)
    assert r.status_code == 503
    assert "failed to start 2 times" in r.json()["error"]["message"]
    held = b.wait_event("spec.held", spec="broken")
    assert held["failures"] == 2
    assert len(b.events("server.requested")) == 2  # held: not resubmitted again


def test_shutdown_leaves_no_process_behind(start_balancer):
    b = start_balancer([test_model_spec(models=["forward"], min_servers=3, max_servers=3)])
    wait_until(lambda: len(b.events("server.ready")) == 3, 60, what="3 servers ready")
    pids = b.server_pids()
    assert len(pids) == 6 and all(pid_alive(p) for p in pids)
    assert b.stop(signal.SIGTERM) == 0
    assert not [p for p in pids if pid_alive(p)]
    assert b.find("balancer.stopped")
    assert len(b.events("server.stopped")) == 3


def test_inflight_calls_finish_during_graceful_shutdown(start_balancer):
    b = start_balancer([test_model_spec(models=["forward"], min_servers=1, env={"TEST_DELAY": "1500"})])
    wait_until(lambda: b.find("server.ready"), 60)
    model = umbridge.HTTPModel(b.url, "forward")
    t, result, _ = b.call_in_background(model, 5.0)
    b.proc.send_signal(signal.SIGINT)
    t.join(30)
    assert result == [[[10.0]]]
    assert b.stop() == 0


def test_launcher_stops_its_server_when_the_balancer_disappears(start_balancer):
    b = start_balancer([test_model_spec(models=["forward"], min_servers=1)], lease_s=2.0)
    wait_until(lambda: b.find("server.ready"), 60)
    pids = b.server_pids()
    b.kill()  # SIGKILL: no shutdown, nobody cancels anything
    # Within the lease time (2 s) plus the server's stop grace, launcher and server are gone.
    wait_until(lambda: not any(pid_alive(p) for p in pids), 15, what="launcher and server gone")


def test_real_run_journal_is_analysed_and_plotted(start_balancer, tmp_path):
    """A journal from a real run goes through `balancer analyze` and `balancer plot` (issue: analysis)."""
    import json
    import subprocess

    b = start_balancer([test_model_spec(models=["forward"], max_servers=2, env={"TEST_DELAY": "10"})])
    model = umbridge.HTTPModel(b.url, "forward")
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda i: model([[1.0]]), range(40)))
    assert b.stop() == 0
    cli = [sys.executable, "-m", "balancer.cli"]
    r = subprocess.run(
        [*cli, "analyze", str(b.journal), "--json"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    m = run["metrics"]
    assert m["evaluations"] == 40 and m["failed_calls"] == 0
    assert 1 <= m["server_starts"] <= 2 and m["makespan_p50_s"] >= 0.01  # the model sleeps 10 ms
    out = tmp_path / "plots"
    r = subprocess.run(
        [*cli, "plot", str(b.journal), "-o", str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)


def _raw_http(url: str, data: bytes) -> bytes:
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_frontend_http_edge_cases(shared_balancer):
    """The frontend is our own (asyncio + llhttp): pipelining, chunked bodies, HTTP/1.0, garbage."""
    b = shared_balancer
    body = b'{"name": "forward", "input": [[1.0]]}'
    req = b"POST /Evaluate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s"
    out = _raw_http(b.url, req % (len(body), b"", body) + req % (len(body), b"Connection: close\r\n", body))
    assert out.count(b"HTTP/1.1 200 OK") == 2 and out.count(b'{"output": [[2.0]] }') == 2
    chunked = b"POST /Evaluate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    assert b'{"output": [[2.0]] }' in _raw_http(b.url, chunked)
    old = b"POST /Evaluate HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert b'{"output": [[2.0]] }' in _raw_http(b.url, old)  # and the server closed: recv ended
    bad = _raw_http(b.url, b"HELLO WORLD\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400") and b'"InvalidInput"' in bad
    r = requests.get(f"{b.url}/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"
    assert model_ok(b)


def test_rejected_call_is_one_call_in_the_journal(shared_balancer):
    b = shared_balancer
    n = len(b.events("call.failed"))
    requests.post(f"{b.url}/Evaluate", data=b'{"input": [[1.0]]}', timeout=10)
    failed = wait_until(lambda: b.events("call.failed")[n:], 10)[0]
    received = b.find("call.received", call=failed["call"])
    assert received and received["op"] == "Evaluate" and failed["status"] == 400
