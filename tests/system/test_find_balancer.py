"""Every command finds THE running balancer from any directory through the user's registry: two
running ones are listed (and told apart by ``--pid``), a killed one or a failed start is never
picked, ``balancer ls`` lists the running ones, ``--run-dir`` still works."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from balancer.cli.main import main
from tests.helpers import test_model_spec, wait_until


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_commands_find_the_running_balancer_from_anywhere(
    tmp_path: Path, start_balancer: Any, capsys: Any, monkeypatch: Any
):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.delenv("UMBRIDGE_BALANCER_TOKEN", raising=False)
    elsewhere = tmp_path / "elsewhere"
    # A dead balancer's and a failed start's run directories, newer than any, right here.
    for name in ("20990101-000000-1", "20990101-000000-2"):
        (elsewhere / ".balancer-runs" / name).mkdir(parents=True, mode=0o700)
    monkeypatch.chdir(elsewhere)
    env = {"XDG_RUNTIME_DIR": str(xdg)}
    a = start_balancer([test_model_spec()], env=env)
    wait_until(lambda: (xdg / "umbridge-balancer" / f"{a.proc.pid}.json").exists(), 10, what="registered")
    rc, out, err = cli(capsys, "status")
    assert rc == 0, err
    assert out.startswith(f"balancer {a.url},") and f"cwd: testmodel: {a.config.parent}" in out

    b = start_balancer([test_model_spec()], env=env)
    wait_until(lambda: (xdg / "umbridge-balancer" / f"{b.proc.pid}.json").exists(), 10, what="registered")
    rc, out, err = cli(capsys, "status")
    assert rc == 2 and err.count("\n") == 1, err
    assert "2 balancers are running, say which with --pid or --run-dir" in err
    assert f"pid {a.proc.pid} {a.url}" in err and f"pid {b.proc.pid} {b.url}" in err
    rc, out, err = cli(capsys, "status", "--pid", str(b.proc.pid))
    assert rc == 0 and out.startswith(f"balancer {b.url},"), err
    rc, out, err = cli(capsys, "status", "--run-dir", str(a.run_dir))  # as before, a run dir works
    assert rc == 0 and out.startswith(f"balancer {a.url},"), err
    rc, out, err = cli(capsys, "ls")
    rows = out.splitlines()
    assert rows[0].split() == ["PID", "URL", "SINCE", "SERVERS", "CONFIG"] and len(rows) == 3
    assert rows[1].split()[:2] == [str(a.proc.pid), a.url] and rows[1].endswith(str(a.config))
    assert rows[2].split()[:2] == [str(b.proc.pid), b.url]

    a.proc.send_signal(signal.SIGKILL)  # dies without a word: its entry stays behind
    a.proc.wait()
    assert (xdg / "umbridge-balancer" / f"{a.proc.pid}.json").exists()
    rc, out, err = cli(capsys, "servers")
    assert rc == 0, err  # b's: the dead one is not taken
    assert not (xdg / "umbridge-balancer" / f"{a.proc.pid}.json").exists()
    assert [r.split()[0] for r in cli(capsys, "ls")[1].splitlines()[1:]] == [str(b.proc.pid)]

    assert b.stop() == 0  # a clean stop leaves the registry; nothing runs, nothing is picked
    assert not (b.run_dir / "running.json").exists() and not (b.run_dir / "url").exists()
    (elsewhere / ".balancer-runs" / "b").symlink_to(b.run_dir)
    rc, out, err = cli(capsys, "status", "--run-dir", str(b.run_dir))
    assert rc == 2 and "no balancer runs from it (it stopped" in err, err
    assert cli(capsys, "ls")[1].startswith("no balancer is running")
    # Left: a's run dir (killed) and the two empty ones; none is taken for a running balancer.
    (elsewhere / ".balancer-runs" / "a").symlink_to(a.run_dir)
    rc, out, err = cli(capsys, "status")
    assert rc == 2 and "no balancer found" in err, err
    assert os.path.exists(a.run_dir / "running.json")
