"""Workload classes in a real balancer process: a real run of the four example models (each must come
out as its class); CPU affinity: CPU-bound servers never share a core (the classifier: unit/test_workload)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import umbridge

from tests.helpers import BalancerProc, reap, wait_until

MODELS = Path(__file__).resolve().parents[2] / "models"
EXAMPLES = {"cpu_spinner": "cpu", "mem_streamer": "memory", "io_writer": "io", "waiter": "wait"}


def drive(url: str, model: str, stop: threading.Event, errors: list[str]) -> None:
    m = umbridge.HTTPModel(url, model)
    while not stop.is_set():
        try:
            m([[1.0]])
        except Exception as exc:
            errors.append(f"{model}: {exc}")
            return


def test_example_models_classified(tmp_path: Path) -> None:
    """All four in one balancer, one server each, driven until each has a final verdict."""
    specs = [{"name": n, "command": [sys.executable, str(MODELS / f"{n}.py")], "min_servers": 1,
              "max_servers": 1} for n in EXAMPLES]  # fmt: skip
    b = BalancerProc(tmp_path, specs, monitor_interval_s=0.5, lease_s=2)
    pids: list[int] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        priors = {e["spec"]: e["cls"] for e in wait_until(lambda: len(b.events("workload.prior")) == 4 and
                                                            b.events("workload.prior"))}  # fmt: skip
        assert priors == EXAMPLES
        wait_until(lambda: len(b.events("server.ready")) >= 4, 60, what="servers ready")
        pids = b.server_pids()
        errors: list[str] = []
        threads = [threading.Thread(target=drive, args=(b.url, n, stop, errors)) for n in EXAMPLES]
        for t in threads:
            t.start()

        # Verdicts are journaled on a change only: the live figures come from the status.
        wait_until(lambda: _status_samples(b) >= 12 or errors, 90, interval=0.5, what="12 busy samples each")
        assert not errors, errors
        stop.set()
        for t in threads:
            t.join()
        assert b.stop() == 0
        final = {e["spec"]: e for e in b.events("workload.classified") if e.get("final")}
        got = {n: final[n]["cls"] for n in EXAMPLES if n in final}
        assert got == EXAMPLES, {n: (final[n]["cls"], final[n]["why"]) for n in final}
        for e in final.values():
            assert e["figures"]["cpu_per_slot"] >= 0 and e["why"] and e["models"] == [e["spec"]]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        reap([b], pids)


def _status_samples(b: BalancerProc) -> int:
    """The fewest busy samples of any spec so far, from ``/api/status``."""
    import json
    import urllib.request

    req = urllib.request.Request(f"{b.url}/api/status", headers={"Authorization": f"Bearer {b.token()}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        specs = json.load(r)["specs"]
    counts = [((s.get("workload") or {}).get("figures") or {}).get("samples", 0) for s in specs.values()]
    return min(counts) if counts else 0


def _allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def test_cpu_bound_servers_pinned_never_more_than_cores(tmp_path: Path) -> None:
    """cpus = 1, max_servers above the cores: every running spinner has a core of its own and the
    rest wait (server.deferred), by the prior before any call was measured."""
    import os

    cores = sorted(os.sched_getaffinity(0))
    n = len(cores)
    if n > 8:
        pytest.skip(f"{n} cores: the test starts one spinner more than cores")
    spec = {"name": "cpu_spinner", "command": [sys.executable, str(MODELS / "cpu_spinner.py")],
            "min_servers": n + 1, "max_servers": n + 1, "resources": {"cpus": 1}}  # fmt: skip
    b = BalancerProc(tmp_path, [spec])
    pids: list[int] = []
    try:
        assert b.wait_event("workload.prior")["cls"] == "cpu"
        deferred = b.wait_event("server.deferred")
        assert "CPU-bound" in deferred["reason"]
        regs = wait_until(lambda: len(b.events("server.registered")) >= n and b.events("server.registered"))
        pids = b.server_pids()
        pinned = sorted(_allowed(int(e["pid"])) for e in regs)
        assert pinned == sorted(str(c) for c in cores)  # one distinct core each
        assert b.find("server.started", server=deferred["server"]) is None
        assert len(b.events("server.started")) == n
    finally:
        reap([b], pids)
