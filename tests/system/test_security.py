"""The owner's pool is the owner's, for a real balancer process: the run directory and its files are
private, and a model server on the balancer's machine listens on loopback (or is reported); the
status API's token: inproc/test_security_api."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import umbridge

from balancer.control.exposure import exposed_addresses
from tests.helpers import BalancerProc, reap, test_model_spec, wait_until

ALL_INTERFACES = """
import os, umbridge
class Forward(umbridge.Model):
    def __init__(self): super().__init__("forward")
    def get_input_sizes(self, config): return [1]
    def get_output_sizes(self, config): return [1]
    def __call__(self, parameters, config): return [[2 * parameters[0][0]]]
    def supports_evaluate(self): return True
umbridge.serve_models([Forward()], int(os.environ["PORT"]))  # binds every interface
"""


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_private_files_and_a_local_server_on_loopback_only(tmp_path: Path):
    b = BalancerProc(tmp_path, [test_model_spec(models=["forward"], min_servers=1)])
    pids: list[int] = []
    try:
        reg = wait_until(lambda: b.find("server.ready") and b.find("server.registered"), 60)
        pids = b.server_pids()
        assert umbridge.HTTPModel(b.url, "forward")([[1.0]]) == [[2.0]]
        assert mode(b.run_dir) == 0o700
        for f in (b.journal, b.run_dir / "token", b.run_dir / "logs" / "s1.log"):
            assert mode(f) == 0o600, f
        assert exposed_addresses(reg["port"]) == []  # models/serving.py bound it to 127.0.0.1
        assert not b.events("server.exposed")
    finally:
        reap([b], pids)


def test_a_local_server_listening_on_every_interface_is_reported(tmp_path: Path):
    script = tmp_path / "open_model.py"
    script.write_text(ALL_INTERFACES)
    spec = {"name": "open", "command": [sys.executable, str(script)], "models": ["forward"], "min_servers": 1}
    b = BalancerProc(tmp_path, [spec])
    pids: list[int] = []
    try:
        exposed = wait_until(lambda: b.find("server.exposed"), 60, what="the exposure warning")
        pids = b.server_pids()
        assert exposed["server"] == "s1" and exposed["addresses"] and "127.0.0.1" not in exposed["addresses"]
        assert umbridge.HTTPModel(b.url, "forward")([[1.0]]) == [[2.0]]  # a warning, not a refusal
    finally:
        reap([b], pids)


def other_user() -> tuple[int, int]:
    """A second Unix user for access tests (created once; the tests run as root)."""
    import pwd
    import shutil
    import subprocess

    import pytest

    name = "ub-other"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0 or shutil.which("useradd") is None:
            pytest.skip("a second Unix user needs root and useradd")
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def test_another_user_can_read_nothing_of_the_run(tmp_path: Path):
    import shutil
    import subprocess
    import tempfile

    uid, gid = other_user()
    # pytest's own directories are 0700: the other user must be stopped by the run dir, not by them.
    tmp_path = Path(tempfile.mkdtemp(prefix="ub-access-", dir="/tmp"))
    tmp_path.chmod(0o755)
    assert (
        subprocess.run(["ls", str(tmp_path)], user=uid, group=gid, extra_groups=[], timeout=10).returncode
        == 0
    )
    b = BalancerProc(tmp_path, [test_model_spec(models=["forward"], min_servers=1)])
    pids: list[int] = []
    try:
        wait_until(lambda: b.find("server.ready"), 60)
        pids = b.server_pids()
        for f in (b.run_dir / "token", b.journal, b.run_dir / "logs" / "s1.log"):
            r = subprocess.run(
                ["cat", str(f)],
                capture_output=True,
                text=True,
                user=uid,
                group=gid,
                extra_groups=[],
                timeout=10,
            )
            assert r.returncode != 0 and "Permission denied" in r.stderr, f
    finally:
        reap([b], pids)
        shutil.rmtree(tmp_path, ignore_errors=True)
