"""Owner-only client port against a real balancer process: another Unix user (created by the test) is
refused on the client port before any model runs, the owner is served, ``allow_uids`` lets the other
user in (peer UIDs and the control listener in-process: inproc/test_peer)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import umbridge

from tests.helpers import BalancerProc, reap, test_model_spec, wait_until
from tests.system.test_security import other_user

AS_OTHER = [
    ("POST", "/Evaluate", b'{"name": "forward", "input": [[1.0]], "config": {}}'),
    ("GET", "/Info", b""),
    ("GET", "/dashboard", b""),
    ("GET", "/no-such-route", b""),
]


def as_user(uid: int, gid: int, url: str, requests: list[tuple[str, str, bytes]]) -> list[tuple[int, Any]]:
    """Make ``requests`` from a child process running as ``uid`` (a fresh connection each);
    returns each (status, JSON body)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the other user, then speak plain HTTP
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out = []
            for method, path, body in requests:
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
                c.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
                resp = c.getresponse()
                out.append((resp.status, resp.read().decode(errors="replace")))
                c.close()
            os.write(w, orjson.dumps(out))
        except BaseException as exc:
            os.write(w, orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = orjson.loads(f.read())
    os.waitpid(pid, 0)
    assert isinstance(data, list), data
    return [(status, orjson.loads(body) if body.startswith("{") else body) for status, body in data]


def test_another_user_is_refused_on_the_client_port_and_the_owner_is_served(tmp_path: Path):
    uid, gid = other_user()
    assert uid != os.geteuid()
    b = BalancerProc(tmp_path, [test_model_spec(models=["forward"], min_servers=1)])
    pids: list[int] = []
    try:
        wait_until(lambda: b.find("server.ready"), 60, what="a ready server")
        pids = b.server_pids()
        answers = as_user(uid, gid, b.url, AS_OTHER)
        for (method, path, _), (status, body) in zip(AS_OTHER, answers, strict=True):
            assert status == 403, (method, path, status, body)
            assert body["error"]["type"] == "Forbidden" and f"uid {uid}" in body["error"]["message"]
        refused = b.wait_event("peer.refused", uid=uid)
        assert refused["remote"] == "127.0.0.1"
        wait_until(lambda: sum(e["count"] for e in b.events("peer.refused")) == len(AS_OTHER), 15)
        assert not b.events("call.received") and not b.events("call.dispatched")  # no model ran
        assert umbridge.HTTPModel(b.url, "forward")([[1.0]]) == [[2.0]]  # the owner is served
        assert len(b.events("call.dispatched")) == 1
    finally:
        reap([b], pids)


def test_allow_uids_lets_another_user_in(tmp_path: Path):
    uid, gid = other_user()
    b = BalancerProc(tmp_path, [test_model_spec(models=["forward"], min_servers=1)], allow_uids=[uid])
    pids: list[int] = []
    try:
        wait_until(lambda: b.find("server.ready"), 60, what="a ready server")
        pids = b.server_pids()
        (status, body), (info_status, _) = as_user(uid, gid, b.url, AS_OTHER[:2])
        assert status == 200 and body["output"] == [[2.0]], body
        assert info_status == 200 and not b.events("peer.refused")
    finally:
        reap([b], pids)
