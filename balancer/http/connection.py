"""One client connection of the HTTP/1.1 frontend: llhttp (``httptools``) parsing, one request at a time.

It handles keep-alive and pipelining (answers in request order, a malformed request's 400 after
the answers it follows), chunked bodies, ``Expect: 100-continue``, a body-size limit (413 at once
from a Content-Length over it, as soon as a chunked body passes it), limits on the request line and
headers counted as the bytes arrive (414, 431: llhttp keeps an unfinished header line whole,
re-copied on every read, so a client must not be able to send an endless one), and a half-close
(the requests that arrived whole are answered, then the connection closes). What it shares with its
listener (router, limits, admission and per-request checks) it reads from ``FrontServer``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import httptools

from balancer.http.buffers import SharedBufferProtocol
from balancer.http.messages import Reply, Request, Stream, StreamOut, clip, error_reply

if TYPE_CHECKING:
    from balancer.http.server import FrontServer


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {s.value: _status_line(s.value) for s in HTTPStatus}


# Bytes of a request's head beyond ``max_url + max_header_bytes`` that the raw count allows: the
# request line's method and version, and the separators the per-header count does not see.
HEAD_SLACK = 4096


class HttpProtocol(SharedBufferProtocol):
    __slots__ = (
        "_body",
        "_done_reading",
        "_eof",
        "_fast_req",
        "_final",
        "_head_open",
        "_head_seen",
        "_header_bytes",
        "_header_lines",
        "_headers",
        "_in_fast",
        "_limit_reply",
        "_pending",
        "_size",
        "_stop_after",
        "_stream",
        "_task",
        "_too_large",
        "_url",
        "front",
        "in_message",
        "last_active",
        "message_bytes",
        "message_start",
        "parser",
        "refusal",
        "remote",
        "transport",
    )

    def __init__(self, front: FrontServer) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._pending: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        # A request a fast handler took (``Router.add_fast``): answered by a callback, not a task.
        self._fast_req: Request | None = None
        self._in_fast = False  # inside the fast handler's call: an answer given at once loops in _next
        self._stop_after = False  # that answer ended the connection's answering (closed, or the last)
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        # After a malformed or oversized request the connection reads nothing more; a malformed one's
        # 400 goes out after the answers of the requests before it, then the connection closes.
        self._done_reading = False
        self._final: Reply | None = None
        self._eof = False  # the client half-closed: answer what arrived whole, then close
        self._header_bytes = 0
        self._header_lines = 0  # lines, not names: repeated names count each time
        # Raw bytes of the current request's head (request line and headers) seen so far: llhttp
        # hands a header to ``on_header`` only once it is complete, so this count is what cuts an
        # endless header line off after about ``max_header_bytes``, not after the client's last byte.
        self._head_open = False
        self._head_seen = 0
        self._limit_reply: Reply | None = None  # set by a parser callback that hit a limit
        self.in_message = False  # a request has begun and not yet fully arrived
        self.message_start = 0.0
        self.message_bytes = 0
        self.remote: str | None = None
        self.refusal: Reply | None = None  # set by FrontServer.admit: this connection is refused
        self.last_active = time.monotonic()
        self._stream: Stream | None = None  # this connection became an event stream

    # -- connection -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's is a Transport
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if peer else None
        if len(self.front.conns) >= self.front.limits.max_connections:
            self._done_reading = True
            self._write(error_reply("ServiceUnavailable", "too many open connections", 503), keep_alive=False)
            return
        self.front.conns.add(self)
        if self.front.admit is not None:
            self.refusal = self.front.admit(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        # A call in progress finishes (its server slot is released); only the answer is dropped.
        self.front.conns.discard(self)
        self.transport = None
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.closed()

    def eof_received(self) -> bool | None:
        """The client is done sending (a half-close, as ``nc -N`` or a script's ``shutdown(SHUT_WR)``
        do after a request): the requests that arrived whole still get their answers, then the
        connection closes; a request cut off by the end is dropped. Before, the transport closed at
        once and the answer of a call in flight was lost."""
        if self.idle() or self.transport is None or self._stream is not None:
            return None  # nothing owed (an event stream ends with its reader): the transport closes
        self._eof = True
        self._done_reading = True
        self.in_message = False
        return True

    def idle(self) -> bool:
        return self._task is None and self._fast_req is None and not self._pending and self._stream is None

    def _busy(self) -> bool:
        return self._task is not None or self._fast_req is not None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: memoryview) -> None:
        if self._done_reading:
            return  # the connection ends after the answers it owes
        self.last_active = time.monotonic()
        if self.in_message:
            self.message_bytes += len(data)
        head_open = self._head_open  # then every byte of ``data`` up to the head's end is the head's
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._bad("protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if self._limit_reply is not None:
                self.give_up(self._limit_reply)
            else:
                self._bad(f"malformed HTTP request: {exc}")
        else:
            if head_open and self._head_open:  # the head goes on past this read: all of it was head
                self._head_seen += len(data)
                lim = self.front.limits
                if self._head_seen > lim.max_url + lim.max_header_bytes + HEAD_SLACK:
                    why = f"request headers exceed {lim.max_header_bytes} bytes"
                    self.give_up(error_reply("InvalidInput", why, 431))

    def _bad(self, message: str) -> None:
        self.give_up(error_reply("InvalidInput", message, 400))

    def give_up(self, reply: Reply) -> None:
        """End this connection with ``reply`` (a malformed request's 400, a limit's 4xx), but only
        after the answers of the good requests before it (pipelined, or sent while one was in
        flight), in order."""
        self._final = reply
        self._stop_reading()
        if self.idle():
            self._write(self._final, keep_alive=False)

    def _limit(self, status: int, message: str) -> None:
        """From a parser callback: stop parsing, answer ``status``."""
        self._limit_reply = error_reply("InvalidInput", message, status)
        raise ValueError(message)

    def _stop_reading(self) -> None:
        self._done_reading = True
        self.in_message = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    # -- parser callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._too_large = False
        self._header_bytes = 0
        self._header_lines = 0
        self._head_open = True
        self._head_seen = 0
        self.in_message = True
        self.message_start = time.monotonic()
        self.message_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.front.limits.max_url:
            self._limit(414, f"request target longer than {self.front.limits.max_url} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value
        self._header_bytes += len(name) + len(value) + 4
        self._header_lines += 1
        lim = self.front.limits
        if self._header_lines > lim.max_headers or self._header_bytes > lim.max_header_bytes:
            self._limit(
                431, f"request headers exceed {lim.max_headers} lines or {lim.max_header_bytes} bytes"
            )

    def on_headers_complete(self) -> None:
        self._head_open = False
        if self._done_reading:
            return
        cl = self._headers.get(b"content-length")
        if cl is not None and cl.isdigit() and int(cl) > self.front.limits.max_body:
            self._too_large_now()
            return
        if self._headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large or self._done_reading:
            return  # drained, not kept
        self._size += len(body)
        if self._size > self.front.limits.max_body:  # a chunked body (a Content-Length was checked)
            self._too_large = True
            self._body = []
            self._too_large_now()
        else:
            self._body.append(body)

    def _too_large_now(self) -> None:
        """Answer 413 now (through the handler, so it is journaled) and close, rather than wait for
        (or drain) a body that may never end; read nothing more."""
        req = Request(self.parser.get_method(), self._url, self._headers, b"", False, True, self.remote)
        self._stop_reading()
        self._pending.append(req)
        if not self._busy():
            self._next()

    def on_message_complete(self) -> None:
        self.in_message = False
        if self._done_reading:
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        req = Request(
            self.parser.get_method(),
            self._url,
            self._headers,
            body,
            self.parser.should_keep_alive(),
            self._too_large,
            self.remote,
        )
        self._pending.append(req)
        if not self._busy():
            self._next()

    # -- handling -------------------------------------------------------------------------------
    def _next(self) -> None:
        """Answer the oldest pending request: through its route's fast handler where one takes it
        (the call path with a free server: no task, two loop passes per call instead of four),
        else in a task. A fast answer given at once (a rejected call) loops here, not recursing, so
        a pipelined burst of them cannot exhaust the stack."""
        front = self.front
        while self._pending:
            req = self._pending.popleft()
            fast = front.router.fast.get((req.method, req.path)) if self.refusal is None else None
            if fast is not None and (front.check is None or front.check(self.transport, req) is None):
                self._fast_req = req
                self._in_fast = True
                self._stop_after = False
                try:
                    taken = fast(req, self._fast_done)
                except Exception:  # a bug: the task path answers (and journals) it
                    taken = False
                finally:
                    self._in_fast = False
                if taken:
                    if self._fast_req is not None:
                        return  # answered later, by ``_fast_done``
                    if self._stop_after:
                        return
                    continue  # answered at once: the next one
                self._fast_req = None
            self._task = asyncio.get_running_loop().create_task(self._handle(req))
            return

    def _fast_done(self, reply: Reply) -> None:
        """A fast handler's answer to ``_fast_req``."""
        req = self._fast_req
        if req is None:
            return  # answered twice: a bug in the handler; the first answer stands
        self._fast_req = None
        go_on = self._finish(req, reply)
        self._stop_after = not go_on
        if go_on and not self._in_fast:
            self._next()

    async def _handle(self, req: Request) -> None:
        handler = self.front.router.resolve(req.method, req.path)
        reply: Reply | Stream
        try:
            if self.refusal is not None:  # no handler runs; the connection ends with this answer
                reply, req.keep_alive = self.refusal, False
            elif (check := self.front.check) is not None and (refused := check(self.transport, req)):
                reply = refused
            elif handler is None:
                method = req.method.decode(errors="replace")
                reply = error_reply("NotFound", f"no route {method} {clip(req.path)}", 404)  # not a huge path
            else:
                reply = await handler(req)
        except Exception as exc:  # a bug must not kill the connection silently, nor go unjournaled
            error = clip(f"{type(exc).__name__}: {exc}")
            reply = error_reply("InternalError", error, 500)
            if self.front.on_error is not None:
                self.front.on_error(clip(f"{req.method.decode(errors='replace')} {req.path}"), error)
        self._task = None
        if self._finish(req, reply):
            self._next()

    def _finish(self, req: Request, reply: Reply | Stream) -> bool:
        """Write ``req``'s answer; True when the next pending request may be answered now."""
        keep_alive = req.keep_alive and not self.front.closing
        if self._eof and not self._pending and self._final is None:
            keep_alive = False  # the last answer the half-closed client gets
        if isinstance(reply, Stream):
            self._open_stream(reply)
            return False
        if self.transport is None:
            return False
        self._write(reply, keep_alive)
        self.last_active = time.monotonic()
        if self._pending and keep_alive:
            return True
        if self._final is not None and keep_alive and not self._pending:
            self._write(self._final, keep_alive=False)
        return False

    def _open_stream(self, stream: Stream) -> None:
        """Status line and headers, then the stream owns the connection until either side ends it.
        Reading goes on (a peer's close is seen at once) but what arrives is ignored."""
        t = self.transport
        if t is None:
            stream.closed()
            return
        self._done_reading = True
        self._pending.clear()
        self._stream = stream
        t.write(b"HTTP/1.1 200 OK\r\n%sConnection: close\r\n\r\n" % stream.headers)
        stream.open(StreamOut(self))

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        status, headers, body = reply
        line = _STATUS_LINES.get(status) or _status_line(status)
        head = b"%sContent-Length: %d\r\n%s%s\r\n" % (
            line,
            len(body),
            headers,
            b"" if keep_alive else b"Connection: close\r\n",
        )
        t = self.transport
        if t is None:
            return
        if len(body) < 65536:
            t.write(head + body)
        else:
            t.write(head)
            t.write(body)
        if not keep_alive:
            self._pending.clear()
            t.close()
