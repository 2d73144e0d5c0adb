"""The whole balancer on HyperQueue (embedded LocalCluster from the ``hyperqueue`` package)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import umbridge

from tests.helpers import ROOT, pid_alive, test_model_spec, wait_until

HQ = {"scheduler": "hyperqueue"}


def hq_helpers(run_dir) -> list[psutil.Process]:
    """Embedded HyperQueue helper processes of one run (identified by their server directory)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "hyperqueue.embedded" in cmd and str(run_dir) in cmd:
            out.append(p)
    return out


def test_pool_of_hq_tasks_serves_calls_and_shuts_down_clean(start_balancer):
    b = start_balancer(
        [test_model_spec(models=["forward"], min_servers=3, max_servers=3, env={"TEST_DELAY": "5"})],
        backend={"workers": 1, "cpus_per_worker": 3},
        **HQ,
    )
    wait_until(lambda: len(b.events("server.ready")) == 3, 60, what="3 HQ servers ready")
    # server.started comes with the backend's next status poll, which may follow the registration.
    started = wait_until(lambda: len(b.events("server.started")) == 3 and b.events("server.started"), 10)
    assert len({e["job"] for e in started}) == 3  # one HQ job per server
    # The launcher reports the job id as HyperQueue writes it (from the wrapper's export).
    registered = {e["server"]: e["job"] for e in b.events("server.registered")}
    assert all(registered[e["server"]] == f"{e['job']}.0" for e in started)
    model = umbridge.HTTPModel(b.url, "forward")
    with ThreadPoolExecutor(6) as ex:
        outs = list(ex.map(lambda i: model([[float(i)]]), range(30)))
    assert outs == [[[2.0 * i]] for i in range(30)]
    assert len({e["server"] for e in b.events("call.dispatched")}) == 3
    pids = b.server_pids()
    assert len(pids) == 6 and hq_helpers(b.run_dir)
    assert b.stop() == 0
    assert not [p for p in pids if pid_alive(p)]
    wait_until(lambda: not hq_helpers(b.run_dir), 15, what="HQ helper gone")


def test_killing_a_task_process_mid_call_retries_elsewhere(start_balancer):
    b = start_balancer(
        [test_model_spec(models=["forward"], min_servers=2, max_servers=2, env={"TEST_DELAY": "3000"})],
        backend={"workers": 1, "cpus_per_worker": 2},
        **HQ,
    )
    wait_until(lambda: len(b.events("server.ready")) == 2, 60, what="2 HQ servers ready")
    model = umbridge.HTTPModel(b.url, "forward")
    t, result, first = b.call_in_background(model, 21.0)
    task = b.find("server.registered", server=first["server"])
    # The HQ task's whole process tree dies at once, as on a node failure.
    os.kill(task["launcher_pid"], signal.SIGKILL)
    os.kill(task["pid"], signal.SIGKILL)
    t.join(60)
    assert result == [[[42.0]]]
    assert b.find("call.requeued", call=first["call"])
    retry = b.find("call.dispatched", call=first["call"], attempt=2)
    assert retry["server"] != first["server"]
    assert b.wait_event("server.failed", server=first["server"])


def test_a_task_killed_alone_takes_its_model_server_along(start_balancer):
    b = start_balancer(
        [test_model_spec(models=["forward"], min_servers=1, max_servers=1)],
        backend={"workers": 1, "cpus_per_worker": 1},
        **HQ,
    )
    ready = b.wait_event("server.ready", timeout=60)
    task = b.find("server.registered", server=ready["server"])
    os.kill(task["launcher_pid"], signal.SIGKILL)  # only the task's own process
    # Its model server gets the launcher's death signal and ends; the pool replaces the server.
    wait_until(lambda: not pid_alive(task["pid"]), 15, what="orphaned model server gone")
    wait_until(lambda: len(b.events("server.ready")) == 2, 60, what="a replacement server")
    assert umbridge.HTTPModel(b.url, "forward")([[1.0]]) == [[2.0]]


def run_serve(tmp_path, backend: str, server: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[balancer]\nport = 0\nscheduler = "hyperqueue"\nrun_dir = "{tmp_path}/run"\n'
        f'[backend]\n{backend}\n[[servers]]\nname = "m"\ncommand = "python x.py"\n{server}\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "balancer.cli", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("backend", "server", "key"),
    [
        ('server_dir = "/nonexistent/hq-server"', "", "backend.server_dir"),
        ("cpus_per_worker = 2", "[servers.resources]\ncpus = 64", "servers.m"),
        ("colour = 1", "", "backend.colour"),
    ],
)
def test_bad_hq_config_is_one_line_and_exit_2(tmp_path, backend, server, key):
    r = run_serve(tmp_path, backend, server)
    assert r.returncode == 2, r.stderr
    assert key in r.stderr and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


@pytest.mark.skipif(
    shutil.which("hq") is None,
    reason="the hq binary is not on PATH (HPC users download it; not fetched at test time)",
)
def test_hq_binary_mode_starts_server_and_cancels(start_balancer):
    b = start_balancer([test_model_spec(models=["forward"], min_servers=1)], backend={"mode": "hq"}, **HQ)
    wait_until(lambda: b.find("server.ready"), 60)
    assert umbridge.HTTPModel(b.url, "forward")([[1.0]]) == [[2.0]]
    assert b.stop() == 0
