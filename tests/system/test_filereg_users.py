"""The attacks of issue 21 (item 3) on file registration, against a real balancer with launchers and a
second Unix user: a registration_dir another user owns (0777) is refused at the start; in the run's
own directory that user can neither read nor plant anything, and files planted for them (a stop file
and an exit report of theirs, a FIFO ``zz.exited.json``, a symlink ``balancer.alive``) neither stop a
server nor freeze the poll loop (the same on the components in-process: inproc/test_filereg_safety)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomli_w
import umbridge

from tests.helpers import ROOT, BalancerProc, reap, test_model_spec, wait_until
from tests.system.test_security import other_user


def test_a_registration_dir_of_another_user_is_refused_at_the_start(tmp_path: Path):
    uid, gid = other_user()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, uid, gid)
    theirs.chmod(0o777)
    cfg = {
        "balancer": {"port": 0, "run_dir": str(tmp_path / "run"), "registration": "file",
                     "registration_dir": str(theirs)},
        "servers": [test_model_spec(models=["forward"], min_servers=1, max_servers=1)],
    }  # fmt: skip
    (tmp_path / "b.toml").write_text(tomli_w.dumps(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "balancer.cli", "serve", "--config", str(tmp_path / "b.toml")],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert line.count("\n") == 0 and f"registration_dir: {theirs} is unsafe: owned by uid {uid}" in line, line
    assert not list(theirs.iterdir())  # nothing written there: no heartbeat, no registration


def as_other(uid: int, gid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), user=uid, group=gid, extra_groups=[], capture_output=True, text=True, timeout=30, cwd="/"
    )


def test_planted_files_stop_no_server_and_freeze_no_poll():
    uid, gid = other_user()
    # pytest's own directories are 0700: the other user must be stopped by the registration dir itself.
    tmp_path = Path(tempfile.mkdtemp(prefix="ub-filereg-", dir="/tmp"))
    tmp_path.chmod(0o755)
    spec = test_model_spec(models=["forward"], min_servers=2, max_servers=2)
    b = BalancerProc(tmp_path, [spec], registration="file", lease_s=3)
    pids: list[int] = []
    try:
        wait_until(lambda: len(b.events("server.ready")) == 2, 60, what="2 servers ready")
        pids = b.server_pids()
        (b.run_dir).chmod(0o755)  # even with the run dir open, the registration dir is the owner's
        reg = b.run_dir / "registration"
        # The other user can neither list, read nor plant anything there.
        assert as_other(uid, gid, "ls", str(b.run_dir)).returncode == 0  # the run dir they may list
        for argv in (("touch", str(reg / "s1.stop")), ("ls", str(reg)), ("cat", str(reg / "balancer.alive"))):
            r = as_other(uid, gid, *argv)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (argv, r.stderr)
        # Files planted for them (as if the directory had been theirs): not honoured.
        for name in ("s1.stop", "s2.exited.json"):
            (reg / name).write_text('{"code": 1, "why": "planted"}')
            os.chown(reg / name, uid, gid)
        os.mkfifo(reg / "zz.exited.json")
        target = tmp_path / "created-through-symlink"
        alive = reg / "balancer.alive"
        alive.unlink()
        alive.symlink_to(target)
        # The poll goes on: the FIFO and their report removed unread, the heartbeat a file again ...
        wait_until(
            lambda: not (reg / "zz.exited.json").exists() and not (reg / "s2.exited.json").exists(),
            15, what="the planted reports removed",
        )  # fmt: skip
        wait_until(lambda: alive.is_file() and not alive.is_symlink(), 15, what="the heartbeat replaced")
        beat = alive.stat().st_mtime
        wait_until(lambda: alive.stat().st_mtime > beat, 15, what="the next heartbeat")
        beat = alive.stat().st_mtime
        wait_until(lambda: alive.stat().st_mtime > beat, 15, what="one more heartbeat")
        # ... and both servers are still ready: no stop through their stop file, no lost lease.
        assert not target.exists()
        assert not b.events("server.stopping") and not b.events("server.failed")
        model = umbridge.HTTPModel(b.url, "forward")
        assert [model([[float(i)]]) for i in range(4)] == [[[2.0 * i]] for i in range(4)]
        assert len({e["server"] for e in b.events("call.dispatched")}) >= 1
        assert not b.events("server.stopping")
    finally:
        reap([b], pids)
        shutil.rmtree(tmp_path, ignore_errors=True)
