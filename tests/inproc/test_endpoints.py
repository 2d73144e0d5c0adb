"""The client side of the balancer in-process: every UM-Bridge endpoint through the official umbridge
client, metadata, errors passed through unchanged, bad input, the HTTP edge cases of our own frontend.

A real Balancer and frontend over tests/fakes.py's fake scheduler, on an event loop of their own
thread (``in_thread``), with real model servers from ``models/`` that every start registers at once
(``Harness.serve``): these tests talk HTTP only, so no balancer process and no launcher is needed.
Signals, the CLI and real local server processes stay end-to-end in tests/system/test_balancer.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import umbridge

from balancer.control import api as control
from tests.fakes import Run, serve_in_thread
from tests.helpers import MODELS, test_model_spec, wait_until

EXTRA = {"TEST_EXTRA_MODELS": "1"}


def model_ok(b: Run) -> bool:
    return umbridge.HTTPModel(b.url, "forward")([[1.0]]) == [[2.0]]


def test_every_endpoint_and_two_models(tmp_path: Path):
    specs = [test_model_spec(max_servers=2), {"name": "eigen", "command": ["eigen"], "max_servers": 1}]
    with serve_in_thread(tmp_path, specs, scripts={"eigen": MODELS / "eigen.py"}) as b:
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


def test_metadata_before_any_server_starts_exactly_one(tmp_path: Path):
    with serve_in_thread(tmp_path, [test_model_spec(models=["forward"], max_servers=4)]) as b:
        assert b.events("server.requested") == []  # min_servers = 0: nothing runs until asked
        body = {"name": "forward"}
        with ThreadPoolExecutor(6) as ex:
            answers = list(
                ex.map(lambda _: requests.post(f"{b.url}/ModelInfo", json=body, timeout=60), range(6))
            )
        assert all(r.status_code == 200 and r.json()["support"]["Evaluate"] for r in answers)
        assert len(b.events("server.requested")) == 1


def test_model_error_reaches_client_unchanged(tmp_path: Path):
    with serve_in_thread(tmp_path, [test_model_spec(max_servers=1)], env=EXTRA) as b:
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


def test_nan_output_passes_through_as_sent(tmp_path: Path):
    with serve_in_thread(tmp_path, [test_model_spec(max_servers=1)], env=EXTRA) as b:
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


@pytest.fixture(scope="module")
def shared_balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One served balancer (a small body limit) for the tests that only send it requests; refused
    authentications are journaled per 0.2 s instead of per 5 s, so that a test need not wait."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(control, "AUTH_LOG_S", 0.2)
        spec = test_model_spec(models=["forward"], min_servers=1)
        with serve_in_thread(tmp_path_factory.mktemp("shared"), [spec], max_body_mb=0.1) as b:
            wait_until(lambda: b.find("server.ready"), 30, what="the min_servers server ready")
            yield b


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
    # Refusals are journaled at most once per interval, each line with its count.
    wait_until(lambda: sum(e.get("count", 1) for e in b.events("auth.refused")) >= 2, 15)
    # The real server s1 keeps its registration.
    assert model_ok(b)


def _raw_http(url: str, data: bytes) -> bytes:
    u = urlsplit(url)
    assert u.hostname and u.port
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
    req = b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n%s\r\n%s"
    out = _raw_http(b.url, req % (len(body), b"", body) + req % (len(body), b"Connection: close\r\n", body))
    assert out.count(b"HTTP/1.1 200 OK") == 2 and out.count(b'{"output": [[2.0]] }') == 2
    chunked = b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
    chunked += b"Connection: close\r\n\r\n"
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
