"""``isolate = "socket"``: its configuration rules, its reload rule and its URL form."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError
from balancer.http.upstream import Upstream
from balancer.launcher.contract import unix_path, unix_url
from balancer.ops.reload import diff_config

SPEC = {"name": "m", "command": [sys.executable, "-c", "pass"]}


def _cfg(spec: dict, scheduler: str = "local"):
    return parse_config({"balancer": {"scheduler": scheduler}, "servers": [spec]})


def test_isolate_takes_socket_only_and_only_on_the_local_backend():
    assert _cfg(SPEC).servers[0].isolate == ""
    assert _cfg({**SPEC, "isolate": "socket"}).servers[0].isolate == "socket"
    with pytest.raises(ConfigError, match="isolate"):
        _cfg({**SPEC, "isolate": "unix"})
    with pytest.raises(ConfigError, match='needs scheduler = "local"'):
        _cfg({**SPEC, "isolate": "socket"}, scheduler="slurm")


def test_a_changed_isolate_replaces_the_servers():
    d = diff_config(_cfg(SPEC), _cfg({**SPEC, "isolate": "socket"}))
    assert d.changed == {"m": ("isolate",)} and d.relaunch == ("m",)


def test_unix_url_round_trips_any_path():
    for p in ("/tmp/a b/%x/s1.sock", "/run/User/Ä.sock"):
        url = unix_url(p)
        assert url.startswith("http+unix://") and "/" not in url[len("http+unix://") :]
        assert unix_path(url) == p
    assert unix_path("http://127.0.0.1:80") is None


def test_upstream_posts_over_a_unix_socket(tmp_path: Path):
    """The per-call client connects to the socket once and reuses the connection (keep-alive)."""
    path = str(tmp_path / "s.sock")
    connections = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async def main() -> list:
        server = await asyncio.start_unix_server(serve, path)
        up = Upstream("localhost", 80, unix=path)
        try:
            return [await up.post("/Evaluate", b'{"x": %d}' % i) for i in range(3)]
        finally:
            up.close()
            server.close()

    answers = asyncio.run(main())
    assert [(s, b) for s, _, b in answers] == [(200, b'{"x": %d}' % i) for i in range(3)]
    assert len(connections) == 1
