"""Model profiles (issue 12) end to end in real balancer processes: a profile survives a restart, an
example model's CPU-seconds per call, advice for an oversized server, plausible example profiles
(the store, profiler, sizing and advice: unit/test_profiles)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import umbridge

from balancer.profiling.store import SPEC_ROW, ProfileStore, profiles
from balancer.units import MIB
from tests.helpers import MODELS, ROOT, test_model_spec, wait_until

pytestmark = pytest.mark.timeout(90)


# -- end to end --------------------------------------------------------------------------------------
def profiles_table(path: Path, **kw: Any) -> dict[str, Any]:
    return {"profiles": {"path": str(path), **kw}}


def test_profile_survives_a_restart(start_balancer, tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    spec = test_model_spec(models=["forward"], min_servers=1, max_servers=1)
    for n in (5, 3):
        b = start_balancer([spec], tables=profiles_table(path, flush_s=0.5))
        model = umbridge.HTTPModel(b.url, "forward")
        assert [model([[1.0]]) for _ in range(n)] == [[[2.0]]] * n
        if n == 5:  # the periodic flush: in the store while the balancer runs (WAL: readers welcome)
            wait_until(lambda: stored_calls(path) == 5, 20, what="a periodic flush")
        assert b.stop() == 0
    with ProfileStore(path) as store:
        rows = {r["model"]: r for r in store.rows()}
    assert set(rows) == {SPEC_ROW, "forward"}
    assert rows["forward"]["runs"] == 2 and rows[SPEC_ROW]["runs"] == 2
    assert rows["forward"]["data"]["calls"] == 8 and rows["forward"]["data"]["ops"]["Evaluate"]["n"] == 8
    assert rows[SPEC_ROW]["data"]["servers"] == 2 and rows[SPEC_ROW]["data"]["startup_hist"]
    # The CLI reads the same store.
    out = profile_cli("show", "--path", str(path))
    assert out.returncode == 0 and "testmodel" in out.stdout and "forward" in out.stdout, out.stderr
    out = profile_cli("export", "--json", "--path", str(path))
    (rec,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert rec["calls"] == 8 and rec["runs"] == 2
    out = profile_cli("export", "--path", str(path))
    assert out.stdout.splitlines()[0].startswith("spec,spec_hash,model,calls")
    bad = profile_cli("show", "--path", str(tmp_path / "no"))
    assert bad.returncode == 2 and bad.stderr.strip() == f"balancer: error: no profile store at {tmp_path}/no"


def stored_calls(path: Path) -> int:
    with ProfileStore(path) as store:
        return sum(r["data"].get("calls", 0) for r in store.rows() if r["model"] != SPEC_ROW)


def profile_cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "balancer.cli", "profile", *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_cpu_spinner_profile_has_its_cpu_seconds_per_call(start_balancer, tmp_path: Path) -> None:
    """cpu_spinner spends CPU_SPINNER_S x x CPU seconds per call (its own thread's clock); the
    profile's CPU-seconds per call is within 30 % of that (the server's own overhead: HTTP, JSON)."""
    path = tmp_path / "profiles.sqlite"
    spec = {"name": "spinner", "command": [sys.executable, str(MODELS / "cpu_spinner.py")],
            "models": ["cpu_spinner"], "min_servers": 1, "max_servers": 1, "env": {"CPU_SPINNER_S": "0.2"},
            "resources": {"cpus": 2}}  # fmt: skip
    b = start_balancer([spec], tables=profiles_table(path, mismatch_samples=5), monitor_interval_s=0.2,
                       lease_s=2)  # fmt: skip
    model = umbridge.HTTPModel(b.url, "cpu_spinner")
    for _ in range(20):
        model([[1.0]])  # 0.2 CPU-s each
    # Usage samples reach the balancer with the lease poll: wait until one covers the last call.
    last = b.events("call.completed")[-1]["t"]
    wait_until(lambda: any(e.get("sample_t", 0) > last for e in b.events("server.usage")), 20, what="sample")
    usage = b.events("server.usage")
    assert b.stop() == 0
    with ProfileStore(path) as store:
        (rec,) = profiles(store)
    assert rec["calls"] == 20
    assert rec["cpu_s_per_call"] == pytest.approx(0.2, rel=0.3), rec
    assert rec["rss_peak_bytes"] >= max(e["rss_bytes"] for e in usage) > 10 * MIB
    assert 0.6 <= rec["cpu_util_p90"] <= 1.3  # one busy thread


def test_waiter_given_two_cpus_gets_advice_in_journal_status_and_analyze(start_balancer, tmp_path: Path):
    """waiter sleeps through its calls: 2 CPUs given, next to none used while busy."""
    spec = {"name": "waiter", "command": [sys.executable, str(MODELS / "waiter.py")], "models": ["waiter"],
            "min_servers": 1, "max_servers": 1, "env": {"WAITER_S": "0.3"},
            "resources": {"cpus": 2}}  # fmt: skip
    tables = profiles_table(tmp_path / "profiles.sqlite", mismatch_samples=5)
    b = start_balancer([spec], tables=tables, monitor_interval_s=0.1, lease_s=2)
    model = umbridge.HTTPModel(b.url, "waiter")
    n = 0
    while not b.find("profile.mismatch"):  # each call keeps the server busy for 3 samples
        assert n < 40, "no profile.mismatch after 40 calls"
        model([[1.0]])
        n += 1
    mism = b.find("profile.mismatch", spec="waiter", resource="cpus")
    assert mism["given"] == 2 and mism["used"] < 0.5 and "cpus = 1" in mism["advice"]
    out = subprocess.run([sys.executable, "-m", "balancer.cli", "status", "--run-dir", str(b.run_dir)],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert f"resources: waiter: {mism['advice']}" in out.stdout, out.stdout + out.stderr
    assert b.stop() == 0
    out = subprocess.run([sys.executable, "-m", "balancer.cli", "analyze", str(b.journal)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and f"resources: waiter: {mism['advice']}" in out.stdout, out.stderr


def test_example_models_have_plausible_profiles(start_balancer, tmp_path: Path) -> None:
    """waiter: next to no CPU per call (under 0.1 s: serving overhead); mem_streamer: its 128 MiB
    array in the peak RSS; io_writer: 8 MiB written per call (within 30 %); each with its calls and
    compute times."""

    def spec(name: str, **env: str) -> dict[str, Any]:
        return {"name": name, "command": [sys.executable, str(MODELS / f"{name}.py")], "models": [name],
                "min_servers": 1, "max_servers": 1, "env": env}  # fmt: skip

    path = tmp_path / "profiles.sqlite"
    specs = [
        spec("waiter", WAITER_S="0.05"),
        spec("mem_streamer", MEM_STREAMER_MB="128", MEM_STREAMER_PASSES="2"),
        spec("io_writer", IO_WRITER_MB="8", TMPDIR=str(tmp_path)),
    ]
    b = start_balancer(specs, tables=profiles_table(path), monitor_interval_s=0.2, lease_s=2)
    for s in specs:
        model = umbridge.HTTPModel(b.url, s["name"])
        for _ in range(10):
            model([[1.0]])
    last = b.events("call.completed")[-1]["t"]
    for s in specs:

        def sampled(name: str = s["name"]) -> bool:
            return any(e["spec"] == name and e.get("sample_t", 0) > last for e in b.events("server.usage"))

        wait_until(sampled, 20, what=f"a sample of {s['name']} after the last call")
    assert b.stop() == 0
    with ProfileStore(path) as store:
        recs = {r["spec"]: r for r in profiles(store)}
    assert {r["calls"] for r in recs.values()} == {10}
    assert all(r["ops"]["Evaluate"]["n"] == 10 and r["startup_max_s"] > 0 for r in recs.values())
    assert recs["waiter"]["cpu_s_per_call"] < 0.1  # HTTP and JSON of a call, its wait costs none
    assert recs["waiter"]["ops"]["Evaluate"]["p50_s"] == pytest.approx(0.05, rel=0.5)
    assert 128 * MIB < recs["mem_streamer"]["rss_peak_bytes"] < 400 * MIB
    assert recs["io_writer"]["io_write_bytes"] / 10 == pytest.approx(8 * MIB, rel=0.3)
