"""End-to-end behaviour of a real ``balancer serve`` with real local model servers: concurrency caps,
kill -9 mid-call, a crash-looping spec, signals and shutdown, the launcher's lease, a real journal
analysed (every endpoint, errors, bad input and HTTP edge cases in-process: inproc/test_endpoints)."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import umbridge

from tests.helpers import pid_alive, test_model_spec, wait_until


def _check_concurrency_from_journal(events: list[dict], limit: int) -> dict[str, int]:
    """Replay dispatch/finish events per server; return the peak number of calls at once."""
    running: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    where: dict[int, str] = {}
    for e in events:
        if e["ev"] == "call.dispatched":
            where[e["call"]] = e["server"]
            running[e["server"]] += 1
            peak[e["server"]] = max(peak[e["server"]], running[e["server"]])
            assert running[e["server"]] <= limit, f"server {e['server']} exceeded concurrency {limit}"
        elif e["ev"] in ("call.completed", "call.requeued") and e.get("server") and e["call"] in where:
            running[where.pop(e["call"])] -= 1
    return dict(peak)


@pytest.mark.parametrize(("concurrency", "loop"), [(1, "auto"), (2, "auto"), (1, "asyncio")])
def test_64_concurrent_calls_over_4_servers(start_balancer, concurrency, loop):
    """On the default loop (uvloop where installed) and on asyncio's own (``loop = "asyncio"``)."""
    b = start_balancer(
        [
            test_model_spec(
                models=["forward"],
                min_servers=4,
                max_servers=4,
                concurrency=concurrency,
                env={"TEST_DELAY": "20"},
            )
        ],
        loop=loop,
    )
    wait_until(lambda: len(b.events("server.ready")) == 4, 60, what="4 servers ready")
    uvloop = loop == "auto" and importlib.util.find_spec("uvloop") is not None
    assert b.events("balancer.started")[0]["loop"] == ("uvloop" if uvloop else "asyncio")
    model = umbridge.HTTPModel(b.url, "forward")
    with ThreadPoolExecutor(64) as ex:
        outs = list(ex.map(lambda i: model([[float(i)]]), range(64)))
    assert outs == [[[2.0 * i]] for i in range(64)]
    peak = _check_concurrency_from_journal(b.events(), concurrency)
    assert len(peak) == 4  # every server took calls
    assert max(peak.values()) == concurrency  # and the cap was used, never exceeded


def test_kill_9_of_a_server_during_a_call_retries_elsewhere(start_balancer):
    b = start_balancer(
        [test_model_spec(models=["forward"], min_servers=2, max_servers=2, env={"TEST_DELAY": "3000"})]
    )
    wait_until(lambda: len(b.events("server.ready")) == 2, 60, what="2 servers ready")
    model = umbridge.HTTPModel(b.url, "forward")
    t, result, dispatched = b.call_in_background(model, 21.0)
    victim = b.find("server.registered", server=dispatched["server"])
    os.kill(victim["pid"], signal.SIGKILL)
    t.join(60)
    assert result == [[[42.0]]]
    requeued = b.wait_event("call.requeued", call=dispatched["call"])
    assert requeued["server"] == dispatched["server"]
    assert b.find("server.failed", server=dispatched["server"])
    retry = b.find("call.dispatched", call=dispatched["call"], attempt=2)
    assert retry and retry["server"] != dispatched["server"]
    assert b.find("call.completed", call=dispatched["call"])["status"] == 200


def test_crash_looping_spec_is_held_and_calls_fail_cleanly(start_balancer):
    b = start_balancer(
        [
            {
                "name": "broken",
                "command": [sys.executable, "-c", "raise SystemExit(3)"],
                "models": ["forward"],
                "max_start_failures": 2,
            }
        ]
    )
    r = requests.post(f"{b.url}/Evaluate", json={"name": "forward", "input": [[1.0]]}, timeout=60)
    assert r.status_code == 503
    assert "failed to start 2 times" in r.json()["error"]["message"]
    held = b.wait_event("spec.held", spec="broken")
    assert held["failures"] == 2
    assert len(b.events("server.requested")) == 2  # held: not resubmitted again


def test_shutdown_leaves_no_process_behind(start_balancer):
    b = start_balancer([test_model_spec(models=["forward"], min_servers=3, max_servers=3)])
    wait_until(lambda: len(b.events("server.ready")) == 3, 60, what="3 servers ready")
    pids = b.server_pids()
    assert len(pids) == 6 and all(pid_alive(p) for p in pids)
    assert b.stop(signal.SIGTERM) == 0
    assert not [p for p in pids if pid_alive(p)]
    assert b.find("balancer.stopped")
    assert len(b.events("server.stopped")) == 3


def test_inflight_calls_finish_during_graceful_shutdown(start_balancer):
    b = start_balancer([test_model_spec(models=["forward"], min_servers=1, env={"TEST_DELAY": "1500"})])
    wait_until(lambda: b.find("server.ready"), 60)
    model = umbridge.HTTPModel(b.url, "forward")
    t, result, _ = b.call_in_background(model, 5.0)
    b.proc.send_signal(signal.SIGINT)
    t.join(30)
    assert result == [[[10.0]]]
    assert b.stop() == 0


def test_launcher_stops_its_server_when_the_balancer_disappears(start_balancer):
    b = start_balancer([test_model_spec(models=["forward"], min_servers=1)], lease_s=2.0)
    wait_until(lambda: b.find("server.ready"), 60)
    pids = b.server_pids()
    b.kill()  # SIGKILL: no shutdown, nobody cancels anything
    # Within the lease time (2 s) plus the server's stop grace, launcher and server are gone.
    wait_until(lambda: not any(pid_alive(p) for p in pids), 15, what="launcher and server gone")


def test_real_run_journal_is_analysed_and_plotted(start_balancer, tmp_path):
    """A journal from a real run goes through `balancer analyze` and `balancer plot` (issue: analysis)."""
    import json
    import subprocess

    b = start_balancer([test_model_spec(models=["forward"], max_servers=2, env={"TEST_DELAY": "10"})])
    model = umbridge.HTTPModel(b.url, "forward")
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda i: model([[1.0]]), range(40)))
    assert b.stop() == 0
    cli = [sys.executable, "-m", "balancer.cli"]
    r = subprocess.run(
        [*cli, "analyze", str(b.journal), "--json"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    m = run["metrics"]
    assert m["evaluations"] == 40 and m["failed_calls"] == 0
    assert 1 <= m["server_starts"] <= 2 and m["makespan_p50_s"] >= 0.01  # the model sleeps 10 ms
    out = tmp_path / "plots"
    r = subprocess.run(
        [*cli, "plot", str(b.journal), "-o", str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
