"""A newcomer's first failures, as they meet them: a model that crashes at start and one that never
opens its port. The reason (the model's own last stderr lines, the log file's path) reaches the
official client's error, ``balancer status`` and serve's console; a silent model fails at the
probe time (``UMBRIDGE_BALANCER_PROBE_S``), not at the start-up timeout."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import umbridge

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
CRASH = "import sys; print('loading mesh...', file=sys.stderr); sys.exit('cannot open mesh.h5: no such file')"


def status_json(b) -> dict:
    r = requests.get(b.url + "/api/status", headers={"Authorization": f"Bearer {b.token()}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_crashing_model_says_why_and_where_on_client_status_and_console(start_balancer) -> None:
    b = start_balancer(
        [{"name": "broken", "command": [sys.executable, "-c", CRASH], "max_start_failures": 2}]
    )
    with pytest.raises(Exception) as err:
        umbridge.HTTPModel(b.url, "forward")  # no models listed: /Info waits for the spec's fate
    msg = str(err.value)
    assert "failed to start 2 times" in msg and "cannot open mesh.h5: no such file" in msg
    log = Path(status_json(b)["failures"]["broken"]["log"])
    assert log.parent == b.run_dir / "logs" and log.name.startswith("s") and log.suffix == ".log"
    assert f"log: {log}" in msg and "loading mesh..." in log.read_text()

    status = subprocess.run(
        [sys.executable, "-m", "balancer.cli", "status", "--run-dir", str(b.run_dir)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    held = next(line for line in status.stdout.splitlines() if line.startswith("held: broken:"))
    assert "cannot open mesh.h5" in held and str(log) in held

    assert b.stop() == 0
    console = b.output()
    failed = [
        line for line in console.splitlines() if " ERROR server s" in line and "(broken) failed" in line
    ]
    assert len(failed) == 2 and all(
        "its stderr ends: loading mesh... | cannot open mesh.h5" in f for f in failed
    )
    assert "log: " + str(b.run_dir / "logs") in failed[0]
    assert "`balancer resume broken`" in console
    # The official client asks /Info twice (its error message asks again).
    assert "summary: 0 calls answered, 2 failed; servers: 2 started, 2 failed;" in console


def test_silent_model_fails_at_the_probe_time_and_waiting_calls_are_counted(start_balancer) -> None:
    silent = {
        "name": "silent",
        "command": [sys.executable, "-c", "import time; time.sleep(60)"],
        "max_start_failures": 1,
        "env": {"UMBRIDGE_BALANCER_PROBE_S": "2"},  # the start-up timeout stays 120 s
    }
    b = start_balancer([silent])
    answer: list[requests.Response] = []
    t = threading.Thread(target=lambda: answer.append(requests.get(b.url + "/Info", timeout=60)))
    t.start()
    # While the /Info call waits for the first server, the status counts it.
    wait_until(lambda: status_json(b)["queues"].get("(not yet known)") == 1, 10, what="waiting /Info counted")
    t.join(30)
    assert answer, "/Info still waits"
    r = answer[0]
    assert r.status_code == 503
    msg = r.json()["error"]["message"]
    assert "started, but nothing answers /Info on port " in msg
    assert "after 2 s (process still running)" in msg
    assert "log: " + str(b.run_dir / "logs" / "s1.log") in msg
    assert status_json(b)["queues"].get("(not yet known)", 0) == 0


def test_a_model_on_the_wrong_port_is_told_so(start_balancer) -> None:
    """The common first mistake: a model that listens on a port of its own, not on $PORT."""
    code = "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); time.sleep(60)"
    deaf = {
        "name": "deaf",
        "command": [sys.executable, "-c", code],
        "max_start_failures": 1,
        "env": {"UMBRIDGE_BALANCER_PROBE_S": "2"},
    }
    b = start_balancer([deaf])
    r = requests.get(b.url + "/Info", timeout=60)
    assert r.status_code == 503
    msg = r.json()["error"]["message"]
    assert "started, but it listens on port " in msg and ", not on $PORT=" in msg, msg
