"""Keep-alive HTTP/1.1 client for the per-call path to model servers.

Why not aiohttp's ClientSession: measured here it costs ~100 us of CPU per request (request and
response objects, tracing hooks, URL building), more than the whole budget of the balancer. The
upstream side is narrow (POST with a JSON body to a UM-Bridge server we started), so a protocol
object with llhttp's parser (``httptools``) per connection does it in a fraction of that. Each
server owns its idle connections; the concurrency cap bounds how many it ever has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

from balancer.http.buffers import SharedBufferProtocol

_SMALL = 64 * 1024  # below this, header and body go out in one write


class UpstreamError(ConnectionError):
    """The connection broke before a complete answer arrived."""


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, raw headers, body
# ``post_nowait``'s callback: (status, raw headers, body, None) on an answer, (0, [], b"", error) on a loss.
AnswerCallback = Callable[[int, list[tuple[bytes, bytes]], bytes, "Exception | None"], None]


class _Conn(SharedBufferProtocol):
    __slots__ = (
        "_body",
        "_callback",
        "_headers",
        "_parser",
        "_waiter",
        "closed",
        "keep_alive",
        "owner",
        "transport",
    )

    def __init__(self, owner: Upstream | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.owner = owner  # where a callback request's connection goes back to (``post_nowait``)
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._callback: AnswerCallback | None = None
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
        cb, self._callback = self._callback, None
        if cb is not None:
            cb(0, [], b"", exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = keep = self._parser.should_keep_alive()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        cb = self._callback
        if cb is not None:
            self._callback = None
            # Back to the idle list before the callback runs: the next call may reuse it at once.
            if keep and not self.closed and self.owner is not None:
                self.owner._idle.append(self)
            elif self.transport is not None:
                self.transport.close()
            cb(self._parser.get_status_code(), self._headers, body, None)
            return
        w = self._waiter
        if w is not None and not w.done():
            w.set_result((self._parser.get_status_code(), self._headers, body))

    def _send(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self._headers = []
        self._body = []
        if len(body) < _SMALL:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)

    def request(self, head: bytes, body: bytes) -> asyncio.Future[Answer]:
        self._waiter = fut = asyncio.get_running_loop().create_future()
        self._send(head, body)
        return fut

    def request_nowait(self, head: bytes, body: bytes, callback: AnswerCallback) -> None:
        self._waiter = None
        self._callback = callback
        self._send(head, body)


class Upstream:
    """The connections to one model server: reused while the server keeps them alive."""

    __slots__ = ("_conns", "_heads", "_idle", "host", "port", "unix")

    def __init__(self, host: str, port: int, unix: str | None = None) -> None:
        self.host = host
        self.port = port
        self.unix = unix  # a Unix socket path (isolate = "socket"): connect there, not to host:port
        self._idle: list[_Conn] = []
        self._conns: set[_Conn] = set()  # every connection made (closed ones pruned at the next connect)
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

    def post_nowait(self, path: str, body: bytes, callback: AnswerCallback) -> bool:
        """POST ``body`` on an idle kept-alive connection and return True; ``callback`` gets the
        answer (or the loss) from the connection's own read: no task, no future. False when no
        idle connection is open (nothing sent): then ``post`` connects."""
        while self._idle:
            c = self._idle.pop()
            if not c.closed:
                c.request_nowait(self._head(path, len(body)), body, callback)
                return True
        return False

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
                _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
            else:
                _, conn = await loop.create_unix_connection(lambda: _Conn(self), self.unix)
            self._conns = {c for c in self._conns if not c.closed}
            self._conns.add(conn)
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
        """Close the idle connections and abort the busy ones: a server given up (lost, its lease
        expired, its node off the network) answers none of its calls in flight, which then fail at
        once and are retried elsewhere instead of waiting forever on a peer that went silent."""
        for c in self._idle:
            if c.transport is not None:
                c.transport.close()
        self._idle.clear()
        for c in self._conns:
            if not c.closed and c.transport is not None:
                c.transport.abort()
        self._conns.clear()
