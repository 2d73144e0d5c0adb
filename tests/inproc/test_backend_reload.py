"""What a live reload (issue 13) asks of the backends, the profiler and the workload aggregator:
``check_specs`` refuses a spec that could never start with the same errors as at start,
``reconfigure`` makes later submits use the reloaded specs, and a changed spec's figures stay
apart from the old version's. In process, on fakes: each test takes a second or two."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from balancer.backends.base import Launch
from balancer.backends.batch.slurm import SlurmBackend
from balancer.backends.local import LocalBackend
from balancer.backends.registry import make_backend
from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError
from balancer.observe.events import EventBus
from balancer.profiling.recorder import Profiler
from balancer.profiling.store import SPEC_ROW, ProfileStore, spec_hash
from balancer.profiling.workload import UsageAggregator, journal_priors
from tests.helpers import MODELS

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """The pool's side of a backend: what it reported, and an event when a job ended."""

    def __init__(self) -> None:
        self.log: list[tuple[str, ...]] = []
        self.ended = asyncio.Event()

    def job_started(self, server_id: str, job_id: str, host: str) -> None:
        self.log.append(("started", server_id))

    def job_ended(self, server_id: str, reason: str, failed: bool) -> None:
        self.log.append(("ended", server_id, reason))
        self.ended.set()

    def job_deadline(self, server_id: str, deadline_wall: float) -> None:
        self.log.append(("deadline", server_id))


def marker_spec(name: str, marker: Path, **kw: Any) -> dict[str, Any]:
    """A 'server' that writes ``marker`` and exits: proof that this very spec's command ran."""
    return {"name": name, "command": ["/bin/sh", "-c", f"echo {name} > {marker}"], **kw}


# -- local ------------------------------------------------------------------------------------------
def test_local_check_specs_after_start_and_a_new_spec_starts_after_reconfigure(tmp_path: Path) -> None:
    marker = tmp_path / "new.txt"
    first = [marker_spec("a", tmp_path / "a.txt", resources={"gpus": 1})]
    cfg = parse_config({"backend": {"gpus": [0, 1]}, "servers": first}, tmp_path)
    added = [*first, marker_spec("b", marker, resources={"gpus": 2})]
    raw2 = {"balancer": {"delay_ms": 7}, "backend": {"gpus": [0, 1]}, "servers": added}
    cfg2 = parse_config(raw2, tmp_path)
    too_many = parse_config({"servers": [marker_spec("big", marker, resources={"gpus": 3})]}, tmp_path)

    async def main() -> None:
        be = make_backend(cfg, tmp_path)
        assert isinstance(be, LocalBackend)
        rec = Recorder()
        be.bind(rec)
        await be.start()
        # The devices found at start decide, as they did for the specs at start.
        with pytest.raises(ConfigError, match=r"servers\.big\.resources\.gpus") as err:
            await be.check_specs(too_many.servers)
        assert "asks for 3 GPUs but this machine has 2 (from config" in str(err.value)
        await be.check_specs(cfg2.servers)  # 2 of 2: fine
        be.reconfigure(cfg2)
        assert be.cfg.delay_ms == 7 and be.cfg.backend_options is cfg.backend_options
        spec_b = next(s for s in be.cfg.servers if s.name == "b")
        await be.submit([Launch("s1", spec_b, {}, tmp_path / "logs")])
        await asyncio.wait_for(rec.ended.wait(), 15)
        assert rec.log[0] == ("started", "s1") and rec.log[1][:2] == ("ended", "s1")
        assert marker.read_text().strip() == "b"  # the new spec's own command ran
        await be.close()

    asyncio.run(main())


def test_a_spec_too_big_at_start_is_still_refused_with_the_same_message(tmp_path: Path) -> None:
    cfg = parse_config(
        {"backend": {"gpus": [0]}, "servers": [marker_spec("g", tmp_path / "x", resources={"gpus": 2})]},
        tmp_path,
    )

    async def main() -> None:
        be = make_backend(cfg, tmp_path)
        be.bind(Recorder())
        with pytest.raises(ConfigError, match=r"servers\.g\.resources\.gpus.*asks for 2 GPUs .* has 1"):
            await be.start()

    asyncio.run(main())


# -- SLURM, on a fake scheduler on PATH ---------------------------------------------------------------
FAKE = r"""#!{python}
import json, os, sys
db = os.path.join(os.path.dirname(os.path.abspath(__file__)), "db.json")
jobs = json.load(open(db)) if os.path.exists(db) else {{}}
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
if tool == "sinfo":
    print("debug\nbatch")
elif tool == "sbatch":
    jid = str(100 + len(jobs))
    script = args[-1]
    jobs[jid] = {{"state": "PENDING", "argv": args, "script": open(script).read()}}
    name = next(a.split("=", 1)[1] for a in args if a.startswith("--job-name="))
    jobs[jid]["name"] = name
    print(jid)
elif tool == "squeue":
    for jid, j in jobs.items():
        print("|".join([jid, jid, "N/A", jid, j["state"], "None", "N/A", "N/A", "1:00", "1:00", "n1",
                        j["name"], ""]))
elif tool == "scancel":
    for a in args:
        if a in jobs:
            jobs[a]["state"] = "CANCELLED"
json.dump(jobs, open(db, "w"))
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for tool in ("sbatch", "squeue", "scancel", "sinfo"):
        p = bin_dir / tool
        p.write_text(FAKE.format(python=sys.executable))
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir / "db.json"


def slurm_cfg(tmp_path: Path, servers: list[dict[str, Any]]) -> Any:
    raw = {"balancer": {"scheduler": "slurm"}, "backend": {"poll_interval_s": 0.1, "fast_poll_s": 0.05},
           "servers": servers}  # fmt: skip
    return parse_config(raw, tmp_path)


def test_slurm_check_specs_reconfigure_and_the_new_mem(tmp_path: Path, fake_slurm: Path) -> None:
    cmd = {"command": ["model", "v1"], "partition": "debug"}
    cfg = slurm_cfg(tmp_path, [{"name": "m", **cmd, "resources": {"memory": "1G"}}])
    bad_part = slurm_cfg(tmp_path, [{"name": "x", "command": ["model"], "partition": "nope"}])
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --time=5\nexec model\n")
    unreadable = slurm_cfg(tmp_path, [{"name": "y", "job_script": str(script)}])
    changed = [{"name": "m", "command": ["model", "v2"], "partition": "debug", "resources": {"memory": "4G"}},
               {"name": "n", "command": ["other"], "partition": "batch"}]  # fmt: skip
    cfg2 = slurm_cfg(tmp_path, changed)

    async def main() -> None:
        be = make_backend(cfg, tmp_path)
        assert isinstance(be, SlurmBackend)
        be.bind(Recorder())
        await be.start()
        name_m = be.job_names["m"]
        with pytest.raises(ConfigError, match=r"servers\.x\.partition") as err:
            await be.check_specs(bad_part.servers)
        assert str(err.value).endswith("no SLURM partition 'nope' (known: batch, debug)")
        script.unlink()  # gone since the file was loaded (root reads any file, whatever its mode)
        with pytest.raises(ConfigError, match=r"servers\.y\.job_script: cannot read: No such file"):
            await be.check_specs(unreadable.servers)
        await be.check_specs(cfg2.servers)
        assert "n" not in be.job_names  # checking applies nothing
        be.reconfigure(cfg2)
        assert be.job_names["m"] == name_m and be.job_names["n"].startswith("umbridge-n-")
        for i, spec in enumerate(be.cfg.servers):
            await be.submit([Launch(f"s{i}", spec, {}, tmp_path / "logs")])
        jobs = json.loads(await asyncio.to_thread(fake_slurm.read_text))
        m, n = jobs["100"], jobs["101"]
        assert "--mem=4G" in m["argv"] and f"--job-name={name_m}" in m["argv"]
        assert "model v2" in m["script"] and "model v1" not in m["script"]
        assert "--partition=batch" in n["argv"] and "other" in n["script"]
        await be.close()
        jobs = json.loads(await asyncio.to_thread(fake_slurm.read_text))
        assert {j["state"] for j in jobs.values()} == {"CANCELLED"}

    asyncio.run(main())


def test_slurm_start_keeps_its_partition_error(tmp_path: Path, fake_slurm: Path) -> None:
    cfg = slurm_cfg(tmp_path, [{"name": "x", "command": ["model"], "partition": "nope"}])

    async def main() -> None:
        be = make_backend(cfg, tmp_path)
        be.bind(Recorder())
        with pytest.raises(ConfigError, match=r"servers\.x\.partition: no SLURM partition 'nope'"):
            await be.start()

    asyncio.run(main())


# -- profiler ---------------------------------------------------------------------------------------
def prof_cfg(command: str, with_spec: bool = True) -> Any:
    servers = [{"name": "w", "command": command, "models": ["m"]}] if with_spec else []
    return parse_config({"servers": [*servers, {"name": "z", "command": "z", "models": ["z"]}]})


def calls(bus: EventBus, server: str, first: int, n: int) -> None:
    for i in range(first, first + n):
        bus.emit("call.received", call=f"c{i}", op="Evaluate", model="m", bytes=1)
        bus.emit("call.dispatched", call=f"c{i}", server=server, attempt=1)
        bus.emit("call.completed", call=f"c{i}", server=server, status=200, bytes=1, service_s=0.01,
                 op="Evaluate", model="m")  # fmt: skip


def test_profiler_keeps_the_old_and_the_new_hash_apart(tmp_path: Path) -> None:
    v1, v2, gone = prof_cfg("python v1.py"), prof_cfg("python v2.py"), prof_cfg("", with_spec=False)
    h1, h2 = spec_hash(v1.servers[0]), spec_hash(v2.servers[0])
    assert h1 != h2
    store = ProfileStore(tmp_path / "p.sqlite")
    bus = EventBus()
    prof = Profiler(v1, bus, store)
    bus.subscribe(prof)

    def server(sid: str) -> None:
        bus.emit("server.requested", server=sid, spec="w", reason="demand")
        bus.emit("server.ready", server=sid, spec="w", models=["m"], concurrency=1)

    async def run() -> None:
        server("old")
        calls(bus, "old", 0, 3)
        await prof.flush()  # part of the old version's figures is stored before the reload
        calls(bus, "old", 3, 2)
        prof.reconfigure(v2)  # rolling replacement: the old server still serves
        server("new")
        calls(bus, "old", 10, 4)  # the old server's calls after the reload: still the old hash
        calls(bus, "new", 20, 5)
        bus.emit("server.stopped", server="old", reason="replaced")
        await prof.flush()
        prof.reconfigure(v1)  # and back: the first hash's figures go on
        server("back")
        calls(bus, "back", 30, 1)
        prof.reconfigure(gone)  # removed: what its servers still do flushes under its hash
        calls(bus, "new", 40, 2)
        calls(bus, "back", 50, 1)
        bus.emit("call.received", call="late", op="Evaluate", model="m", bytes=1)
        bus.emit("server.usage", server="unknown", spec="w", cpu_s=1.0, interval_s=1.0)
        bus.emit("server.stopped", server="new", reason="removed")
        bus.emit("server.stopped", server="back", reason="removed")
        await prof.close()

    asyncio.run(run())
    with ProfileStore(tmp_path / "p.sqlite") as s:
        got = {(r["spec_hash"], r["model"]): r for r in s.rows("w")}
    assert got[(h1, SPEC_ROW)]["data"]["calls"] == 3 + 2 + 4 + 1 + 1
    assert got[(h1, "m")]["data"]["ops"]["Evaluate"]["n"] == 11
    assert got[(h1, SPEC_ROW)]["data"]["servers"] == 2  # "old" and "back"
    assert got[(h2, SPEC_ROW)]["data"]["calls"] == 5 + 2 and got[(h2, SPEC_ROW)]["data"]["servers"] == 1
    assert got[(h1, SPEC_ROW)]["runs"] == 1 and got[(h2, SPEC_ROW)]["runs"] == 1
    assert set(got) == {(h1, SPEC_ROW), (h1, "m"), (h2, SPEC_ROW), (h2, "m")}


def test_profiler_takes_new_resources_and_new_specs() -> None:
    cfg = prof_cfg("python v1.py")
    raw = {"servers": [{"name": "w", "command": "python v1.py", "models": ["m"], "resources": {"cpus": 4}},
                       {"name": "fresh", "command": "f", "models": ["f"]}]}  # fmt: skip
    bus = EventBus()
    prof = Profiler(cfg, bus, store=None)  # type: ignore[arg-type] # nothing is flushed here
    bus.subscribe(prof)
    bus.emit("server.requested", server="s", spec="w", reason="demand")
    bus.emit("server.ready", server="s", spec="w", models=["m"], concurrency=1)
    prof.reconfigure(parse_config(raw))
    assert prof.spec_figs["w"]["resources"]["cpus"] == 4  # same hash: one profile, the latest given
    bus.emit("server.requested", server="f1", spec="fresh", reason="demand")
    bus.emit("server.ready", server="f1", spec="fresh", models=["f"], concurrency=1)
    assert prof.spec_figs["fresh"]["servers"] == 1 and prof.spec_figs["w"]["servers"] == 1


# -- workload ---------------------------------------------------------------------------------------
def usage(sid: str, spec: str, t: float, cpu_s: float) -> dict[str, Any]:
    return {"ev": "server.usage", "t": t, "sample_t": t, "server": sid, "spec": spec, "interval_s": 1.0,
            "cpu_s": cpu_s, "rss_peak_bytes": 1e7, "node": {}}  # fmt: skip


def test_workload_survives_a_removed_spec_and_forgets_a_changed_one() -> None:
    from balancer.config.schema import ServerSpec

    pool_specs = {"w": ["m"], "gone": ["g"]}
    bus = EventBus()
    seen: list[dict[str, Any]] = []
    bus.subscribe(seen.append)
    agg = UsageAggregator(bus, lambda: [], lambda s: sorted(pool_specs[s]))  # raises once removed
    for sid in ("s1", "g1"):
        agg._hist[sid] = deque((1000.0 + t, 0, 1, 0.0) for t in range(12))
    for t in range(1, 6):
        agg(usage("s1", "w", 1000.0 + t, 0.95 * t))
    assert agg.current("w") == "cpu"
    del pool_specs["gone"]  # a reload removed it; its server still sends samples
    for t in range(1, 6):
        agg(usage("g1", "gone", 1000.0 + t, 0.95 * t))
    assert agg.current("gone") == "cpu" and seen[-1]["models"] == []
    agg.forget("w")  # the command changed: the old version's counters go
    assert agg.current("w") is None
    for t in range(6, 11):  # the old version's server still runs: not counted for the new one
        agg(usage("s1", "w", 1000.0 + t, 0.95 * t))
    assert agg.current("w") is None
    agg({"ev": "server.stopped", "server": "s1"})
    agg.close()  # the final verdicts, the removed spec's too, raise nothing
    assert agg.view("gone") is not None and agg.view("nope") is None

    spec = ServerSpec(name="w", command=[sys.executable, str(MODELS / "waiter.py")])
    other = ServerSpec(name="v", command=[sys.executable, str(MODELS / "waiter.py")])
    asyncio.run(journal_priors([spec, other], bus, agg))
    asyncio.run(journal_priors([spec], bus, agg))  # again, for a reload's changed spec only
    priors = [e["spec"] for e in seen if e["ev"] == "workload.prior"]
    assert priors == ["w", "v", "w"] and agg.current("w") == "wait" and agg.current("v") == "wait"
