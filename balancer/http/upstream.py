"""Keep-alive HTTP/1.1 client for the per-call path to model servers.

Why not aiohttp's ClientSession: measured here it costs ~100 us of CPU per request (request and
response objects, tracing hooks, URL building), more than the whole budget of the balancer. The
upstream side is narrow (POST with a JSON body to a UM-Bridge server we started), so a protocol
object with llhttp's parser (``httptools``) per connection does it in a fraction of that. Each
server owns its idle connections; the concurrency cap bounds how many it ever has.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from balancer.http.buffers import SharedBufferProtocol

_SMALL = 64 * 1024  # below this, header and body go out in one write


class UpstreamError(ConnectionError):
    """The connection broke before a complete answer arrived."""


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, raw headers, body


class _Conn(SharedBufferProtocol):
    __slots__ = (
        "_body",
        "_headers",
        "_parser",
        "_waiter",
        "closed",
        "keep_alive",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.closed = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's is a Transport

    def data_received(self, data: memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamError(f"connection closed by the server{f': {exc}' if exc else ''}"))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        w = self._waiter
        if w is not None and not w.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            w.set_result((self._parser.get_status_code(), self._headers, body))

    def request(self, head: bytes, body: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._headers = []
        self._body = []
        self._waiter = fut = asyncio.get_running_loop().create_future()
        if len(body) < _SMALL:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        return fut


class Upstream:
    """The connections to one model server: reused while the server keeps them alive."""

    __slots__ = ("_heads", "_idle", "host", "port", "unix")

    def __init__(self, host: str, port: int, unix: str | None = None) -> None:
        self.host = host
        self.port = port
        self.unix = unix  # a Unix socket path (isolate = "socket"): connect there, not to host:port
        self._idle: list[_Conn] = []
        self._heads: dict[tuple[str, int], bytes] = {}

    def _head(self, path: str, length: int) -> bytes:
        key = (path, length)
        h = self._heads.get(key)
        if h is None:
            h = (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
            ).encode("latin-1")
            if len(self._heads) < 256:  # bodies of a campaign mostly share one length
                self._heads[key] = h
        return h

    async def post(self, path: str, body: bytes) -> Answer:
        """POST ``body``; returns (status, raw headers, body). Raises OSError/UpstreamError on loss."""
        conn = None
        while self._idle:
            c = self._idle.pop()
            if not c.closed:
                conn = c
                break
        if conn is None:
            loop = asyncio.get_running_loop()
            if self.unix is None:
                _, conn = await loop.create_connection(_Conn, self.host, self.port)
            else:
                _, conn = await loop.create_unix_connection(_Conn, self.unix)
        try:
            result = await conn.request(self._head(path, len(body)), body)
        except BaseException:
            if conn.transport is not None:
                conn.transport.close()
            raise
        if conn.keep_alive and not conn.closed:
            self._idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        return result

    def close(self) -> None:
        for c in self._idle:
            if c.transport is not None:
                c.transport.close()
        self._idle.clear()
