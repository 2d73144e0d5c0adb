"""The registration directory against another user and planted files (issue 21, item 3), on the real
``FileRegistration`` and the launcher's side of the contract: an unsafe directory is refused, a
symlink is never followed, a FIFO never blocks the poll, files of another user are removed unread,
the token never passes through a file another user could have prepared. With a balancer process and
a second user acting: system/test_filereg_users."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from balancer.config.schema import ConfigError
from balancer.control.api import Control
from balancer.control.filereg import FileRegistration
from balancer.launcher.contract import ALIVE, dir_problem, write_atomic
from balancer.launcher.main import _stop_and_mtime
from balancer.observe.events import EventBus
from tests.system.test_security import other_user


def files(d: Path) -> FileRegistration:
    return FileRegistration(d, cast(Control, None), EventBus(), lease_s=3.0)


def in_thread(fn: Any, timeout: float = 10.0) -> Any:
    """``fn()`` on a thread, or fail if it does not return within ``timeout`` (a blocked read)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert out, f"{fn} did not return within {timeout} s"
    return out[0]


def test_an_unsafe_registration_dir_is_refused_at_the_start(tmp_path: Path):
    uid, gid = other_user()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, uid, gid)
    theirs.chmod(0o777)
    with pytest.raises(ConfigError, match=f"owned by uid {uid}"):
        files(theirs)._prepare()
    assert not (theirs / ALIVE).exists()
    open_ = tmp_path / "open"
    open_.mkdir()
    open_.chmod(0o777)
    with pytest.raises(ConfigError, match="mode 0777 lets other users write"):
        files(open_)._prepare()
    new = tmp_path / "a" / "new"
    files(new)._prepare()  # made here: 0700, with its heartbeat file 0600
    assert oct(new.stat().st_mode & 0o777) == "0o700" and oct((new / ALIVE).stat().st_mode & 0o777) == "0o600"
    assert dir_problem(new) is None


def test_a_symlinked_heartbeat_is_replaced_not_followed(tmp_path: Path):
    reg = tmp_path / "reg"
    reg.mkdir(mode=0o700)
    target = tmp_path / "victim" / "chosen-by-attacker"
    target.parent.mkdir()
    (reg / ALIVE).symlink_to(target)
    (reg / "s1.stop").symlink_to(tmp_path / "victim" / "stop-target")
    fr = files(reg)
    fr._prepare()
    assert not target.exists() and not (reg / ALIVE).is_symlink() and (reg / ALIVE).is_file()
    (reg / ALIVE).unlink()
    (reg / ALIVE).symlink_to(target)
    fr._pass(["s1"], touch=True)
    assert not target.exists() and not (tmp_path / "victim" / "stop-target").exists()
    assert (reg / ALIVE).is_file() and not (reg / "s1.stop").is_symlink()


def test_a_fifo_or_a_symlink_named_like_a_report_never_blocks_the_poll(tmp_path: Path):
    reg = tmp_path / "reg"
    files(reg)._prepare()
    os.mkfifo(reg / "zz.exited.json")
    os.mkfifo(reg / "s1.register.json")
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"code": 0}))
    (reg / "s2.exited.json").symlink_to(secret)
    (reg / "s3.exited.json").write_text(json.dumps({"code": 3}))
    found = in_thread(lambda: files(reg)._pass([], touch=False))
    assert found == [("exited", "s3", {"code": 3})]  # the real report of ours only
    assert sorted(p.name for p in reg.iterdir()) == [ALIVE]  # the rest removed unread
    assert secret.exists()


def test_files_another_user_planted_are_not_honoured(tmp_path: Path):
    uid, gid = other_user()
    reg = tmp_path / "reg"
    files(reg)._prepare()
    for name, doc in (("s1.exited.json", {"code": 1}), ("s2.register.json", {"token": "x", "server": "s2"})):
        (reg / name).write_text(json.dumps(doc))
        os.chown(reg / name, uid, gid)
    assert files(reg)._pass([], touch=False) == []
    assert sorted(p.name for p in reg.iterdir()) == [ALIVE]
    # The launcher's side: another user's stop file is no stop, their heartbeat no heartbeat.
    stop = reg / "s1.stop"
    stop.touch()
    os.chown(stop, uid, gid)
    os.chown(reg / ALIVE, uid, gid)
    assert _stop_and_mtime(stop, reg / ALIVE) == (False, None)
    os.chown(stop, os.geteuid(), os.getegid())
    assert _stop_and_mtime(stop, reg / ALIVE)[0] is True


def test_the_token_is_never_written_through_a_planted_temporary_file(tmp_path: Path):
    reg = tmp_path / "reg"
    files(reg)._prepare()
    loot = tmp_path / "loot"
    (reg / ".s1.register.json.tmp").symlink_to(loot)  # the temporary name a launcher used to use
    old = os.umask(0)  # the most open umask: the temporary file is 0600 all the same
    try:
        write_atomic(reg / "s1.register.json", json.dumps({"token": "secret"}))
    finally:
        os.umask(old)
    assert not loot.exists()
    assert oct((reg / "s1.register.json").stat().st_mode & 0o777) == "0o600"
    assert not [p for p in reg.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
