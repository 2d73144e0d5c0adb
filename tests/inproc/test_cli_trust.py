"""The operator CLI against hostile surroundings (issue 21, item 7): the token goes only to a URL read
from a run directory of ours alone (or given with ``--url``), and a malformed API answer is one line
``balancer: error: ...`` with exit status 2, never a traceback. The API is played by a tiny local
server that answers raw bytes."""

from __future__ import annotations

import contextlib
import os
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from balancer.cli import apiclient
from balancer.cli.main import main
from tests.system.test_security import other_user

TOKEN = "secret-token-of-the-owner"


class _Api(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    answer = b""
    seen: list[str]


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline(65536)
            if not line:
                return
            head += line
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        self.rfile.read(int(headers.get("content-length", "0")))
        server.seen.append(headers.get("authorization", ""))
        # The CLI may hang up once it has read its limit (a huge body): that is its job, and the
        # fake server's broken pipe must not print a traceback into the output the test checks.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            self.wfile.write(server.answer)


@contextlib.contextmanager
def fake_api() -> Iterator[_Api]:
    srv = _Api(("127.0.0.1", 0), _Handler)
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def http(status: str, body: bytes, ctype: str = "application/json", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


MALFORMED = [
    ("not JSON", ["status"], http("200 OK", b"hello, world")),
    ("a JSON array", ["status"], http("200 OK", b"[1, 2, 3]")),
    ("JSON null", ["servers"], http("200 OK", b"null")),
    ("missing keys", ["servers"], http("200 OK", b'{"ok": true}')),
    ("wrong types", ["servers"], http("200 OK", b'{"servers": 5}')),
    ("wrong inner types", ["servers"], http("200 OK", b'{"servers": [5, "x"]}')),
    ("missing keys of scale", ["scale", "t", "--max", "3"], http("200 OK", b'{"spec": 1}')),
    (
        "an HTML 500",
        ["status"],
        http("500 Internal Server Error", b"<html><h1>oops</h1></html>", "text/html"),
    ),
    ("an empty body", ["servers"], http("200 OK", b"")),
    ("a truncated body", ["status"], http("200 OK", b'{"calls": {', length=4000)),
    ("invalid UTF-8", ["status"], http("200 OK", b'{"a": "\xff\xfe"}')),
    ("a bad status line", ["status"], b"HTTP/1.1 abc\r\n\r\n"),
    ("a huge body", ["status"], http("200 OK", b'{"x": "' + b"y" * (2 << 20) + b'"}')),
]


@pytest.mark.parametrize(("what", "argv", "answer"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_answer_is_one_line_and_exit_2(
    what: str, argv: list[str], answer: bytes, monkeypatch: Any, capsys: Any
):
    monkeypatch.setenv("UMBRIDGE_BALANCER_TOKEN", TOKEN)
    monkeypatch.setattr(apiclient, "MAX_ANSWER", 1 << 20)
    with fake_api() as api:
        api.answer = answer
        rc = main([*argv, "--url", f"http://127.0.0.1:{api.server_address[1]}"])
    out = capsys.readouterr()
    assert rc == 2, (what, out)
    assert out.err.startswith("balancer: error: ") and out.err.count("\n") == 1, (what, out.err)
    assert "Traceback" not in out.err and not out.out


def _run_dir(root: Path, url: str, name: str = "20260101-000000-1") -> Path:
    d = root / ".balancer-runs" / name
    d.mkdir(parents=True)
    d.chmod(0o700)
    (d / "url").write_text(url + "\n")
    (d / "token").write_text(TOKEN)
    (d / "url").chmod(0o600)
    (d / "token").chmod(0o600)
    return d


def test_the_token_never_goes_to_a_url_from_a_run_directory_of_another_user(
    tmp_path: Path, monkeypatch: Any, capsys: Any
):
    uid, gid = other_user()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UMBRIDGE_BALANCER_TOKEN", TOKEN)
    with fake_api() as api:
        api.answer = http("200 OK", b"{}")
        planted = _run_dir(tmp_path, f"http://127.0.0.1:{api.server_address[1]}")
        os.chown(planted, uid, gid)
        for f in planted.iterdir():
            os.chown(f, uid, gid)
        assert main(["status"]) == 2  # the newest run is skipped: not ours
        assert "no balancer found" in capsys.readouterr().err
        assert main(["status", "--run-dir", str(planted)]) == 2
        assert f"owned by uid {uid}" in capsys.readouterr().err
        assert api.seen == []
        # A directory of ours whose url file another user owns or may write: refused as well.
        os.chown(planted, os.geteuid(), os.getegid())
        assert main(["status", "--run-dir", str(planted)]) == 2
        assert "not a regular file of ours" in capsys.readouterr().err
        os.chown(planted / "url", os.geteuid(), os.getegid())
        (planted / "url").chmod(0o622)
        assert main(["status", "--run-dir", str(planted)]) == 2
        assert api.seen == []
        # An open directory (0777) of ours: anyone could have replaced its files.
        (planted / "url").chmod(0o600)
        planted.chmod(0o777)
        assert main(["status", "--run-dir", str(planted)]) == 2
        assert "lets other users in" in capsys.readouterr().err
        assert api.seen == []
        # The url file a symlink (to a file of ours): not followed.
        planted.chmod(0o700)
        (planted / "url").rename(planted / "url.real")
        (planted / "url").symlink_to(planted / "url.real")
        assert main(["status", "--run-dir", str(planted)]) == 2
        assert api.seen == []


def test_the_token_goes_to_a_run_of_ours_and_its_token_file_must_be_private(
    tmp_path: Path, monkeypatch: Any, capsys: Any
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UMBRIDGE_BALANCER_TOKEN", raising=False)
    with fake_api() as api:
        api.answer = http("200 OK", b'{"servers": []}')
        ours = _run_dir(tmp_path, f"http://127.0.0.1:{api.server_address[1]}")
        assert main(["servers"]) == 0
        assert api.seen == [f"Bearer {TOKEN}"]
        (ours / "token").chmod(0o644)  # readable by others: the token is out already, do not use it
        assert main(["servers", "--url", f"http://127.0.0.1:{api.server_address[1]}"]) == 2
        assert "only we can read" in capsys.readouterr().err
        assert len(api.seen) == 1
