"""Who can reach a model server on the balancer's machine. By default (a loopback TCP port) any
local user can call it directly, past the balancer's owner-only port: UM-Bridge has no
authentication. With ``isolate = "socket"`` the model listens on a Unix socket in an owner-only
directory: no TCP port in /proc/net/tcp, and another user's connect is refused by the file system."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import orjson
import umbridge

from balancer.launcher.contract import unix_path
from tests.helpers import BalancerProc, reap, test_model_spec, wait_until
from tests.system.test_security import other_user

EVALUATE = b'{"name": "forward", "input": [[1.0]], "config": {}}'


def call_as(uid: int, gid: int, url: str) -> str:
    """POST /Evaluate to the model server ``url`` from a child running as ``uid``: the answer's
    body, or the exception it met (as ``Type: message``)."""
    import http.client
    import socket
    from urllib.parse import urlsplit

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the other user, then speak plain HTTP to the model server
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            sock = unix_path(url)
            if sock is None:
                u = urlsplit(url)
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            else:
                c = http.client.HTTPConnection("localhost", timeout=30)
                c.sock = socket.socket(socket.AF_UNIX)
                c.sock.connect(sock)
            c.request("POST", "/Evaluate", body=EVALUATE, headers={"Content-Type": "application/json"})
            out = c.getresponse().read().decode(errors="replace")
        except BaseException as exc:
            out = f"{type(exc).__name__}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read().decode()
    os.waitpid(pid, 0)
    return data


def listening_inodes() -> set[str]:
    """Socket inodes of every listening TCP socket (IPv4 and IPv6) on this machine."""
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for row in f.read().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A":  # LISTEN
                    out.add(cols[9])
    return out


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def _open_base() -> Path:
    """A run's parent directory other users may enter: pytest's own are 0700, and the test must show
    what the model server's own socket or port allows, not what pytest's directories forbid."""
    base = Path(tempfile.mkdtemp(prefix="ub-iso-", dir="/tmp"))
    base.chmod(0o755)
    return base


def test_by_default_another_user_can_call_a_local_model_server_directly():
    """The measured exposure the README states: the balancer's port refuses another user, the model
    server's loopback port does not."""
    uid, gid = other_user()
    base = _open_base()
    b = BalancerProc(base, [test_model_spec(models=["forward"], min_servers=1)])
    pids: list[int] = []
    try:
        ready = wait_until(lambda: b.find("server.registered"), 60, what="a registered server")
        wait_until(lambda: b.find("server.ready"), 60, what="a ready server")
        pids = b.server_pids()
        url = ready["url"]
        assert url.startswith("http://127.0.0.1:")
        assert orjson.loads(call_as(uid, gid, url)) == {"output": [[2.0]]}  # straight past the balancer
        server_pid = int(ready["pid"])
        assert socket_inodes(server_pid) & listening_inodes()  # listed in /proc/net/tcp for everyone
    finally:
        reap([b], pids)
        shutil.rmtree(base, ignore_errors=True)


def test_isolate_socket_serves_calls_on_no_port_and_refuses_another_user():
    uid, gid = other_user()
    base = _open_base()
    spec = test_model_spec(models=["forward"], min_servers=1, isolate="socket")
    b = BalancerProc(base, [spec])
    pids: list[int] = []
    try:
        ready = wait_until(lambda: b.find("server.registered"), 60, what="a registered server")
        wait_until(lambda: b.find("server.ready"), 60, what="a ready server")
        pids = b.server_pids()
        url = ready["url"]
        sock = unix_path(url)
        assert sock is not None and ready["port"] is None, ready
        assert Path(sock).parent == b.run_dir / "sockets"
        assert stat.S_IMODE(os.stat(Path(sock).parent).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        # Served through the balancer with the official client.
        model = umbridge.HTTPModel(b.url, "forward")
        assert [model([[float(i)]]) for i in range(3)] == [[[0.0]], [[2.0]], [[4.0]]]
        # The model server listens on no TCP port at all.
        server_pid = int(ready["pid"])
        assert not socket_inodes(server_pid) & listening_inodes()
        # Another user cannot connect; the owner can.
        assert call_as(uid, gid, url).startswith("PermissionError"), call_as(uid, gid, url)
        assert orjson.loads(call_as(os.geteuid(), os.getegid(), url)) == {"output": [[2.0]]}
    finally:
        reap([b], pids)
        shutil.rmtree(base, ignore_errors=True)
