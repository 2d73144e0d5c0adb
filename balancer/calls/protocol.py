"""UM-Bridge protocol 1.0: request validation and error answers, as pure functions.

The balancer parses a request only to learn the model name and to reject malformed input before it
occupies a server; the body bytes it forwards are the client's own. Checks come in the official
servers' order, so a client cannot tell the balancer from a model server by its errors: the body
and model name (``parse_body``; the caller then answers ``ModelNotFound`` and
``UnsupportedFeature``), then the operation's fields (``check_fields``, ``InvalidInput``), then the
sizes (``check_sizes``). What the official Python server accepts passes: a bare ``NaN`` or
``Infinity`` in a body (its JSON parser is the stdlib's, and so is ours where orjson refuses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

PROTOCOL_VERSION = 1.0
EVAL_OPS = ("Evaluate", "Gradient", "ApplyJacobian", "ApplyHessian")
META_OPS = ("InputSizes", "OutputSizes", "ModelInfo")

# Fields each operation needs besides "name" (and the optional "config"), with their kind.
_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "Evaluate": (("input", "matrix"),),
    "Gradient": (("outWrt", "index"), ("inWrt", "index"), ("input", "matrix"), ("sens", "vector")),
    "ApplyJacobian": (("outWrt", "index"), ("inWrt", "index"), ("input", "matrix"), ("vec", "vector")),
    "ApplyHessian": (
        ("outWrt", "index"),
        ("inWrt1", "index"),
        ("inWrt2", "index"),
        ("input", "matrix"),
        ("sens", "vector"),
        ("vec", "vector"),
    ),
    "InputSizes": (),
    "OutputSizes": (),
    "ModelInfo": (),
}


class ProtocolError(Exception):
    """A request the balancer answers itself with UM-Bridge error JSON."""

    def __init__(self, kind: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    model: str
    config: Any
    config_key: bytes  # canonical encoding of config: the metadata cache key
    doc: dict[str, Any]


MAX_CONFIG_DEPTH = 32  # nesting of a model's config; deeper is refused (400), not a 500 later


def config_key(config: Any) -> bytes:
    return orjson.dumps(config, option=orjson.OPT_SORT_KEYS)


def _depth_over(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return True
        if type(o) is dict:
            stack.extend((v, d + 1) for v in o.values())
        elif type(o) is list:
            stack.extend((v, d + 1) for v in o)
    return False


def _short(v: Any) -> str:
    """A value for an error message: never the repr of a huge or deeply nested structure."""
    if type(v) is list:
        return "a list"
    if type(v) is dict:
        return "an object"
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _check_vector(field: str, v: Any) -> None:
    if type(v) is not list:
        raise ProtocolError("InvalidInput", f"'{field}' must be a list of numbers")
    for x in v:
        if type(x) is not float and type(x) is not int:
            raise ProtocolError("InvalidInput", f"'{field}' must contain numbers only, got {_short(x)}")


def _lone_surrogate(doc: Any) -> str | None:
    """The first lone UTF-16 surrogate in any string (key or value) of ``doc``, as ``\\udXXX``;
    None if there is none. Iterative: no recursion on hostile input."""
    stack = [doc]
    while stack:
        o = stack.pop()
        if type(o) is str:
            if not o.isascii():
                try:
                    o.encode()
                except UnicodeEncodeError as exc:  # only surrogates do not encode
                    return f"\\u{ord(o[exc.start]):04x}"
        elif type(o) is dict:
            stack.extend(o)
            stack.extend(o.values())
        elif type(o) is list:
            stack.extend(o)
    return None


def parse_body(body: bytes) -> dict[str, Any]:
    """The request's JSON object with a string ``name``; ProtocolError (InvalidInput) otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # NaN, Infinity: what the official server's stdlib parser takes
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise ProtocolError("InvalidInput", f"request body is not valid JSON: {exc}") from None
        # The stdlib also takes a lone surrogate (``"\ud800"``, or its bytes), a string no UTF-8
        # answer, journal line or model server can carry: refuse it here, by name, not with a 500
        # later. orjson refuses them itself, so only this rarer path looks (and only if one may be there).
        if b"\\ud" in body or b"\\uD" in body or b"\xed" in body:
            bad = _lone_surrogate(doc)
            if bad is not None:
                why = f"request body is not valid Unicode: lone surrogate {bad} in a string"
                raise ProtocolError("InvalidInput", why) from None
    if type(doc) is not dict:
        raise ProtocolError("InvalidInput", "request body must be a JSON object")
    name = doc.get("name")
    if name is None:
        raise ProtocolError("InvalidInput", "missing field 'name'")
    if type(name) is not str:
        raise ProtocolError("InvalidInput", "'name' must be a string")
    return doc


def check_fields(op: str, doc: dict[str, Any]) -> ParsedRequest:
    """Check the operation's fields and the config; ProtocolError (InvalidInput) if malformed."""
    config = doc.get("config", {})
    if config is None:
        config = {}
    if type(config) is not dict:
        raise ProtocolError("InvalidInput", "'config' must be a JSON object")
    for field, kind in _FIELDS[op]:
        if field not in doc:
            raise ProtocolError("InvalidInput", f"missing field '{field}'")
        v = doc[field]
        if kind == "index":
            if type(v) is not int:
                raise ProtocolError("InvalidInput", f"'{field}' must be an integer")
        elif kind == "vector":
            _check_vector(field, v)
        else:  # matrix: list of lists of numbers
            if type(v) is not list:
                raise ProtocolError("InvalidInput", f"'{field}' must be a list of lists of numbers")
            for i, row in enumerate(v):
                _check_vector(f"{field}[{i}]", row)
    if config and _depth_over(config, MAX_CONFIG_DEPTH):
        raise ProtocolError("InvalidInput", f"'config' nests deeper than {MAX_CONFIG_DEPTH} levels")
    try:
        key = config_key(config) if config else b"{}"
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise ProtocolError("InvalidInput", f"'config' cannot be used: {exc}") from None
    return ParsedRequest(doc["name"], config, key, doc)


def parse_request(op: str, body: bytes) -> ParsedRequest:
    """Both checks at once (for callers with no model-level checks in between)."""
    return check_fields(op, parse_body(body))


def check_sizes(op: str, doc: dict[str, Any], input_sizes: list[int], output_sizes: list[int] | None) -> None:
    """Reject input that contradicts the model's known sizes, as an UM-Bridge server would."""
    inp = doc["input"]
    if len(inp) != len(input_sizes):
        raise ProtocolError("InvalidInput", f"model takes {len(input_sizes)} input vector(s), got {len(inp)}")
    for i, (row, n) in enumerate(zip(inp, input_sizes, strict=False)):
        if len(row) != n:
            raise ProtocolError("InvalidInput", f"input[{i}] has length {len(row)}, expected {n}")
    if op == "Evaluate":
        return
    n_in = len(input_sizes)
    for field in ("inWrt", "inWrt1", "inWrt2"):
        if field in doc and not 0 <= doc[field] < n_in:
            raise ProtocolError("InvalidInput", f"'{field}' = {doc[field]} is out of range 0..{n_in - 1}")
    if output_sizes is not None:
        out_wrt = doc["outWrt"]
        if not 0 <= out_wrt < len(output_sizes):
            raise ProtocolError(
                "InvalidInput", f"'outWrt' = {out_wrt} is out of range 0..{len(output_sizes) - 1}"
            )
        if "sens" in doc and len(doc["sens"]) != output_sizes[out_wrt]:
            raise ProtocolError(
                "InvalidInput", f"'sens' has length {len(doc['sens'])}, expected {output_sizes[out_wrt]}"
            )
    if op == "ApplyJacobian" and len(doc["vec"]) != input_sizes[doc["inWrt"]]:
        raise ProtocolError(
            "InvalidInput", f"'vec' has length {len(doc['vec'])}, expected {input_sizes[doc['inWrt']]}"
        )
    if op == "ApplyHessian" and len(doc["vec"]) != input_sizes[doc["inWrt2"]]:
        raise ProtocolError(
            "InvalidInput", f"'vec' has length {len(doc['vec'])}, expected {input_sizes[doc['inWrt2']]}"
        )
