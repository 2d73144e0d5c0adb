"""The launcher on its own and the reference-compatible ``load-balancer`` entry point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests
import umbridge

from balancer.observe.journal import read_journal
from tests.helpers import MODELS, ROOT, pid_alive, wait_until

LAUNCH = [sys.executable, "-m", "balancer.launcher", "--"]


def test_launcher_writes_reference_url_file_and_forwards_sigterm(tmp_path):
    env = {**os.environ, "UMBRIDGE_LOADBALANCER_COMM_FILEDIR": str(tmp_path)}
    env["UMBRIDGE_BALANCER_JOB_ID"] = "77"  # as a backend's job script exports it
    env.pop("UMBRIDGE_BALANCER_URL", None)
    p = subprocess.Popen(
        [*LAUNCH, sys.executable, str(MODELS / "testmodel.py")],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url_file = tmp_path / "url-77.txt"
        wait_until(url_file.exists, 30, what="url-77.txt")
        url = url_file.read_text()
        assert url.startswith("http://") and umbridge.HTTPModel(url, "forward")([[1.0]]) == [[2.0]]
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0  # the server stopped cleanly on the forwarded SIGTERM
        assert "signal SIGTERM" in p.stderr.read()
        port = int(url.rsplit(":", 1)[1])
        try:
            requests.get(f"http://127.0.0.1:{port}/Info", timeout=2)
            raise AssertionError("the model server still answers")
        except requests.ConnectionError:
            pass
    finally:
        p.kill()


def test_launcher_exits_with_the_servers_code(tmp_path):
    script = tmp_path / "srv.sh"
    # A server that becomes ready, then dies with code 7 on its own.
    script.write_text(f'"{sys.executable}" "{MODELS / "testmodel.py"}" &\nsleep 2\nexit 7\n')
    env = {**os.environ}
    env.pop("UMBRIDGE_BALANCER_URL", None)
    r = subprocess.run(
        [*LAUNCH, "bash", str(script)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 7, r.stderr
    assert "server exited with code 7" in r.stderr


def test_launcher_without_command_is_one_line():
    r = subprocess.run([*LAUNCH], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "give the model server command" in r.stderr and "Traceback" not in r.stderr


def test_launcher_refused_token_stops_its_server(start_balancer):
    b = start_balancer([{"name": "m", "command": "true", "models": ["forward"]}])
    env = {
        **os.environ,
        "UMBRIDGE_BALANCER_URL": b.control_url,
        "UMBRIDGE_BALANCER_TOKEN": "wrong",
        "UMBRIDGE_BALANCER_SERVER_ID": "s1",
    }
    r = subprocess.run(
        [*LAUNCH, sys.executable, str(MODELS / "testmodel.py")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "refused our token" in r.stderr
    assert b.find("auth.refused", path="/api/servers/register")


def test_load_balancer_drop_in_with_reference_job_script(tmp_path):
    """`load-balancer --scheduler=... --port=...` in a directory with hq_scripts/job.sh, as users run it."""
    scripts = tmp_path / "hq_scripts"
    scripts.mkdir()
    (scripts / "job.sh").write_text(
        "#!/bin/bash\n#HQ --cpus=1\n# The model server listens on $PORT, as with UM-Bridge's load balancer.\n"
        f'exec "{sys.executable}" "{MODELS / "testmodel.py"}"\n'
    )
    lb = Path(sys.executable).parent / "load-balancer"
    p = subprocess.Popen(
        [str(lb), "--scheduler=local", "--port=0", "--delay-ms=10", "--run-dir=run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    journal = tmp_path / "run" / "journal.jsonl"
    pids: list[int] = []
    try:
        started = wait_until(
            lambda: journal.exists() and [e for e in read_journal(journal) if e["ev"] == "balancer.started"],
            30,
        )
        url = started[0]["url"]
        assert umbridge.HTTPModel(url, "forward")([[4.0]]) == [[8.0]]
        pids = [int(e["pid"]) for e in read_journal(journal) if e["ev"] == "server.registered"]
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 0
    assert pids and not any(pid_alive(x) for x in pids)


def test_load_balancer_without_scripts_is_one_line(tmp_path):
    lb = Path(sys.executable).parent / "load-balancer"
    r = subprocess.run(
        [str(lb), "--scheduler=slurm"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "slurm_scripts/job.sh" in r.stderr and r.stderr.count("\n") == 1
