"""The timing analysis CLI as a process: bad input is one line and exit 2 (the rest: unit/test_analysis)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello\n")
    argv = [sys.executable, "-m", "balancer.analysis", "analyze", str(p), str(tmp_path / "missing")]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert out.stdout == ""
