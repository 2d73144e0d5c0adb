"""Issue 21, items 1, 4 and part of 8, in-process: the control listener under a flood of idle
connections (another Unix user on this machine; a host elsewhere), the client port's Host and
Origin check (DNS rebinding, cross-site requests), and a reload that removes a user closing that
user's open keep-alive connections."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from balancer.control import admission
from balancer.control.admission import ControlGate
from balancer.http.messages import Request
from balancer.observe.events import EventBus
from balancer.ops.origin import HostCheck
from tests.fakes import TOKEN, in_loop, model_server, running, until
from tests.inproc.test_peer import FakeLookup
from tests.system.test_security import other_user

# The other user cannot run this checkout's virtual environment; the flood needs only the stdlib.
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
SPEC = [{"name": "t", "command": ["x"], "models": ["forward"]}]
BODY = b'{"name": "forward", "input": [[1.0]], "config": {}}'


def _addr(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    assert u.hostname is not None and u.port is not None
    return u.hostname, u.port


async def raw(url: str, request: bytes) -> tuple[int, Any]:
    """One request on a fresh connection (``Connection: close``); the status and the JSON body."""
    reader, writer = await asyncio.open_connection(*_addr(url))
    writer.write(request)
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = out.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body) if body.startswith(b"{") else body


def request(method: str, path: str, host: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- item 4: Host and Origin on the client port -------------------------------------------------------


@in_loop
async def test_a_foreign_host_or_origin_is_refused_and_the_normal_client_served(tmp_path: Path):
    async with model_server() as model, running(tmp_path, SPEC) as h:
        h.serve(model)
        port = _addr(h.url)[1]
        evil = "rebind.attacker.example"
        for method, path, body in [
            ("POST", "/Evaluate", BODY),
            ("GET", "/dashboard", b""),
            ("GET", "/dashboard/events", b""),
            ("GET", "/Info", b""),
            ("POST", "/api/reload", b""),
        ]:
            for host in (evil, f"{evil}:{port}"):
                status, doc = await raw(h.url, request(method, path, host, body=body))
                assert status == 403, (method, path, host, status, doc)
                assert doc["error"]["type"] == "Forbidden" and "DNS rebinding" in doc["error"]["message"]
        # A cross-site "simple" request: text/plain, no preflight, the browser sends its Origin.
        cross = request(
            "POST", "/Evaluate", f"127.0.0.1:{port}", "Origin: http://evil.example",
            "Content-Type: text/plain", body=BODY,
        )  # fmt: skip
        status, doc = await raw(h.url, cross)
        assert (
            status == 403
            and doc["error"]["type"] == "Forbidden"
            and "evil.example" in doc["error"]["message"]
        )
        for path in ("/dashboard", "/dashboard/events"):
            status, _ = await raw(h.url, request("GET", path, "localhost", "Origin: http://evil.example"))
            assert status == 403, path
        assert not h.of("call.received")  # nothing above reached the call path
        # The umbridge client and curl send no Origin; a page of the balancer its own (an `ssh -L`
        # tunnel on another local port keeps Host and Origin alike).
        for host, origin in [
            (f"127.0.0.1:{port}", None),
            (f"localhost:{port}", None),
            ("localhost:9999", "http://localhost:9999"),
            (f"[::1]:{port}", None),
            (socket.gethostname(), None),
        ]:
            extra = [f"Origin: {origin}"] if origin else []
            status, doc = await raw(h.url, request("POST", "/Evaluate", host, *extra, body=BODY))
            assert status == 200 and doc["output"] == [[2.0]], (host, origin, status, doc)
        status, _ = await raw(h.url, request("GET", "/dashboard", f"127.0.0.1:{port}", f"Origin: {h.url}"))
        assert status == 200
        assert (await h.evaluate(3.0)) == (200, {"output": [[6.0]]})  # aiohttp, as a client would


def test_host_names_that_name_the_balancer():
    check = HostCheck("127.0.0.1", ["login1.cluster.example"])
    good = [b"localhost", b"LOCALHOST:1", b"127.0.0.1:80", b"[::1]:4242", b"[::1]", b"10.0.0.7:4242",
            b"login1.cluster.example:4242", b"login1.cluster.example.", b"app.localhost:8080",
            socket.gethostname().encode()]  # fmt: skip
    for host in good:
        assert check.host_ok(host), host
    for host in [b"rebind.attacker.example", b"localhost.attacker.example", b"127.0.0.1.nip.io", b"", b"x"]:
        assert not check.host_ok(host), host

    def req(**headers: bytes) -> Request:
        return Request(b"GET", b"/", {k.encode(): v for k, v in headers.items()}, b"", True, False, None)

    assert check(None, req()) is None  # no Host (HTTP/1.0), no Origin: no browser
    assert check(None, req(host=b"localhost:1", origin=b"http://localhost:1")) is None
    assert check(None, req(host=b"localhost:1", origin=b"http://localhost:2")) is not None
    assert check(None, req(host=b"localhost:1", origin=b"null")) is not None


# -- item 8 (part): a reload that removes a user closes their open connections --------------------------


KEEP_ALIVE = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(10)

def ask():
    s.sendall(b"GET /dashboard HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
    buf = b""
    while b"\\r\\n\\r\\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return "closed"
        buf += chunk
    head, _, body = buf.partition(b"\\r\\n\\r\\n")
    n = int(head.lower().split(b"content-length: ")[1].split(b"\\r\\n")[0])
    while len(body) < n:
        body += s.recv(65536)
    return head.split(b" ")[1].decode()

for line in sys.stdin:  # one request per line the test sends, on the same connection
    try:
        print(ask(), flush=True)
    except OSError as exc:
        print("closed", type(exc).__name__, flush=True)
"""


@in_loop
async def test_removing_a_user_by_reload_closes_their_keep_alive_connections(tmp_path: Path):
    """The other Unix user, let in by ``allow_users``, keeps one connection open; a reload without
    them closes it at once (before: 68 of 68 calls over 34 s were still served on it)."""
    uid, gid = other_user()
    name = pwd.getpwuid(uid).pw_name
    top = {"port": 0, "scale_interval_s": 0.05}
    async with running(tmp_path, SPEC, balancer={**top, "allow_users": [name]}) as h:
        host, port = _addr(h.url)
        child = await asyncio.create_subprocess_exec(
            PYTHON, "-c", KEEP_ALIVE, host, str(port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            user=uid, group=gid, extra_groups=[],
        )  # fmt: skip
        assert child.stdin is not None and child.stdout is not None

        async def ask() -> str:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(b"go\n")
            return (await asyncio.wait_for(child.stdout.readline(), 15)).decode().strip()

        try:
            assert await ask() == "200" and await ask() == "200"  # one connection, kept alive
            again = tmp_path / "again.toml"
            again.write_text('[balancer]\nport = 0\nscale_interval_s = 0.05\n\n'
                             '[[servers]]\nname = "t"\ncommand = ["x"]\nmodels = ["forward"]\n')  # fmt: skip
            ok, doc = await h.balancer.reloader.reload(str(again))
            assert ok, doc
            assert h.balancer.gate.allowed == {os.geteuid()}
            assert (await ask()).startswith("closed")  # not served on: closed by the reload
            refused = await h.event("peer.refused", uid=uid)
            assert f"uid {uid}" in refused["reason"]
        finally:
            child.stdin.close()
            await child.wait()


# -- item 1: the control listener ---------------------------------------------------------------------


FLOOD = """
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((host, port))
    except OSError:
        s.close()
        continue
    socks.append(s)
print(len(socks), flush=True)
sys.stdin.read()  # hold them until the test is done
"""


@in_loop
async def test_another_users_idle_connections_do_not_starve_registrations(tmp_path: Path):
    """9,999 idle connections of another user on this machine made every registration fail; now
    each is refused at once and the launcher's registration goes through."""
    uid, gid = other_user()
    spec = [{**SPEC[0], "min_servers": 1}]
    async with model_server() as model, running(tmp_path, spec) as h:
        host, port = _addr(h.control_url)
        front = h.balancer.control_front
        n = front.limits.max_connections + 500  # more than the listener may hold (half the fd limit)
        flood = await asyncio.create_subprocess_exec(
            PYTHON, "-c", FLOOD, host, str(port), str(n),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            user=uid, group=gid, extra_groups=[],
        )  # fmt: skip
        assert flood.stdout is not None and flood.stdin is not None
        try:
            opened = int(await asyncio.wait_for(flood.stdout.readline(), 120))
            assert opened > front.limits.max_connections, opened  # the kernel completed every handshake
            h.serve(model)  # the launcher registers now, while the flood is held open
            await h.event("server.ready", timeout=30)
            assert len(front.conns) < 100, len(front.conns)
            refused = await h.event("peer.refused", port="control")
            assert refused["uid"] == uid and f"uid {uid}" in refused["reason"]
            assert (await h.evaluate(1.0)) == (200, {"output": [[2.0]]})
        finally:
            flood.stdin.close()
            await flood.wait()


@in_loop
async def test_remote_connections_without_the_token_are_bounded(tmp_path: Path, monkeypatch: Any):
    """Peers on other hosts (here: loopback taken for remote, with no UID to tell): each address
    holds at most PER_SOURCE connections without the token, all at most MAX_PENDING, none longer
    than the deadline; the launchers' connections send the token at once and are never cut."""
    monkeypatch.setattr(admission, "_on_this_host", lambda peer, local: False)
    spec = [{**SPEC[0], "min_servers": 1}]
    async with model_server() as model, running(tmp_path, spec) as h:
        gate = h.balancer.control_gate
        gate.lookup = FakeLookup(None)
        gate.deadline_s = 3.0
        addr = _addr(h.control_url)
        idle = []
        for _ in range(200):  # far more than one address may hold without the token
            idle.append(await asyncio.open_connection(*addr))
        front = h.balancer.control_front
        await until(lambda: len(gate._pending) == admission.PER_SOURCE, 10, "evictions down to the cap")
        h.serve(model)
        await h.event("server.ready", timeout=30)
        # A request without the token does not make a connection a launcher's, nor keep it open.
        r, w = idle[-1]
        w.write(b"POST /api/servers/s9/lease HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert b" 401 " in await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        await until(lambda: not gate._pending, 10, "the deadline")
        assert (await asyncio.wait_for(r.read(), 5)).endswith(b"}")  # the 401's body, then the close
        for r, w in idle:
            if r is not idle[-1][0]:
                assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
        assert h.balancer.pool.live() and h.of("server.ready")
        # The launcher's lease goes on over its (trusted) connection; a new one with the token works.
        status, _ = await h.post("/api/servers/nope/lease", {})
        assert status == 200
        assert len(front.conns) < 20
        refused = await h.event("peer.refused", port="control")
        assert refused["count"] >= 1 and refused["remote"] == "127.0.0.1"


@in_loop
async def test_the_control_gate_caps_waiting_connections_and_their_deadline():
    class T:
        def __init__(self, host: str) -> None:
            self.info = {"peername": (host, 5000), "sockname": ("10.0.0.1", 4243)}
            self.closed = False

        def get_extra_info(self, name: str) -> Any:
            return self.info[name]

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

    bus = EventBus()
    gate = ControlGate(bus, TOKEN, FakeLookup(None), deadline_s=0.3, per_source=3, max_pending=5)
    a = [T("10.9.9.9") for _ in range(5)]
    for t in a:
        assert gate(t) is None  # type: ignore[arg-type]
    assert [t.closed for t in a] == [True, True, False, False, False]  # one address: 3 at most
    b = [T(f"10.8.0.{i}") for i in range(3)]
    for t in b:
        gate(t)  # type: ignore[arg-type]
    assert [t.closed for t in a + b] == [True, True, True, False, False, False, False, False]  # 5 in all
    token = Request(b"POST", b"/x", {b"authorization": f"Bearer {TOKEN}".encode()}, b"", True, False, None)
    wrong = Request(b"POST", b"/x", {b"authorization": b"Bearer nope"}, b"", True, False, None)
    assert gate.check(a[3], wrong) is None and gate.check(a[4], token) is None  # type: ignore[arg-type]
    await until(lambda: a[3].closed and all(t.closed for t in b), 5, "the deadline")
    assert not a[4].closed  # it sent the token: a launcher's
    me = T("127.0.0.1")
    gate.lookup = FakeLookup(os.geteuid())
    assert gate(me) is None and not gate._pending  # type: ignore[arg-type]  # the owner's: trusted
    gate.lookup = FakeLookup(os.geteuid() + 1)
    refused = gate(T("127.0.0.1"))  # type: ignore[arg-type]
    assert refused is not None and refused[0] == 403
    gate.close()


def test_allow_hosts_config_key():
    from balancer.config.parse import parse_config
    from balancer.config.schema import ConfigError
    from balancer.ops.reload import FIXED

    cfg = parse_config({"balancer": {"allow_hosts": ["login1.cluster.example"]}, "servers": SPEC})
    assert cfg.allow_hosts == ("login1.cluster.example",) and "allow_hosts" in FIXED
    assert parse_config({"servers": SPEC}).allow_hosts == ()
    for bad in ("login1", [""], [1]):
        with pytest.raises(ConfigError, match="allow_hosts"):
            parse_config({"balancer": {"allow_hosts": bad}, "servers": SPEC})
