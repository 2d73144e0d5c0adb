"""The per-user registry of running balancers (control/registry.py) and how the CLI picks from it:
owner-only files, dead and reused pids dropped, several running ones listed, never guessed."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from balancer.cli.apiclient import CliError, fig, running_entry
from balancer.control import registry
from balancer.launcher.contract import write_atomic


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: Any) -> Path:
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d / "umbridge-balancer"


def _enter(e: registry.Entry) -> None:
    d = registry._private_dir()
    write_atomic(d / f"{e.pid}.json", json.dumps(asdict(e)))


def _args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"pid": None, "run_dir": None, "url": None, **kw})


def test_an_entry_is_private_and_removed_at_shutdown(runtime: Path, tmp_path: Path):
    (tmp_path / "run").mkdir()
    paths = registry.register(tmp_path / "run", "http://127.0.0.1:4242", "/x/pool.toml", "local")
    assert [p.parent for p in paths] == [tmp_path / "run", runtime]
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths)
    [e] = registry.running()
    assert (e.pid, e.url, e.config) == (os.getpid(), "http://127.0.0.1:4242", "/x/pool.toml")
    assert e.cwd == os.getcwd() and registry.read_entry(tmp_path / "run" / "running.json") == e
    registry.unregister(paths)
    assert registry.running() == [] and not any(p.exists() for p in paths)


def test_dead_and_reused_pids_are_dropped_and_other_hosts_ignored(runtime: Path, tmp_path: Path):
    registry.register(tmp_path / "live", "http://127.0.0.1:1", None, "local")
    [me] = registry.running()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _enter(replace(me, pid=gone.pid, run_dir="dead"))  # the process has exited
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _enter(
            replace(me, pid=sleeper.pid, started=me.started - 3600, run_dir="reused")
        )  # another process now
        _enter(replace(me, pid=1, host="another-node", run_dir="remote"))  # a shared home's other node
        assert [e.run_dir for e in registry.running()] == [str(tmp_path / "live")]
        assert not (runtime / f"{gone.pid}.json").exists() and not (runtime / f"{sleeper.pid}.json").exists()
        assert (runtime / "1.json").exists()  # not ours to judge
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_cli_takes_the_only_one_lists_several_and_never_guesses(runtime: Path, tmp_path: Path):
    with pytest.raises(CliError, match="no running balancer"):
        running_entry(_args())
    registry.register(tmp_path / "a", "http://127.0.0.1:1", "/p/a.toml", "local")
    [a] = registry.running()
    assert running_entry(_args()) == a
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        b = replace(
            a, pid=sleeper.pid, started=registry.process_start(sleeper.pid) or 0, run_dir=str(tmp_path / "b")
        )
        _enter(b)
        with pytest.raises(
            CliError, match=r"2 balancers are running, say which with --pid or --run-dir: pid"
        ):
            running_entry(_args())
        assert running_entry(_args(pid=sleeper.pid)) == b
        assert running_entry(_args(run_dir=str(tmp_path / "a"))) == a
        with pytest.raises(CliError, match="no running balancer with pid 1 "):
            running_entry(_args(pid=1))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert running_entry(_args()) == a  # the killed one is dropped


def test_a_runtime_dir_of_another_user_is_not_used(tmp_path: Path, monkeypatch: Any):
    d = tmp_path / "xdg"
    d.mkdir(mode=0o777)
    d.chmod(0o777)  # open to everyone: not a runtime directory of ours
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.registry_dir() == tmp_path / "home" / ".local/state/umbridge-balancer/running"


def test_figures_are_rounded():
    assert [fig(v) for v in (0.0566747, 3.0, 12.34, 1234.5, 0.5, 0)] == [
        "0.06",
        "3",
        "12.3",
        "1234",
        "0.5",
        "0",
    ]
