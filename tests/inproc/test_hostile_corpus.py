"""A corpus of hostile requests against a real in-process balancer (issue 21, item 10).

Each case is sent on a fresh connection as: good request(s), the hostile bytes, then a good request
with ``Connection: close``. What must come back, within ``TIMEOUT_S``: a 200 for every good request
before the hostile one, in order (no answer lost); for the hostile one a 4xx in UM-Bridge's error
shape (``{"error": {"type", "message"}}``), or a 200 where the bytes are in fact a valid call, or
nothing and a close; nothing else (no 500, no traceback, no hang). After the corpus the balancer
serves the official umbridge client normally. Slow senders run against small idle and minimum-rate
limits (1 s and 0.5 s instead of 75 s and 30 s), and the operator and capacity APIs get generated
bodies (Hypothesis) whose answers must stay in that shape and bounded in size.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import umbridge
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import TOKEN, Run, model_server, running, serve_in_thread
from tests.helpers import test_model_spec, wait_until

TIMEOUT_S = 5.0  # the longest any case may take to answer or close
BODY = b'{"name": "forward", "input": [[1.0]]}'


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n%s\r\n"
    return head % (path.encode(), len(body), extra) + body


GOOD = post("/Evaluate", BODY)
LAST = post("/Evaluate", BODY, b"Connection: close\r\n")
DEEP = b"[" * 200_000 + b"]" * 200_000

# name: the hostile bytes (each case may also be a 200 only where listed in MAY_SUCCEED).
CORPUS: dict[str, bytes] = {
    # truncated and malformed
    "garbage": b"\x00\x01\x02 not http at all\r\n\r\n",
    "bad version": b"GET /Info HTTP/7.1\r\nHost: localhost\r\n\r\n",
    "negative length": b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n",
    "two lengths": b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n"
    b"Content-Length: 4\r\n\r\n",
    "chunked and length": b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "bad chunk": b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "upgrade": b"GET /Info HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    "no host": b"GET /Info HTTP/1.1\r\n\r\n",
    "foreign host": b"GET /Info HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    "header no colon": b"GET /Info HTTP/1.1\r\nHost: localhost\r\nnocolon\r\n\r\n",
    # oversized
    "huge length": b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999\r\n\r\n",
    "huge length digits": b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
    + b"9" * 40
    + b"\r\n\r\n",
    "long url": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "many headers": b"GET /Info HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: b\r\n" * 500 + b"\r\n",
    "big chunked": b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"10000\r\n"
    + b"x" * 0x10000
    + b"\r\n"
    + b"10000\r\n"
    + b"x" * 0x10000
    + b"\r\n0\r\n\r\n",
    # invalid encodings
    "bad utf-8 body": post("/Evaluate", b'{"name": "forward\xff\xfe", "input": [[1.0]]}'),
    "raw surrogate body": post("/Evaluate", b'{"name": "f\xed\xa0\x80", "input": [[1.0]]}'),
    "escaped surrogate name": post("/Evaluate", b'{"name": "\\ud800", "input": [[1.0]]}'),
    "surrogate config": post("/Evaluate", b'{"name": "forward", "input": [[1.0]], "config": {"\\udc00": 1}}'),
    "bad utf-8 path": b"GET /\xff\xfe\xed\xa0\x80 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "bad utf-8 header": b"GET /Info HTTP/1.1\r\nHost: localhost\r\nX-Bad: \xff\xed\xa0\x80\r\n\r\n",
    "bad utf-8 host": b"GET /Info HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
    "bad utf-8 token": b"GET /api/servers HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \xff\r\n\r\n",
    # deep nesting and huge numbers
    "deep input": post("/Evaluate", b'{"name": "forward", "input": ' + DEEP + b"}"),
    "deep config": post(
        "/Evaluate", b'{"name": "forward", "input": [[1.0]], "config": {"a": ' + DEEP + b"}}"
    ),
    "deep body": post("/Evaluate", DEEP),
    "huge float": post("/Evaluate", b'{"name": "forward", "input": [[1e999999]]}'),
    "huge int": post("/Evaluate", b'{"name": "forward", "input": [[' + b"9" * 5000 + b"]]}"),
    "huge int config": post(
        "/Evaluate", b'{"name": "forward", "input": [[1.0]], "config": {"a": 1' + b"0" * 30 + b"}}"
    ),
    "huge index": post(
        "/Gradient",
        b'{"name": "forward", "input": [[1.0]], "outWrt": 0, "inWrt": 1' + b"0" * 30 + b', "sens": [1.0]}',
    ),
    "nan input": post("/Evaluate", b'{"name": "forward", "input": [[NaN]]}'),
    "long name": post("/Evaluate", b'{"name": "' + b"x" * 50_000 + b'", "input": [[1.0]]}'),
    "long path": b"POST /Evaluate"
    + b"x" * 7000
    + b" HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    "not an object": post("/Evaluate", b"[1, 2, 3]"),
    "empty body": post("/Evaluate", b""),
}
# Valid calls after all (JSON the official server takes too), or a GET /Info the check lets through.
MAY_SUCCEED = {"huge float", "huge int", "nan input", "no host", "upgrade", "bad utf-8 header"}
RESPONSE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n((?:[^\r]+\r\n)*)\r\n")


def _responses(out: bytes) -> list[tuple[int, dict[str, Any]]]:
    found, pos = [], 0
    while pos < len(out):
        m = RESPONSE.match(out, pos)
        assert m, f"not an HTTP response at {pos}: {out[pos : pos + 300]!r}"
        pos = m.end()
        if m.group(1) == b"100":
            continue
        length = int(re.search(rb"Content-Length: (\d+)", m.group(2)).group(1))  # type: ignore[union-attr]
        body = out[pos : pos + length]
        assert len(body) == length, "a truncated answer"
        try:
            doc = json.loads(body)
        except ValueError:  # a model's own answer, passed on as it came (e.g. its NaN): no error
            assert m.group(1) == b"200", body[:300]
            doc = {"model's answer": body.decode(errors="replace")}
        found.append((int(m.group(1)), doc))
        pos += length
    return found


def _exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send ``data``, read until the server closes or TIMEOUT_S; (bytes, closed)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server answered and closed while we were still sending
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    return out, True
                out += chunk
        except TimeoutError:
            return out, False
        except OSError:
            return out, True  # reset after the answer
    return out, False


def _is_error(status: int, doc: dict[str, Any]) -> bool:
    err = doc.get("error")
    return (
        400 <= status < 500
        and isinstance(err, dict)
        and set(err) == {"type", "message"}
        and isinstance(err["message"], str)
        and len(err["message"]) <= 1000  # client input is echoed clipped
    )


@pytest.fixture(scope="module")
def bal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    spec = test_model_spec(models=["forward"], min_servers=1)
    with serve_in_thread(tmp_path_factory.mktemp("hostile"), [spec], max_body_mb=0.1) as b:
        wait_until(lambda: b.find("server.ready"), 30, what="the min_servers server ready")
        yield b


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port
    return port


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_request_gets_an_error_or_a_close_and_loses_no_good_answer(bal: Run, name: str) -> None:
    t0 = time.monotonic()
    out, closed = _exchange(_port(bal.url), GOOD + GOOD + CORPUS[name] + LAST)
    answers = _responses(out)
    assert time.monotonic() - t0 < TIMEOUT_S + 1
    assert len(answers) >= 2 and [s for s, _ in answers[:2]] == [200, 200], answers[:3]
    assert all(doc == {"output": [[2.0]]} for _, doc in answers[:2])
    rest = answers[2:]
    assert len(rest) <= 2, rest
    for status, doc in rest:
        ok = _is_error(status, doc) or (status == 200 and (name in MAY_SUCCEED or doc == {"output": [[2.0]]}))
        assert ok, (status, str(doc)[:300])
    assert not any(s >= 500 for s, _ in answers)
    # The answer to the hostile bytes came, or the connection closed: never a silent hang.
    assert closed or rest, "neither an answer nor a close"


def test_truncated_requests_then_eof_close_quietly(bal: Run) -> None:
    """A request cut off by the client's end of stream: the good answer before it, then a close."""
    for cut in (b"POST /Evaluate HTTP/1.1\r\nHost: loc", post("/Evaluate", BODY)[:-5], b"GET"):
        with socket.create_connection(("127.0.0.1", _port(bal.url)), timeout=TIMEOUT_S) as s:
            s.sendall(GOOD + cut)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        answers = _responses(out)
        assert [st_ for st_, _ in answers[:1]] == [200] and all(_is_error(*a) for a in answers[1:]), answers


def test_the_balancer_serves_normally_after_the_corpus(bal: Run) -> None:
    for name in sorted(CORPUS):  # once more, back to back, then the official client
        _exchange(_port(bal.url), CORPUS[name] + LAST)
    assert umbridge.HTTPModel(bal.url, "forward")([[3.0]]) == [[6.0]]
    assert not bal.events("balancer.error"), bal.events("balancer.error")


# -- the operator and capacity APIs, generated bodies ------------------------------------------------
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.text(min_size=300, max_size=600)  # long values: echoed clipped
)
json_doc = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=600), inner, max_size=3),
    max_leaves=8,
)
KEYS = ["min_servers", "max_servers", "backlog", "path", "enabled", "override", "idle_cpus", "expires_in_s"]
api_body = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=400), json_doc, max_size=3).map(
    orjson.dumps
) | st.binary(max_size=60)
# Routes that take a body and change nothing the next example depends on, or fail harmlessly.
ROUTES = [
    ("POST", "/api/specs/nope/scale"),
    ("POST", "/api/specs/" + "x" * 3000 + "/pause"),
    ("POST", "/api/servers/" + "s" * 3000 + "/drain"),
    ("POST", "/api/reload"),
    ("PUT", "/api/forecast"),
    ("GET", "/api/servers"),
]


def _api(url: str, method: str, path: str, body: bytes, token: str) -> tuple[int, dict[str, Any]]:
    head = b"%s %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n"
    data = head % (method.encode(), path.encode(), token.encode(), len(body)) + b"Connection: close\r\n\r\n"
    out, closed = _exchange(_port(url), data + body)
    answers = _responses(out)
    assert closed and len(answers) == 1, out[:300]
    return answers[0]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(ROUTES), api_body)
def test_operator_and_capacity_apis_answer_any_body_in_the_error_shape(
    bal: Run, route: tuple[str, str], body: bytes
) -> None:
    status, doc = _api(bal.url, *route, body, TOKEN)
    assert status == 200 or _is_error(status, doc), (status, str(doc)[:300])
    assert len(orjson.dumps(doc)) < 4000 or status == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "needle"),
    [
        ("POST", "/api/reload", {"path": "x" * 10_000}, "path must be an absolute path"),
        ("POST", "/api/specs/testmodel/scale", {"k" * 10_000: 1}, "unknown key"),
        ("PUT", "/api/forecast", {"enabled": "e" * 10_000}, '"enabled" must be'),
        ("PUT", "/api/forecast", {"k" * 10_000: 1}, "unknown key"),
        ("PUT", "/api/forecast", {"override": {"k" * 10_000: 1}}, "unknown key"),
        ("PUT", "/api/forecast", {"override": {"idle_cpus": ["c" * 10_000]}}, "must be a number"),
        ("POST", "/api/specs/" + "n" * 5000 + "/pause", {}, "no server spec"),
    ],
)
def test_operator_errors_echo_request_values_clipped(
    bal: Run, method: str, path: str, body: Any, needle: str
) -> None:
    status, doc = _api(bal.url, method, path, orjson.dumps(body), TOKEN)
    assert _is_error(status, doc) and needle in doc["error"]["message"], doc
    assert len(doc["error"]["message"]) < 600, len(doc["error"]["message"])


# -- slow senders, against small limits ----------------------------------------------------------------
def test_slow_senders_get_408_or_a_close_within_the_small_limits(tmp_path: Path) -> None:
    """A few bytes then a stall: 408 once the request arrives below the minimum rate after the grace;
    an idle keep-alive connection closes after the idle timeout. Limits: 0.5 s grace, 1 s idle."""
    spec = test_model_spec(models=["forward"], min_servers=1)

    async def main() -> None:
        async with model_server() as murl, running(tmp_path, [spec]) as h:
            h.serve(murl)
            await h.event("server.ready")
            front = h.balancer.front
            front.limits = dataclasses.replace(front.limits, idle_timeout_s=1.0, rate_grace_s=0.5)
            assert front._sweeper is not None
            front._sweeper.cancel()
            front._sweep()  # sweeps from now on at the new limits' pace
            port = _port(h.url)
            cases = [
                (b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nContent-Len", 408),  # in the head
                (b"POST /Evaluate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{", 408),  # body
                (GOOD, None),  # answered, then idle: closed
            ]
            for data, want in cases:
                t0 = time.monotonic()
                out, closed = await asyncio.to_thread(_exchange, port, data)
                took = time.monotonic() - t0
                answers = _responses(out)
                assert closed and took < 3.0, (data, took)
                if want is None:
                    assert [s for s, _ in answers] == [200]
                else:
                    assert [s for s, _ in answers] == [want] and _is_error(*answers[0]), answers
            async with h.http.post(h.url + "/Evaluate", data=BODY) as r:
                assert r.status == 200 and json.loads(await r.text()) == {"output": [[2.0]]}

    asyncio.run(main())
