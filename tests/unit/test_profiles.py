"""Model profiles (issue 12): the store, the profiler on a real event bus, auto sizing, mismatch
advice (end to end in real balancers: system/test_profiles_runs, cluster/test_profiles_slurm)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError, ProfileSettings, Resources
from balancer.observe.events import EventBus
from balancer.profiling.autosize import size_specs
from balancer.profiling.recorder import Profiler
from balancer.profiling.sizing import size
from balancer.profiling.store import SPEC_ROW, ProfileStore, merge, profiles, spec_hash
from balancer.units import MIB, format_time_limit, parse_memory

pytestmark = pytest.mark.timeout(90)


def cfg_of(resources: dict[str, Any] | None = None, **profiles_keys: Any) -> Any:
    spec = {"name": "w", "command": "python model.py", "models": ["m"], "resources": resources or {}}
    return parse_config({"servers": [spec], "profiles": profiles_keys})


def fake_run(store: ProfileStore, cfg: Any, calls: int, cpu_per_call: float, util: float = 1.0) -> list[Any]:
    """One run on a real bus: a server, ``calls`` Evaluate calls of 0.1..0.5 s with a usage sample
    after each pair; returns the events emitted."""
    bus = EventBus()
    seen: list[dict[str, Any]] = []
    bus.subscribe(seen.append)
    prof = Profiler(cfg, bus, store)
    bus.subscribe(prof)

    async def run() -> None:
        bus.emit("server.requested", server="s1", spec="w", reason="demand")
        bus.emit("server.ready", server="s1", spec="w", models=["m"], concurrency=1)
        cpu = 0.5  # start-up CPU before the first sample: not part of CPU-seconds per call
        rss = 100 * MIB
        for i in range(calls):
            if i % 2 == 0:
                bus.emit("server.usage", server="s1", spec="w", cpu_s=cpu, cpu_util=util, rss_bytes=rss,
                         rss_peak_bytes=rss, interval_s=1.0, io_write_bytes=1000 * i)  # fmt: skip
            bus.emit("call.received", call=str(i), op="Evaluate", model="m", bytes=10)
            bus.emit("call.dispatched", call=str(i), server="s1", attempt=1)
            service = 0.1 * (1 + i % 5)
            bus.emit("call.completed", call=str(i), server="s1", status=200, bytes=10, service_s=service,
                     op="Evaluate", model="m")  # fmt: skip
            cpu += cpu_per_call
            rss += MIB
        bus.emit("server.usage", server="s1", spec="w", cpu_s=cpu, cpu_util=util, rss_bytes=rss,
                 rss_peak_bytes=rss, interval_s=1.0)  # fmt: skip
        bus.emit("server.stopped", server="s1", reason="shutdown")
        await prof.close()

    asyncio.run(run())
    return seen


def test_store_round_trip_and_merge_of_two_runs(tmp_path: Path) -> None:
    path = tmp_path / "p" / "profiles.sqlite"
    cfg = cfg_of({"cpus": 2, "memory": "1G"})
    fake_run(ProfileStore(path), cfg, calls=10, cpu_per_call=0.2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with ProfileStore(path) as store:
        (one,) = profiles(store)
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert one["calls"] == 10 and one["runs"] == 1 and one["model"] == "m"
    assert one["cpu_s_per_call"] == pytest.approx(0.2)  # the start-up 0.5 s left out
    assert one["rss_peak_bytes"] == 110 * MIB
    assert one["resources"] == {"cpus": 2, "memory": "1G", "gpus": 0, "time_limit": None}
    ev = one["ops"]["Evaluate"]
    assert ev["n"] == 10 and ev["max_s"] == pytest.approx(0.5)
    assert ev["p50_s"] == pytest.approx(0.3, rel=0.05) and ev["p90_s"] == pytest.approx(0.5, rel=0.05)
    fake_run(ProfileStore(path), cfg, calls=20, cpu_per_call=0.5)
    with ProfileStore(path) as store:
        (two,) = profiles(store)
        rows = {r["model"]: r for r in store.rows()}
    assert two["calls"] == 30 and two["runs"] == 2 and rows[SPEC_ROW]["runs"] == 2
    assert two["cpu_s_per_call"] == pytest.approx((10 * 0.2 + 20 * 0.5) / 30)
    assert two["rss_peak_bytes"] == 120 * MIB and two["ops"]["Evaluate"]["n"] == 30
    assert two["io_write_bytes"] == 8000 + 18000


def test_workload_counters_add_up_over_runs_and_classify_again(tmp_path: Path) -> None:
    from balancer.profiling.workload import classify

    path = tmp_path / "p.sqlite"
    for cls in ("wait", "cpu"):
        bus = EventBus()
        prof = Profiler(cfg_of(), bus, ProfileStore(path))
        bus.subscribe(prof)
        counters = {"samples": 5, "busy_s": 5.0, "slot_s": 5.0, "cpu_s": 4.9, "rss_peak_bytes": 1e6}
        bus.emit("workload.classified", spec="w", cls=cls, counters={**counters, "samples": 2}, final=False)
        bus.emit("workload.classified", spec="w", cls=cls, counters=counters, final=True)
        asyncio.run(prof.close())
    with ProfileStore(path) as store:
        (rec,) = profiles(store)
    assert rec["workload_class"] == "cpu" and rec["runs"] == 2
    assert rec["workload"] == pytest.approx(
        {"samples": 10, "busy_s": 10.0, "slot_s": 10.0, "cpu_s": 9.8, "rss_peak_bytes": 1e6}
    )
    assert classify(rec["workload"]).cls == "cpu"


def test_two_writers_sharing_a_store_lose_no_update(tmp_path: Path) -> None:
    """Two balancers on the default path: each add reads, merges and writes under one write lock."""
    import threading

    path = tmp_path / "p.sqlite"
    key = ("w", "h", "m")

    def writer() -> None:
        with ProfileStore(path) as store:  # its own connection, as another process would have
            for _ in range(100):
                store.add({key: {"calls": 1}}, set())

    ProfileStore(path).close()
    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with ProfileStore(path) as store:
        assert store.rows()[0]["data"]["calls"] == 200


def test_merge_rules() -> None:
    a = {"calls": 2, "max": 1.0, "hist": {"1": 2}, "resources": {"cpus": 1}, "rss_peak_bytes": 5}
    b = {"calls": 3, "max": 0.5, "hist": {"1": 1, "2": 4}, "resources": {"cpus": 4}, "rss_peak_bytes": 9}
    assert merge(a, b) == {"calls": 5, "max": 1.0, "hist": {"1": 3, "2": 4}, "resources": {"cpus": 4},
                           "rss_peak_bytes": 9}  # fmt: skip


def test_periodic_flushes_add_up_to_one_run(tmp_path: Path) -> None:
    """Flushing a run's deltas several times stores the same figures as once, and one run."""
    cfg = cfg_of()
    store = ProfileStore(tmp_path / "p.sqlite")
    bus = EventBus()
    prof = Profiler(cfg, bus, store)
    bus.subscribe(prof)

    async def run() -> None:
        bus.emit("server.requested", server="s1", spec="w", reason="demand")
        bus.emit("server.ready", server="s1", spec="w", models=["m"], concurrency=1)
        for i in range(6):
            bus.emit("call.received", call=str(i), op="Evaluate", model="m", bytes=1)
            bus.emit("call.dispatched", call=str(i), server="s1", attempt=1)
            bus.emit("call.completed", call=str(i), server="s1", status=200, bytes=1, service_s=0.01,
                     op="Evaluate", model="m")  # fmt: skip
            await prof.flush()
        await prof.close()

    asyncio.run(run())
    with ProfileStore(tmp_path / "p.sqlite") as s:
        (rec,) = profiles(s)
    assert rec["calls"] == 6 and rec["runs"] == 1 and rec["ops"]["Evaluate"]["n"] == 6


# -- sizing ------------------------------------------------------------------------------------------
AUTO = Resources(auto=("memory", "cpus", "time_limit"))


def test_sizing_from_a_profile_with_headroom_and_rounding() -> None:
    settings = ProfileSettings(min_memory="256M")
    prof = {"rss_peak_bytes": 300 * MIB, "cpu_util_p90": 2.4, "lifetime_max": 1000.0}
    res, why = size(AUTO, prof, settings)
    assert res.memory == "448M"  # 390M rounded up to 64M
    assert res.cpus == 3 and res.time_limit == "00:25:00"  # 1500 s
    assert {r.field for r in why} == {"memory", "cpus", "time_limit"}
    assert "peak RSS 300M x 1.3" in next(r.source for r in why if r.field == "memory")
    # At least min_memory; a model using 1.05 cores asks for one CPU; capped at max_time_limit.
    res, _ = size(AUTO, {**prof, "cpu_util_p90": 1.05, "lifetime_max": 90000.0}, ProfileSettings())
    assert (res.memory, res.cpus, res.time_limit) == ("512M", 1, "1-00:00:00")
    res, _ = size(AUTO, {**prof, "cpu_util_p90": 0.0}, settings)
    assert res.cpus == 1
    assert parse_memory("2G") == 2048 * MIB and parse_memory(4096) == 4096 * MIB
    assert format_time_limit(61) == "00:02:00"


def test_sizing_falls_back_without_a_profile() -> None:
    settings = ProfileSettings(default_memory="2G", default_cpus=2, default_time_limit="02:00:00")
    res, why = size(AUTO, None, settings)
    assert (res.memory, res.cpus, res.time_limit) == ("2G", 2, "02:00:00")
    assert all(r.source.startswith("no profile yet") for r in why)
    res, why = size(AUTO, {"rss_peak_bytes": 0}, ProfileSettings())  # a profile without usage figures
    assert (res.memory, res.cpus, res.time_limit) == (None, 1, None)
    assert all("has no" in r.source for r in why)
    plain = Resources(cpus=4, memory="1G")
    assert size(plain, {"rss_peak_bytes": MIB}, settings) == (plain, [])  # nothing auto: untouched


def test_config_auto_and_profiles_table() -> None:
    cfg = cfg_of({"memory": "auto", "cpus": "auto", "time_limit": "auto"}, memory_headroom=1.5)
    res = cfg.servers[0].resources
    assert res.auto == ("cpus", "memory", "time_limit") and res.cpus == 1 and res.memory is None
    assert cfg.profiles.memory_headroom == 1.5 and cfg.profiles.flush_s == 300.0
    for resources, keys, msg in (
        ({"cpus": "many"}, {}, "servers.w.resources.cpus: expected an integer"),
        ({}, {"min_memory": "lots"}, "profiles.min_memory: expected a size"),
        ({}, {"memory_headroom": 0.5}, "profiles.memory_headroom: must be >= 1"),
        ({}, {"default_time_limit": "soon"}, "profiles.default_time_limit: expected a time"),
        ({}, {"nope": 1}, "profiles.nope: unknown key"),
    ):
        with pytest.raises(ConfigError, match=msg):
            cfg_of(resources, **keys)


def test_size_specs_journals_profile_sized(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    cfg = cfg_of({"memory": "auto", "cpus": 2}, path=str(path), min_memory="256M")
    bus = EventBus()
    seen: list[dict[str, Any]] = []
    bus.subscribe(seen.append)
    sized = asyncio.run(size_specs(cfg, bus))
    assert sized.servers[0].resources.memory is None and sized.servers[0].resources.cpus == 2
    assert [(e["field"], e["value"], e["source"][:14]) for e in seen] == [("memory", None, "no profile yet")]
    seed(path, cfg.servers[0], rss_peak_bytes=300 * MIB)
    seen.clear()
    sized = asyncio.run(size_specs(cfg, bus))
    assert sized.servers[0].resources.memory == "448M"
    assert seen[0]["ev"] == "profile.sized" and seen[0]["spec"] == "w" and seen[0]["value"] == "448M"


def test_an_unreadable_store_means_the_defaults_and_a_journaled_error(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    path.write_bytes(b"not a database" * 100)
    cfg = cfg_of({"memory": "auto"}, path=str(path), default_memory="1G")
    bus = EventBus()
    seen: list[dict[str, Any]] = []
    bus.subscribe(seen.append)
    sized = asyncio.run(size_specs(cfg, bus))
    assert sized.servers[0].resources.memory == "1G"
    assert [e["ev"] for e in seen] == ["balancer.error", "profile.sized"] and seen[0]["where"] == "profiles"


def seed(path: Path, spec: Any, **figures: Any) -> None:
    """A stored profile for ``spec`` as an earlier run would have left it."""
    with ProfileStore(path) as store:
        key = (spec.name, spec_hash(spec), SPEC_ROW)
        store.add({key: {"calls": 10, "samples": 20, **figures}}, {key})


# -- mismatch ----------------------------------------------------------------------------------------
def test_mismatch_is_journaled_once_per_spec_and_resource(tmp_path: Path) -> None:
    cfg = cfg_of({"cpus": 4, "memory": "4G"}, mismatch_samples=5)
    seen = fake_run(ProfileStore(tmp_path / "p.sqlite"), cfg, calls=30, cpu_per_call=0.01, util=0.02)
    mism = [e for e in seen if e["ev"] == "profile.mismatch"]
    assert sorted(e["resource"] for e in mism) == ["cpus", "memory"]
    cpus = next(e for e in mism if e["resource"] == "cpus")
    assert cpus["given"] == 4 and cpus["used"] == 0.0 and "cpus = 1" in cpus["advice"]
    mem = next(e for e in mism if e["resource"] == "memory")
    assert mem["given"] == "4G" and "less memory" in mem["advice"]
    # Resources that fit: no advice.
    cfg = cfg_of({"cpus": 1, "memory": "256M"}, mismatch_samples=5)
    seen = fake_run(ProfileStore(tmp_path / "q.sqlite"), cfg, calls=30, cpu_per_call=0.01, util=1.0)
    assert not [e for e in seen if e["ev"] == "profile.mismatch"]


def test_status_and_analyze_show_the_advice(tmp_path: Path) -> None:
    from balancer.analysis.journal import read_journal
    from balancer.cli.operator import format_status
    from balancer.observe.journal import Journal

    cfg = cfg_of({"cpus": 4}, mismatch_samples=5)
    seen = fake_run(ProfileStore(tmp_path / "p.sqlite"), cfg, calls=30, cpu_per_call=0.01, util=0.02)
    mism = [e for e in seen if e["ev"] == "profile.mismatch"]
    text = format_status({"profiles": {"mismatches": mism}}, "http://x")
    assert "resources: w: uses 0.03 cores" in text or "resources: w: uses 0.00 cores" in text
    journal = Journal(tmp_path / "journal.jsonl")
    for e in seen:
        journal(e)
    journal.close()
    run = read_journal(tmp_path / "journal.jsonl", "r")
    assert any(n.startswith("resources: w: ") and "cpus = 1" in n for n in run.notes)


def test_the_profiler_subscribes_to_exactly_the_events_it_handles(tmp_path: Path) -> None:
    from balancer.profiling.recorder import EVENTS, open_profiler

    cfg = parse_config(
        {"servers": [{"name": "w", "command": "x"}], "profiles": {"path": str(tmp_path / "p.db")}}
    )
    bus = EventBus()
    prof = open_profiler(cfg, bus)
    assert prof is not None and set(prof._on) == EVENTS
    bus.emit("server.requested", server="s1", spec="w", reason="demand")
    bus.emit("call.received", call="c0", op="Evaluate", model="m")  # one it does not read: no trace
    bus.emit("call.dispatched", call="c1", server="s1", attempt=1)  # an event it reads reaches it
    assert prof.calls == {"c1": "s1"}
    asyncio.run(prof.close())
