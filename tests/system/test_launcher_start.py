"""``python -m balancer.launcher -- CMD`` starts the model before its own imports (launcher/child.py,
which loads no asyncio), so the model loads while the launcher does; a command that cannot run and a
command line without one still end with one line and the usual exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

LAUNCH = [sys.executable, "-m", "balancer.launcher"]


def test_the_model_is_started_by_a_module_that_loads_no_asyncio(tmp_path: Path) -> None:
    # What ``__main__`` runs before importing the launcher: the model runs, no asyncio loaded yet.
    out = tmp_path / "env"
    code = (
        "import sys; from balancer.launcher.child import start_from_argv; "
        f"c = start_from_argv(['--', 'sh', '-c', 'echo $PORT $UMBRIDGE_HOST > {out}']); "
        "c.popen.wait(); print('asyncio' in sys.modules, c.port, c.probe)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UMBRIDGE_BALANCER_", "UMBRIDGE_HOST"))}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    loaded, port, probe = r.stdout.split()
    assert loaded == "False"
    assert out.read_text().split() == [
        port,
        "127.0.0.1",
    ]  # its port, and loopback only (no balancer elsewhere)
    assert probe == f"http://127.0.0.1:{port}"


def test_a_command_that_cannot_run_is_one_line_and_127() -> None:
    r = subprocess.run(
        [*LAUNCH, "--", "/no/such/model-server"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert r.returncode == 127
    assert (
        r.stderr.strip() == "launch: error: cannot start '/no/such/model-server': No such file or directory"
    )


def test_no_command_is_a_usage_error() -> None:
    r = subprocess.run([*LAUNCH, "--"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "give the model server command after --" in r.stderr
