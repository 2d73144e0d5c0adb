"""SLURM backend end to end: a real balancer on the real one-node test cluster, real model servers,
the official ``umbridge`` client. The node has 2 CPUs, so at most two 1-CPU servers run at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import tomli_w
import umbridge

from balancer.backends.batch.slurm import parse_slurm_time, read_directives
from tests.helpers import MODELS, ROOT, pid_alive, test_model_spec, wait_until
from tests.slurm.fixture import SlurmCluster

pytestmark = pytest.mark.timeout(90)


def eigen_spec(**kw: Any) -> dict[str, Any]:
    return {
        "name": "eigen",
        "command": [sys.executable, str(MODELS / "eigen.py")],
        "models": ["posterior"],
        **kw,
    }


def serve(
    start_balancer: Any,
    slurm: SlurmCluster,
    servers: list[dict[str, Any]],
    backend: dict[str, Any] | None = None,
    **balancer: Any,
) -> Any:
    """A balancer on the test cluster (SLURM_CONF in its environment), bound to loopback."""
    return start_balancer(
        servers, env=slurm.env, scheduler="slurm", host="127.0.0.1", backend=backend or {}, **balancer
    )


def ready(b: Any, n: int, timeout: float = 45) -> None:
    """n servers ready and their jobs seen running (squeue polls may come after the registration)."""
    wait_until(
        lambda: (len(b.events("server.ready")) >= n and len(b.events("server.started")) >= n) or b._died(),
        timeout,
        what=f"{n} servers ready",
    )


def stop_and_check_clean(b: Any, slurm: SlurmCluster) -> None:
    """SIGINT; then squeue shows no job of ours and no launcher or model process is left."""
    pids = b.server_pids()
    assert pids
    assert b.stop() == 0
    assert b.find("balancer.stopped")
    assert slurm.jobs() == []  # close() waited until squeue had none of our jobs left
    wait_until(lambda: not any(pid_alive(p) for p in pids), 10, what="launchers and servers gone")


def job_of(b: Any, server: str) -> str:
    return b.wait_event("server.started", server=server)["job"]


def test_pool_is_one_job_array_serves_100_eigen_calls_and_leaves_nothing(start_balancer, slurm):
    b = serve(start_balancer, slurm, [eigen_spec(min_servers=2, max_servers=2)])
    ready(b, 2)
    jobs = sorted(e["job"] for e in b.events("server.started"))
    assert len(jobs) == 2
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_0", f"{array}_1"]  # one sbatch, two array tasks
    assert len(b.events("scale.decision")) == 1
    # Output of launchers, servers and SLURM goes to the run directory, not the working directory.
    logs = b.run_dir / "logs"
    assert (logs / "s1.log").exists() and (logs / f"slurm-{array}_0.out").exists()
    model = umbridge.HTTPModel(b.url, "posterior")
    with ThreadPoolExecutor(10) as ex:
        outs = list(ex.map(lambda _: model([[100]]), range(100)))
    assert outs == [[[1.0]]] * 100
    done = [e for e in b.events("call.completed") if e.get("service_s") is not None]
    assert len(done) == 100 and all(e["status"] == 200 for e in done)
    assert {e["server"] for e in done} == {"s1", "s2"}
    assert len(b.events("server.requested")) == 2  # the warm pool served everything
    stop_and_check_clean(b, slurm)
    stopped = {e["server"]: e["reason"] for e in b.events("server.stopped")}
    assert set(stopped) == {"s1", "s2"}


def test_scancel_of_a_server_job_during_a_call(start_balancer, slurm):
    spec = test_model_spec(
        "slow", models=["forward"], min_servers=2, max_servers=2, env={"TEST_DELAY": "1500"}
    )
    b = serve(start_balancer, slurm, [spec])
    ready(b, 2)
    model = umbridge.HTTPModel(b.url, "forward")

    # A plain scancel (SIGTERM, then SIGKILL after KillWait): the call still gets its answer, the
    # server is reported failed and min_servers brings a replacement once the CPU is free.
    t, result, first = b.call_in_background(model, 21.0)
    slurm.run(["scancel", job_of(b, first["server"])])
    t.join(60)
    assert result == [[[42.0]]]
    failed = b.wait_event("server.failed", server=first["server"])
    # Known from the launcher (SIGTERM from scancel) or from squeue, whichever comes first.
    assert any(w in failed["reason"] for w in ("CANCELLED", "lost", "after signal SIGTERM")), failed
    wait_until(lambda: len(b.events("server.ready")) >= 3, 45, what="replacement ready")
    # Every process of a job killed at once mid-call (a node failure): the call is retried on the
    # other server. (scancel --signal=KILL --full reaches the launcher as SIGTERM on some runs here,
    # and the model then finishes its call gracefully, so the processes are killed directly.)
    t, result, second = b.call_in_background(model, 5.0)
    reg = b.find("server.registered", server=second["server"])
    for pid in (reg["launcher_pid"], reg["pid"]):
        os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert result == [[[10.0]]]
    requeued = b.wait_event("call.requeued", call=second["call"])
    assert requeued["server"] == second["server"]
    retry = b.find("call.dispatched", call=second["call"], attempt=2)
    assert retry is not None and retry["server"] != second["server"]
    assert b.find("call.completed", call=second["call"])["status"] == 200
    assert not b.events("call.failed")
    stop_and_check_clean(b, slurm)


def test_broken_script_and_impossible_requests_are_reported_and_the_rest_serves(
    start_balancer, slurm, tmp_path: Path
):
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/bin/bash\n#SBATCH --cpus-per-task=1\nexec /nonexistent/model-server\n")
    once = {"min_servers": 1, "max_servers": 1, "max_start_failures": 1}
    specs = [
        {"name": "broken", "job_script": str(broken), "models": ["broken"], **once},
        test_model_spec("cpus", models=["cpus"], resources={"cpus": 64}, **once),
        test_model_spec("memory", models=["memory"], resources={"memory": "100000G"}, **once),
        test_model_spec("later", models=["later"], sbatch_args=["--begin=now+3600"], **once),
        eigen_spec(min_servers=1, max_servers=1),
    ]
    b = serve(start_balancer, slurm, specs, {"pending_timeout_s": 3})
    held = {
        e["spec"]: e["reason"]
        for e in wait_until(
            lambda: len(b.events("spec.held")) == 4 and b.events("spec.held"), 30, what="held"
        )
    }
    assert "exited with code 127" in held["broken"]
    assert "PartitionConfig" in held["cpus"]  # 64 CPUs: accepted by sbatch, never startable here
    assert "sbatch rejected the job" in held["memory"] and "Memory specification" in held["memory"]
    assert "pending for more than 3 s" in held["later"]
    # The good spec serves all along; a call for a held spec gets a 503 that says why.
    model = umbridge.HTTPModel(b.url, "posterior")
    assert [model([[50]]) for _ in range(5)] == [[[1.0]]] * 5
    r = requests.post(f"{b.url}/Evaluate", json={"name": "cpus", "input": [[1.0]]}, timeout=30)
    assert r.status_code == 503 and "PartitionConfig" in r.text
    # Nothing of the failed starts is left in the queue (the pending job was cancelled).
    wait_until(lambda: len(slurm.jobs()) == 1, 10, what="only the good server's job left")
    stop_and_check_clean(b, slurm)


def test_server_is_replaced_before_its_time_limit(start_balancer, slurm):
    # SLURM's smallest time limit is a minute; a 56 s margin makes the pool drain ~4 s after start.
    spec = test_model_spec(
        "short",
        models=["forward"],
        min_servers=1,
        max_servers=1,  # so the only second server is the replacement
        env={"TEST_DELAY": "50"},
        resources={"time_limit": "1"},
    )
    b = serve(start_balancer, slurm, [spec], {"time_limit_margin_s": 56})
    ready(b, 1)
    model = umbridge.HTTPModel(b.url, "forward")
    stop = threading.Event()
    results: list[Any] = []

    def client() -> None:
        while not stop.is_set():
            results.append(model([[1.0]]))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        b.wait_event("server.draining", server="s1", timeout=30)
        b.wait_event("server.stopped", server="s1", timeout=30)
        # The replacement (requested when s1 began to drain) serves calls.
        wait_until(lambda: b.find("call.completed", server="s2"), 30, what="a call served by the replacement")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert results and all(r == [[2.0]] for r in results)
    assert not b.events("call.failed") and not b.events("call.requeued")
    started = b.find("server.started", server="s1")
    stopped = b.find("server.stopped", server="s1")
    assert stopped["t"] - started["t"] < 30  # long before the job's 60 s limit
    assert b.find("server.stopping", server="s1")["reason"] == "time limit ahead"
    assert b.find("server.requested", server="s2")["t"] >= b.find("server.draining", server="s1")["t"]
    stop_and_check_clean(b, slurm)


def test_several_servers_in_one_job(start_balancer, slurm):
    b = serve(start_balancer, slurm, [eigen_spec(min_servers=2, max_servers=2, servers_per_job=2)])
    ready(b, 2)
    jobs = {e["server"]: e["job"] for e in b.events("server.started")}
    assert len(jobs) == 2 and len(set(jobs.values())) == 1  # one allocation hosts both
    registered = {e["server"]: e for e in b.events("server.registered")}
    assert registered["s1"]["launcher_pid"] != registered["s2"]["launcher_pid"]
    model = umbridge.HTTPModel(b.url, "posterior")
    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(lambda _: model([[100]]), range(40))) == [[[1.0]]] * 40
    stop_and_check_clean(b, slurm)


def test_reference_style_job_script_with_its_sbatch_lines(start_balancer, slurm):
    spec = {"name": "script", "job_script": str(ROOT / "slurm_scripts" / "job.sh"), "min_servers": 1}
    b = serve(start_balancer, slurm, [spec], delay_ms=100)
    ready(b, 1)
    assert umbridge.HTTPModel(b.url, "forward")([[4.0]]) == [[8.0]]
    job = job_of(b, "s1")
    assert slurm.run(["squeue", "-h", "-j", job, "-o", "%l|%C"]).stdout.strip() == "1:00:00|1"
    generated = (b.run_dir / "logs" / "job-script.sh").read_text()
    assert "#SBATCH --time=01:00:00" in generated and "bash " + spec["job_script"] in generated
    stop_and_check_clean(b, slurm)


def run_cli(tmp_path: Path, cfg: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(cfg))
    return subprocess.run(
        [sys.executable, "-m", "balancer.cli", "serve", "--config", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_config_errors_are_one_line_and_exit_2(slurm_cluster, tmp_path: Path):
    base = {"balancer": {"scheduler": "slurm", "port": 0, "run_dir": str(tmp_path / "run")}}
    res = run_cli(tmp_path, {**base, "servers": [eigen_spec(partition="nope")]}, slurm_cluster.env)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "balancer: config error: servers.eigen.partition: no SLURM partition 'nope' (known: debug, scavenger)"
    )
    no_slurm = {**slurm_cluster.env, "PATH": str(Path(sys.executable).parent)}
    res = run_cli(tmp_path, {**base, "servers": [eigen_spec()]}, no_slurm)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "sbatch is not on PATH" in res.stderr
    res = run_cli(
        tmp_path, {**base, "backend": {"poll_interval": 1}, "servers": [eigen_spec()]}, slurm_cluster.env
    )
    assert res.returncode == 2 and "backend.poll_interval: unknown key for slurm" in res.stderr


def test_squeue_times_and_directives(tmp_path: Path):
    assert parse_slurm_time("NONE") is None and parse_slurm_time("UNLIMITED") is None
    assert parse_slurm_time("N/A") is None
    t = parse_slurm_time(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(1_800_000_000)))
    assert t == 1_800_000_000
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --time=1:00\n\n#SBATCH -c 2\necho hi\n#SBATCH --ignored\n")
    assert read_directives(script) == ["#SBATCH --time=1:00", "#SBATCH -c 2"]
