"""CLI errors of ``balancer serve`` as a process: a bad config or bad flags are one line and exit 2,
a port in use is one line (the validation itself: unit/test_units)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from balancer.backends.registry import SCHEDULERS

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "balancer.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[servers]]\nname = "m"\ncommand = "x"\nconcurrency = 0\n')
    r = run_cli("serve", "--config", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "servers.m.concurrency" in r.stderr
    r = run_cli("serve", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    bad.write_text("[[servers]\n")
    r = run_cli("serve", "--config", str(bad))
    assert r.returncode == 2 and "invalid TOML" in r.stderr


def test_cli_bad_flags_exit_2():
    r = run_cli("serve", "--config", "x.toml", "--scheduler", "pbs")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    lb = Path(sys.executable).parent / "load-balancer"  # the installed console script
    r = subprocess.run([str(lb), "--delay-ms=-5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "delay-ms" in r.stderr


BAD_MARGIN = '[backend]\ntime_limit_margin_s = "x"\n'


@pytest.mark.parametrize(
    ("scheduler", "table", "error"),
    [
        ("local", "", "error: cannot listen"),
        # Backend options are checked when the file is loaded, before the port is bound.
        *[(s, BAD_MARGIN, "error: backend.time_limit_margin_s: expected a number") for s in SCHEDULERS],
        ("local", "[backend]\npoll_interval_s = 1\n", "backend.poll_interval_s: unknown key for local"),
        ("slurm", '[backend]\njob_name = "a b"\n', "backend.job_name: expected letters, digits"),
        ("hyperqueue", '[backend]\nmode = "cloud"\n', "backend.mode: expected one of embedded, server, hq"),
    ],
)
def test_cli_port_in_use_is_one_line(tmp_path, scheduler, table, error):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[balancer]\nscheduler = "{scheduler}"\nport = {port}\nrun_dir = "{tmp_path}/run"\n{table}'
            '[[servers]]\nname = "m"\ncommand = "python x.py"\n'
        )
        r = run_cli("serve", "--config", str(cfg))
    assert r.returncode == 2 and error in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    if table:  # a bad option: nothing started, not even a run dir
        assert not (tmp_path / "run").exists()
