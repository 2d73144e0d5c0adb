"""``balancer serve`` as a process raises its soft file limit to the hard one at start (the bounded
caches: inproc/test_bounds)."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, wait_until


def test_serve_raises_the_soft_file_limit_to_the_hard_one(tmp_path: Path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[balancer]\nport = 0\nrun_dir = "{tmp_path}/run"\n[[servers]]\ncommand = "x"\n')
    p = subprocess.Popen(
        [sys.executable, "-m", "balancer.cli", "serve", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)),
    )
    try:
        assert p.stdout is not None
        assert b"serving UM-Bridge" in p.stdout.readline()

        def limits() -> list[str]:
            text = Path(f"/proc/{p.pid}/limits").read_text()
            return next(line for line in text.splitlines() if line.startswith("Max open files")).split()

        fields = wait_until(limits, 10)
        assert fields[3] == fields[4] == str(hard)  # soft raised from 256 to the hard limit
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(30)
