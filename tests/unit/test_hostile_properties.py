"""Hostile input, generated (issue 21, item 10): whatever bytes a client sends, the HTTP frontend's
parser and the UM-Bridge checks answer with a 4xx in UM-Bridge's error shape or a good answer, never
a 500, a traceback or a lost answer. Hypothesis generates the input; ``derandomize`` keeps CI
reproducible, and the example counts keep the file to a few seconds."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.calls.protocol import EVAL_OPS, META_OPS, ProtocolError, check_fields, check_sizes, parse_body
from balancer.http.connection import HttpProtocol
from balancer.http.messages import ECHO_MAX, HttpLimits, Reply, Request, clip, error_reply, json_reply
from balancer.http.router import Router
from balancer.http.server import FrontServer

FAST = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
OPS = EVAL_OPS + META_OPS

# Any JSON document, with the awkward leaves: huge and negative numbers, odd strings, deep nesting.
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_doc = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
# A request document: mostly the right field names, with values of any kind.
FIELDS = ["name", "input", "config", "outWrt", "inWrt", "inWrt1", "inWrt2", "sens", "vec"]
request_doc = st.dictionaries(
    st.sampled_from(FIELDS),
    json_doc | st.lists(st.lists(json_leaf, max_size=3), max_size=3),
    max_size=len(FIELDS),
)


def _assert_error(exc: ProtocolError) -> None:
    """A refusal the client can read: an InvalidInput 400 whose answer encodes, of bounded size."""
    assert exc.kind == "InvalidInput" and exc.status == 400
    status, _, body = error_reply(exc.kind, exc.message, exc.status)
    assert status == 400 and orjson.loads(body)["error"]["type"] == "InvalidInput"
    assert len(body) < 2000, body[:300]


# -- UM-Bridge validation -----------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=300))
def test_parse_body_of_any_bytes_answers_or_refuses(body: bytes) -> None:
    try:
        doc = parse_body(body)
    except ProtocolError as exc:
        _assert_error(exc)
    else:
        assert type(doc) is dict and type(doc["name"]) is str


@FAST
@given(
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass"))
    | st.sampled_from(
        [
            b'{"name": "\\ud800", "input": [[1]]}',
            b'{"name": "f\xed\xa0\x80", "input": [[1]]}',
            b'{"name": "f", "config": {"\\udfff": 1}}',
            b'{"name": "f", "input": [[NaN, Infinity]]}',
            b'{"name": "f", "input": [[1e999999]]}',
            b'{"name": "f", "n": ' + b"9" * 4000 + b"}",
            b'{"name": "f", "n": ' + b"9" * 5000 + b"}",
            b'{"name": "f", "c": ' + b"[" * 100000 + b"]" * 100000 + b"}",
        ]
    )
)
def test_parse_body_of_invalid_unicode_and_huge_values_refuses_by_name(body: bytes) -> None:
    """Lone surrogates (escaped or raw), numbers beyond any float, and deep nesting: a 400 naming
    the problem, or a document without surrogates (a later UTF-8 answer must be possible)."""
    try:
        doc = parse_body(body)
    except ProtocolError as exc:
        _assert_error(exc)
    else:
        # What passes carries no lone surrogate: a later answer or journal line stays UTF-8. (A huge
        # integer outside "config" passes, as the official server's parser takes it; the balancer
        # forwards the client's own bytes.)
        json.dumps(doc, ensure_ascii=False).encode()


@FAST
@given(st.sampled_from(OPS), request_doc)
def test_check_fields_and_sizes_of_any_document_answer_or_refuse(op: str, doc: dict[str, Any]) -> None:
    doc.setdefault("name", "forward")
    if type(doc["name"]) is not str:
        doc["name"] = "forward"
    try:
        parsed = check_fields(op, doc)
    except ProtocolError as exc:
        _assert_error(exc)
        return
    assert parsed.model == doc["name"]
    if op in EVAL_OPS:
        try:
            check_sizes(op, doc, [1, 2], [1])
            check_sizes(op, doc, [3], None)
        except ProtocolError as exc:
            _assert_error(exc)


@FAST
@given(st.text(max_size=3 * ECHO_MAX), st.sampled_from(["surrogate", "plain"]))
def test_error_replies_and_clip_always_encode_and_stay_bounded(text: str, kind: str) -> None:
    if kind == "surrogate":
        text += "\udcff"
    cut = clip(text)
    assert len(cut) <= ECHO_MAX + 3 and text.startswith(cut.removesuffix("...")[:ECHO_MAX])
    status, _, body = error_reply("InvalidInput", cut, 400)
    assert status == 400 and set(orjson.loads(body)["error"]) == {"type", "message"}


# -- the HTTP frontend's parser ----------------------------------------------------------------------
class FakeTransport(asyncio.Transport):
    """Collects what the protocol writes; closing stops it, as a socket would."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "a write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


async def echo(req: Request) -> Reply:
    if req.too_large:
        return error_reply("InvalidInput", "too large", 413)
    return json_reply({"n": len(req.body)})


SMALL = HttpLimits(max_body=256, max_url=128, max_headers=8, max_header_bytes=512)
GOOD = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}"
RESPONSE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n((?:[^\r]+\r\n)*)\r\n")


def _responses(out: bytes) -> list[tuple[int, bytes]]:
    """Split a connection's output into (status, body); fail on anything that is not a response."""
    found, pos = [], 0
    while pos < len(out):
        m = RESPONSE.match(out, pos)
        assert m, f"not an HTTP response at {pos}: {out[pos : pos + 200]!r}"
        status = int(m.group(1))
        pos = m.end()
        if status == 100:
            continue
        length = int(re.search(rb"Content-Length: (\d+)", m.group(2)).group(1))  # type: ignore[union-attr]
        found.append((status, out[pos : pos + length]))
        pos += length
    return found


async def _feed(pieces: list[bytes]) -> tuple[list[tuple[int, bytes]], bool]:
    router = Router()
    router.add("POST", "/echo", echo)
    front = FrontServer(router, SMALL)
    proto, t = HttpProtocol(front), FakeTransport()
    proto.connection_made(t)
    for piece in pieces:
        if t.closed:
            break
        proto.data_received(memoryview(piece))
        for _ in range(5):  # let the handlers of what arrived run
            await asyncio.sleep(0)
    return _responses(bytes(t.out)), t.closed


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    at = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(at)] or [b""]


def _check(answers: list[tuple[int, bytes]]) -> None:
    for status, body in answers:
        if status == 200:
            assert "n" in orjson.loads(body)
        else:
            assert 400 <= status < 500, (status, body)
            err = orjson.loads(body)["error"]
            assert set(err) == {"type", "message"} and len(err["message"]) < 1000, err


HOSTILE = st.sampled_from(
    [
        b"\x00\xff\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 300\r\n\r\n" + b"x" * 300,
        b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 20 + b"\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"\xed\xa0\x80" * 50 + b"\r\n\r\n",
        b"GET /\xed\xa0\x80\xff HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        b"CONNECT x:1 HTTP/1.1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    ]
)


@FAST
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=4))
def test_any_bytes_get_well_formed_answers_or_a_close(data: bytes, cuts: list[int]) -> None:
    answers, _ = asyncio.run(_feed(_split(data, cuts)))
    _check(answers)


@FAST
@given(
    st.lists(st.just(GOOD), min_size=1, max_size=3),
    HOSTILE | st.binary(min_size=1, max_size=80),
    st.lists(st.integers(min_value=0), max_size=4),
)
def test_good_requests_pipelined_before_a_bad_one_keep_their_answers(
    good: list[bytes], bad: bytes, cuts: list[int]
) -> None:
    """Every good request before the bad one gets its 200, in order, and nothing after the bad one's
    answer (a 4xx in UM-Bridge's shape, or a 200 where the bytes happen to be a valid request)."""
    answers, _ = asyncio.run(_feed(_split(b"".join(good) + bad, cuts)))
    _check(answers)
    assert [s for s, _ in answers[: len(good)]] == [200] * len(good), answers
    assert len(answers) <= len(good) + 2, answers
