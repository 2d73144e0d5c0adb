"""Owner-only client port (peer.py, access.py) and the separate control listener, in-process.

The kernel tells the UID behind a loopback connection; the gate admits the owner and whom the config
allows; the launchers' control API lives on its own listener and wants the token (another Unix user
against a real balancer process: system/test_peer_users)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError
from balancer.http.peer import NetlinkLookup, PeerLookup, peer_uid, proc_uid
from balancer.observe.events import EventBus
from balancer.ops.access import PeerGate
from tests.fakes import TOKEN, running


@contextlib.contextmanager
def connection(family: int = socket.AF_INET, host: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A connected loopback pair; yields our (accepted) end."""
    with socket.socket(family) as ls:
        ls.bind((host, 0))
        ls.listen()
        with socket.socket(family) as c:
            c.connect((host, ls.getsockname()[1]))
            a, _ = ls.accept()
            with a:
                yield a


def ends(a: socket.socket) -> tuple[tuple[str, int], tuple[str, int]]:
    return a.getsockname()[:2], a.getpeername()[:2]


def test_peer_uid_finds_our_own_uid_both_ways():
    me = os.geteuid()
    with connection() as a:
        local, peer = ends(a)
        assert peer_uid(local, peer) == me
        assert NetlinkLookup().uid(peer, local) == me
        assert proc_uid(peer, local) == me
        assert PeerLookup("proc").peer_uid(local, peer) == me
        # Our own (accepted) socket is a different address pair: never mistaken for the peer's.
        assert peer_uid(local, (peer[0], 1)) is None
        assert proc_uid((peer[0], 1), local) is None


def test_peer_uid_over_ipv6_and_an_ipv4_client_of_a_dual_stack_listener():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    me = os.geteuid()
    try:
        cm = connection(socket.AF_INET6, "::1")
        a = cm.__enter__()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        local, peer = ends(a)
        assert NetlinkLookup().uid(peer, local) == me and proc_uid(peer, local) == me
    finally:
        cm.__exit__(None, None, None)
    with socket.socket(socket.AF_INET6) as ls:  # "::" takes IPv4 clients too, as ::ffff:127.0.0.1
        ls.bind(("::", 0))
        ls.listen()
        with socket.create_connection(("127.0.0.1", ls.getsockname()[1])):
            a, _ = ls.accept()
            with a:
                local, peer = ends(a)
                assert peer[0] == "::ffff:127.0.0.1"
                assert NetlinkLookup().uid(peer, local) == me and proc_uid(peer, local) == me


class FakeTransport:
    def __init__(self, peer: tuple[str, int], local: tuple[str, int] = ("127.0.0.1", 4242)) -> None:
        self.info = {"peername": peer, "sockname": local}

    def get_extra_info(self, name: str) -> Any:
        return self.info[name]


class FakeLookup(PeerLookup):
    def __init__(self, uid: int | OSError | None) -> None:
        self.uid, self.method = uid, "fake"

    def peer_uid(self, local: tuple[str, int], peer: tuple[str, int]) -> int | None:
        if isinstance(self.uid, OSError):
            raise self.uid
        return self.uid

    def close(self) -> None:
        pass


def test_the_gate_admits_the_owner_and_whom_the_config_allows_and_fails_closed():
    async def main() -> None:
        bus = EventBus()
        seen: list[dict[str, Any]] = []
        bus.subscribe(seen.append)
        me, other = os.geteuid(), os.geteuid() + 4321

        def gate(uid: int | OSError | None, **kw: Any) -> PeerGate:
            return PeerGate(bus, lookup=FakeLookup(uid), **kw)

        local = FakeTransport(("127.0.0.1", 5000))
        remote = FakeTransport(("10.1.2.3", 5000), ("10.1.2.4", 4242))
        assert gate(me)(local) is None
        refused = gate(other)(local)
        assert refused is not None and refused[0] == 403
        assert orjson.loads(refused[2])["error"]["type"] == "Forbidden"
        assert gate(other, allow_uids=[other])(local) is None
        assert gate(None)(local) is not None  # a loopback peer whose user is unknown: refused
        assert b"allow_remote" in gate(None)(remote)[2]  # type: ignore[index]
        assert gate(None, allow_remote=True)(remote) is None
        assert gate(None, allow_remote=True)(local) is not None  # loopback stays closed
        broken = gate(OSError(13, "Permission denied"), allow_remote=True)(local)
        assert broken is not None and b"Permission denied" in broken[2]  # a failed lookup: closed
        g = gate(other)
        for _ in range(5):
            g(local)
        g.close()  # flushes what the rate limit held back
        counts = [e["count"] for e in seen if e["ev"] == "peer.refused"]
        assert counts == [1, 1, 1, 1, 1, 1, 4]  # five gates once each; g: one line at once, one for the rest

    asyncio.run(main())


def test_config_keys(tmp_path: Path):
    servers = [{"name": "t", "command": ["x"]}]
    cfg = parse_config({"balancer": {"allow_users": ["root"], "allow_uids": [1234]}, "servers": servers})
    assert cfg.allow_users == ("root",) and cfg.allow_uids == (1234,) and cfg.control_host == "127.0.0.1"
    with pytest.raises(ConfigError, match="allow_users: no such user: 'no-such-user-here'"):
        parse_config({"balancer": {"allow_users": ["no-such-user-here"]}, "servers": servers})
    with pytest.raises(ConfigError, match="allow_uids"):
        parse_config({"balancer": {"allow_uids": ["root"]}, "servers": servers})
    with pytest.raises(ConfigError, match="control_port"):
        parse_config({"balancer": {"control_port": 70000}, "servers": servers})
    with pytest.raises(ConfigError, match="allow_remote"):
        parse_config({"balancer": {"allow_remote": "yes"}, "servers": servers})


def test_the_control_listener_wants_the_token_and_the_client_port_does_not_serve_it(tmp_path: Path):
    async def main() -> None:
        async with running(tmp_path, [{"name": "t", "command": ["x"], "models": ["forward"]}]) as h:
            ctl = h.control_url
            assert ctl != h.url
            for path in ("/api/servers/register", "/api/servers/s1/lease", "/api/servers/s1/exited"):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"token={TOKEN}"}):
                    async with h.http.post(ctl + path, json={"server": "s1"}, headers=headers) as r:
                        assert r.status == 401, (path, headers)
                        assert (await r.json())["error"]["type"] == "Unauthorized"
            await h.event("auth.refused")
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with h.http.post(ctl + "/api/servers/nope/lease", json={}, headers=auth) as r:
                assert r.status == 200 and await r.json() == {"stop": True}
            for path in ("/api/servers/register", "/api/servers/s1/lease"):
                async with h.http.post(h.url + path, json={"server": "s1"}, headers=auth) as r:
                    assert r.status == 404, path  # the client port serves UM-Bridge and the operator
            async with h.http.get(ctl + "/Info") as r:
                assert r.status == 404  # and the control port no UM-Bridge
            # The token in a cookie is no token: a cross-site request cannot carry it.
            async with h.http.post(h.url + "/api/specs/t/resume", headers={"Cookie": f"token={TOKEN}"}) as r:
                assert r.status == 401

    asyncio.run(main())
