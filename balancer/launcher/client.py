"""The launcher's HTTP client: one request per connection on asyncio streams, JSON in and out.

The launcher asks little of HTTP (poll a local ``/Info``, post a registration, long-poll a lease,
say that its server exited), and it starts on every compute node for every server: a client library
would cost it more import time than all of its own code (aiohttp: ~0.1 s), and is one more
dependency of the node's Python. Each request opens its own connection and asks the server to close
it; a lease poll every few seconds does not need keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

from balancer.launcher.contract import unix_path

CONNECT_TIMEOUT_S = 5.0
MAX_BODY = 16 * 1024 * 1024  # a lease answer is a few hundred bytes; anything near this is not one


class HttpError(OSError):
    """A malformed or cut-off answer: handled like an unreachable peer (an ``OSError``)."""


async def request(
    method: str,
    url: str,
    timeout: float,
    doc: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    read_body: bool = True,
) -> tuple[int, Any]:
    """``(status, JSON body)`` of one request (body None when not read or not JSON).

    Raises ``OSError`` (``HttpError`` included) or ``TimeoutError`` after ``timeout`` seconds."""
    return await asyncio.wait_for(_request(method, url, doc, headers or {}, read_body), timeout)


async def _request(
    method: str, url: str, doc: dict[str, Any] | None, headers: dict[str, str], read_body: bool
) -> tuple[int, Any]:
    u = urlsplit(url)
    sock = unix_path(url)
    if sock is not None:  # a model on a Unix socket (isolate = "socket")
        connect = asyncio.open_unix_connection(sock)
        u = u._replace(netloc="localhost")
    elif u.scheme not in ("http", "https") or not u.hostname:
        raise HttpError(f"not an http(s) URL: {url!r}")
    else:
        port = u.port or (443 if u.scheme == "https" else 80)
        ctx = None
        if u.scheme == "https":  # imported here: the launcher's start and most balancers need no TLS
            import ssl

            ctx = ssl.create_default_context()
        connect = asyncio.open_connection(u.hostname, port, ssl=ctx)
    reader, writer = await asyncio.wait_for(connect, CONNECT_TIMEOUT_S)
    try:
        body = b"" if doc is None else json.dumps(doc).encode()
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        head = [f"{method} {target} HTTP/1.1", f"Host: {u.netloc}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if doc is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status, fields = await _read_head(reader)
        if not read_body:
            return status, None
        data = await _read_body(reader, fields)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise HttpError("connection closed before the answer's head") from exc
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP answer: {lines[0][:80]!r}")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields


async def _read_body(reader: asyncio.StreamReader, fields: dict[str, str]) -> bytes:
    try:
        if "chunked" in fields.get("transfer-encoding", "").lower():
            out = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
                if size == 0 or len(out) + size > MAX_BODY:
                    return bytes(out)
                out += await reader.readexactly(size + 2)
                del out[-2:]
        if "content-length" in fields:
            n = int(fields["content-length"])
            if n > MAX_BODY:
                raise HttpError(f"answer too large ({n} bytes)")
            return await reader.readexactly(n)
        return await reader.read(MAX_BODY)  # no length: the body ends with the connection
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise HttpError(f"cut-off or malformed answer: {exc}") from exc
