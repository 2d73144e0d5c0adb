"""Every operator command of the CLI against a real balancer process (the operator API in-process:
inproc/test_operator)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import umbridge

from tests.helpers import ROOT, BalancerProc, reap, test_model_spec, wait_until


def _cli(*args: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "balancer.cli", *args, "--run-dir", str(run_dir)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_every_operator_command_against_a_running_balancer(tmp_path: Path):
    b = None
    try:
        b = BalancerProc(tmp_path, [test_model_spec(min_servers=1, max_servers=2)])
        b.wait_event("server.ready")
        model = umbridge.HTTPModel(b.url, "forward")
        assert model([[1.0]]) == [[2.0]]
        run = b.run_dir

        out = _cli("status", run_dir=run)
        assert out.returncode == 0, out.stderr
        completed = len(b.events("call.completed"))  # metadata calls too
        assert "testmodel" in out.stdout and "running" in out.stdout
        assert f"{completed} completed" in out.stdout
        out = _cli("status", "--json", run_dir=run)
        assert out.returncode == 0
        doc = json.loads(out.stdout)
        assert doc["specs"]["testmodel"]["servers"] == {"ready": 1} and doc["calls"]["completed"] == completed

        out = _cli("servers", run_dir=run)
        sid = b.find("server.ready")["server"]
        assert out.returncode == 0 and sid in out.stdout and "ready" in out.stdout

        out = _cli("scale", "testmodel", "--max", "3", "--backlog", "1", run_dir=run)
        assert out.returncode == 0 and "max 3, backlog 1" in out.stdout, out.stderr
        out = _cli("pause", "testmodel", run_dir=run)
        assert out.returncode == 0 and "paused" in out.stdout
        assert "paused" in _cli("status", run_dir=run).stdout
        out = _cli("resume", "testmodel", run_dir=run)
        assert out.returncode == 0 and "unpaused" in out.stdout

        # drain: the server finishes and stops; min_servers 1 brings a new one.
        out = _cli("drain", sid, run_dir=run)
        assert out.returncode == 0 and "ready -> draining" in out.stdout, out.stderr
        b.wait_event("server.stopped", server=sid)
        others = lambda: [e["server"] for e in b.events("server.ready") if e["server"] != sid]  # noqa: E731
        second = wait_until(others, 30, what="a new server")[0]
        out = _cli("stop", second, run_dir=run)
        assert out.returncode == 0 and "-> stopping" in out.stdout
        b.wait_event("server.stopped", server=second)
        assert model([[3.0]]) == [[6.0]]  # the pool serves on

        for args, words in [
            (("scale", "nope", "--max", "1"), "no server spec 'nope'"),
            (("scale", "testmodel"), "give at least one of"),
            (("scale", "testmodel", "--min", "5", "--max", "1"), "must not exceed"),
            (("scale", "testmodel", "--max", "-1"), "must be >= 0"),
            (("drain", "s999"), "no server 's999'"),
            (("pause", "nope"), "no server spec"),
        ]:
            out = _cli(*args, run_dir=run)
            assert out.returncode == 2 and words in out.stderr, (args, out.stderr)
            assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
        out = _cli("status", run_dir=tmp_path / "nowhere")
        assert out.returncode == 2 and "cannot read the balancer's url" in out.stderr
        acts = [e["action"] for e in b.events("operator.action")]
        assert acts == ["scale", "pause", "resume", "drain", "stop"]
        assert all(e["who"] for e in b.events("operator.action"))
        assert b.stop() == 0
    finally:
        reap([b], b.server_pids() if b else [])
