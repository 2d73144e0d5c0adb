"""What a handler sees and answers: the request, the reply, a stream, and the frontend's limits.

Apart from the server protocol (``balancer.http.server``) so that handlers and the router import
these plain types without the connection machinery, and the wire limits sit in one place.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import orjson

IDLE_TIMEOUT_S = 75.0


@dataclass(frozen=True)
class HttpLimits:
    """What one client can make the frontend hold: every resource has a bound."""

    max_body: int = 64 * 1024 * 1024  # larger: 413
    max_url: int = 8 * 1024  # longer request target: 414
    max_headers: int = 100  # more header lines: 431
    max_header_bytes: int = 64 * 1024  # more header bytes: 431
    max_connections: int = 4096  # more open connections: 503 and close at once
    idle_timeout_s: float = IDLE_TIMEOUT_S  # no byte in either direction for this long: close
    min_rate: float = 1024.0  # a request still arriving after rate_grace_s slower than this (B/s): 408
    rate_grace_s: float = 30.0


# (status, extra header lines already encoded, body); the frontend adds Content-Length.
Reply = tuple[int, bytes, bytes]
JSON_CT = b"Content-Type: application/json\r\n"


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "remote", "too_large")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        too_large: bool,
        remote: str | None,
    ) -> None:
        self.method = method
        self.path = target.partition(b"?")[0].decode("latin-1")  # no route takes a query
        self.headers = headers  # names lower-cased
        self.body = body
        self.keep_alive = keep_alive
        self.too_large = too_large
        self.remote = remote


class Connection(Protocol):
    """What ``StreamOut`` needs of a connection: its transport, None once it is gone."""

    transport: asyncio.Transport | None


class StreamOut:
    """What a ``Stream`` writes through: its connection, without the protocol's internals."""

    __slots__ = ("_proto",)

    def __init__(self, proto: Connection) -> None:
        self._proto = proto

    def write(self, data: bytes) -> bool:
        """Queue ``data``; False once the connection is gone."""
        t = self._proto.transport
        if t is None or t.is_closing():
            return False
        t.write(data)
        return True

    def buffered(self) -> int:
        """Bytes written but not yet taken by the peer: a slow reader's backlog."""
        t = self._proto.transport
        return t.get_write_buffer_size() if t is not None else 0

    def close(self) -> None:
        """End the stream now, dropping any backlog (a reader too slow to keep up)."""
        t = self._proto.transport
        if t is not None:
            t.abort()


class Stream:
    """A handler's answer that goes on (server-sent events): the frontend writes the status line and
    headers without Content-Length, hands ``open`` the connection and calls ``closed`` when the peer
    leaves or the server closes it. The connection is not reused; requests after it are dropped."""

    headers = b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"

    def open(self, out: StreamOut) -> None:
        raise NotImplementedError

    def closed(self) -> None:
        """The connection is gone; called once."""


# The most characters of client input (a model name, a path, a header value) that an answer, the
# journal, the dashboard or a notification repeats; longer ones are cut and end in ``CLIP_MARK``. A
# client must not turn one request into a megabyte answer, journal line or dashboard snapshot.
ECHO_MAX = 200
CLIP_MARK = "..."


def clip(text: str, limit: int = ECHO_MAX) -> str:
    """``text`` cut to ``limit`` characters (plus ``CLIP_MARK`` where cut), for echoing client input."""
    return text if len(text) <= limit else text[:limit] + CLIP_MARK


def json_reply(obj: object, status: int = 200) -> Reply:
    return status, JSON_CT, orjson.dumps(obj)


def error_reply(kind: str, message: str, status: int) -> Reply:
    try:
        return json_reply({"error": {"type": kind, "message": message}}, status)
    except orjson.JSONEncodeError:  # a lone surrogate from the client's input: not UTF-8
        message = message.encode("utf-8", "backslashreplace").decode()
        return json_reply({"error": {"type": kind, "message": message}}, status)
