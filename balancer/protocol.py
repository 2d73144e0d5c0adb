"""UM-Bridge protocol 1.0: request validation and error answers, as pure functions.

The balancer parses a request only to learn the model name and to reject malformed input before it
occupies a server; the body bytes it forwards are the client's own.
"""

from __future__ import annotations

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


def config_key(config: Any) -> bytes:
    return orjson.dumps(config, option=orjson.OPT_SORT_KEYS)


def _is_number(v: Any) -> bool:
    t = type(v)
    return t is float or t is int


def _check_vector(field: str, v: Any) -> None:
    if type(v) is not list:
        raise ProtocolError("InvalidInput", f"'{field}' must be a list of numbers")
    for x in v:
        if type(x) is not float and type(x) is not int:
            raise ProtocolError("InvalidInput", f"'{field}' must contain numbers only, got {x!r}")


def parse_request(op: str, body: bytes) -> ParsedRequest:
    """Check structure and types of a UM-Bridge request body; raise ProtocolError if malformed."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("InvalidInput", f"request body is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise ProtocolError("InvalidInput", "request body must be a JSON object")
    name = doc.get("name")
    if name is None:
        raise ProtocolError("InvalidInput", "missing field 'name'")
    if type(name) is not str:
        raise ProtocolError("InvalidInput", "'name' must be a string")
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
    return ParsedRequest(name, config, config_key(config) if config else b"{}", doc)


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
