"""``balancer serve --detach`` and ``balancer stop``: a login-node daemon that outlives the shell
that started it, serves the official client, and stops without losing a call in flight; and the
shipped demo configuration started from another directory (its ``cwd`` is relative to the file)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import umbridge

from balancer.cli.main import main
from balancer.control import registry
from balancer.observe.journal import read_journal
from tests.helpers import MODELS, ROOT, pid_alive, wait_until


@pytest.fixture
def env(tmp_path: Path, monkeypatch: Any) -> dict[str, str]:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))  # this test's registry, read here as well
    return {**os.environ, "XDG_RUNTIME_DIR": str(xdg), "PYTHONPATH": str(ROOT)}


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (the registry's environment is set): (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def detach_via_shell(env: dict[str, str], config: Path, cwd: Path) -> tuple[int, str]:
    """Start it from a shell that exits right after: the balancer must outlive it."""
    line = shlex.join([sys.executable, "-m", "balancer.cli", "serve", "--config", str(config), "--port", "0"])
    out = subprocess.run(
        ["/bin/sh", "-c", f"{line} --detach; exit"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    m = re.search(r"serving UM-Bridge on (\S+) in the background \(pid (\d+), log (\S+)\)", out.stdout)
    assert m, out.stdout
    pid = int(m.group(2))
    assert pid_alive(pid) and Path(m.group(3)).is_file()
    return pid, m.group(1)


def test_a_detached_balancer_outlives_its_shell_and_stop_loses_no_call(
    tmp_path: Path, env: dict[str, str], capsys: Any, monkeypatch: Any
):
    for f in ("testmodel.py", "serving.py"):
        shutil.copy(MODELS / f, tmp_path / f)
    config = tmp_path / "pool.toml"  # a command relative to the config file's directory
    config.write_text(
        f'[[servers]]\nname = "slow"\ncommand = ["{sys.executable}", "testmodel.py"]\n'
        'env = { TEST_DELAY = "800" }\nmax_servers = 1\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pid, url = detach_via_shell(env, config, elsewhere)
    [entry] = registry.running()
    assert (entry.pid, entry.url, entry.config) == (pid, url, str(config))
    model = umbridge.HTTPModel(url, "forward")
    assert model([[1.0]]) == [[2.0]]
    journal = Path(entry.run_dir) / "journal.jsonl"
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(model([[3.0]])))
    t.start()
    wait_until(lambda: len([e for e in read_journal(journal) if e["ev"] == "call.dispatched"]) >= 2, 20)
    monkeypatch.chdir("/")
    rc, out, err = cli(capsys, "stop")  # from another directory; the call is in flight
    t.join(30)
    assert rc == 0, err
    assert out.splitlines()[-1] == "balancer: stopped"
    assert result == [[[6.0]]]  # answered, not lost
    assert not pid_alive(pid) and registry.running() == []
    assert "stopped" in (Path(entry.run_dir) / "balancer.log").read_text()
    assert cli(capsys, "stop")[2].startswith("balancer: error: no running balancer")


def test_the_demo_config_runs_from_another_directory(
    tmp_path: Path, env: dict[str, str], capsys: Any, monkeypatch: Any
):
    pid, url = detach_via_shell(env, ROOT / "examples" / "demo.toml", tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        assert umbridge.HTTPModel(url, "forward")([[2.0]]) == [[4.0]]
        rc, out, err = cli(capsys, "status")
        assert rc == 0, err
        assert f"cwd: testmodel: {ROOT}" in out.splitlines()
        stores = [line for line in out.splitlines() if line.startswith("stores: profiles ")]
        assert stores and "one per user" in stores[0]  # which stores, and that they are shared
    finally:
        assert cli(capsys, "stop")[0] == 0
    assert not pid_alive(pid)


def test_a_failed_start_is_one_line_and_exit_2(tmp_path: Path, env: dict[str, str]):
    config = tmp_path / "bad.toml"
    config.write_text('[balancer]\nhost = "192.0.2.1"\n[[servers]]\ncommand = ["true"]\n')  # not ours
    argv = [sys.executable, "-m", "balancer.cli", "serve", "--config", str(config), "--port", "0", "--detach"]
    out = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "cannot listen on 192.0.2.1" in out.stderr, out.stderr
    assert registry.running() == []
