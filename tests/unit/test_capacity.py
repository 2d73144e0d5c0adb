"""Cluster capacity: collectors against the real schedulers, the SQLite history, trace imports, CLI."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gzip
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import psutil
import pytest

from balancer.backends.batch.slurm import SlurmBackend, parse_slurm_time
from balancer.capacity.collect import CollectError
from balancer.capacity.collect_hq import HqCollector, parse_allocations, parse_jobs, parse_workers
from balancer.capacity.collect_local import LocalCollector
from balancer.capacity.collect_slurm import ProbeJob, SlurmCollector, gres_gpus, parse_node_gres, parse_sinfo
from balancer.capacity.collectors import make_collector
from balancer.capacity.history import History, default_history_path
from balancer.capacity.sample import CapacitySample
from balancer.capacity.series import Series
from balancer.capacity.swf import TraceError
from balancer.capacity.traces import load_series, sacct_idle
from balancer.cli.cluster import add_capacity_parser
from balancer.config.load import parse_config
from tests.helpers import ROOT, wait_until
from tests.slurm.fixture import SlurmCluster

STEP = 900.0
T0 = (time.time() // 86400 - 10) * 86400  # a slot boundary ten days ago: inside the retention


def sample(
    t: float, idle: float, total: float = 10.0, source: str = "slurm", part: str = "p"
) -> CapacitySample:
    return CapacitySample(t=t, source=source, partition=part, total_cpus=total, idle_cpus=idle)


# -- history ---------------------------------------------------------------------------------------
def test_history_round_trip_is_private_and_outlives_the_connection(tmp_path: Path):
    path = tmp_path / "sub" / "cap.sqlite"
    s = CapacitySample(
        T0 + 1,
        "slurm",
        "p",
        8,
        3,
        alloc_cpus=5,
        other_cpus=0,
        pending_jobs=2,
        pending_cpus=4,
        our_pending=1,
        expected_wait_s=120.0,
    )
    with History(path) as h:
        h.add([s])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with History(path) as h:
        assert h.count() == 1
        row = h._db.execute("SELECT * FROM samples").fetchone()
        assert row[: len(s.as_dict())] == tuple(s.as_dict().values())
        assert h._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_series_means_per_slot_sums_partitions_and_marks_gaps(tmp_path: Path):
    with History(tmp_path / "h.sqlite") as h:
        h.add([sample(T0 + 10, 2), sample(T0 + 500, 4), sample(T0 + 899, 6)])  # slot 0: mean 4
        h.add([sample(T0 + 10, 1, total=6, part="q")])  # slot 0, other partition: +1
        h.add([sample(T0 + 2 * STEP + 1, 7, total=12)])  # slot 2; slot 1 empty
        s = h.series(STEP)
        assert s is not None and s.start == T0 and s.step_s == STEP
        assert s.values[0] == pytest.approx(5.0)
        assert math.isnan(s.values[1])
        assert s.values[2] == 7.0
        assert s.total == 12.0  # the latest sample's total
        only_q = h.series(STEP, partition="q")
        assert only_q is not None and list(only_q.values) == [1.0]
        late = h.series(STEP, since=T0 + STEP)
        assert late is not None and late.start == T0 + STEP and len(late.values) == 2
        assert h.series(STEP, source="local") is None
        # Two sources over the same slot are two views of one cluster: their mean.
        h.add([sample(T0 + 20, 9, source="swf")])
        both = h.series(STEP, partition="p")
        assert both is not None and both.values[0] == pytest.approx((4 + 9) / 2)
        named = h.series(STEP, source=("slurm", "swf"), partition="p")
        assert named is not None and named.values[0] == both.values[0]
        assert h.series(STEP, source=["swf"]) is not None and h.series(STEP, source=()) is None


def test_retention_prunes_collected_samples_only(tmp_path: Path):
    now = time.time()
    with History(tmp_path / "h.sqlite", retention_s=3600) as h:
        h.import_series(Series(T0, STEP, np.array([5.0, 6.0]), 10.0), "swf")  # ten days old
        h.add([sample(now - 7200, 1), sample(now - 60, 2)])  # add() applies the retention
        assert h.count() == 3
        s = h.series(STEP, source="slurm")
        assert s is not None and list(s.values) == [2.0]
        assert h.prune(now + 3600) == 1  # the other collected sample is past it an hour later
        assert h.sources() == [("swf", "", 2)]


def test_import_series_is_exact_and_idempotent(tmp_path: Path):
    values = np.array([3.0, np.nan, 7.5, 10.0])
    with History(tmp_path / "h.sqlite") as h:
        assert h.import_series(Series(T0, STEP, values, 10.0), "sacct") == 3
        assert h.import_series(Series(T0, STEP, values, 10.0), "sacct") == 3  # replaces, not doubles
        assert h.count() == 3
        s = h.series(STEP)
        assert s is not None and s.start == T0 and s.total == 10.0
        np.testing.assert_array_equal(s.values, values)
        hourly = h.series(3600.0)
        assert hourly is not None
        assert hourly.values[0] == pytest.approx(np.nanmean(values))


def test_series_is_fast_on_months_of_minute_samples(tmp_path: Path):
    n = 90 * 1440  # 90 days of 1-minute samples
    t = T0 + 60.0 * np.arange(n)
    idle = (np.arange(n) % 17).astype(float)
    with History(tmp_path / "h.sqlite") as h:
        h.add([sample(float(a), float(b)) for a, b in zip(t, idle, strict=True)])
        t_start = time.perf_counter()
        s = h.series(STEP)
        took = time.perf_counter() - t_start
    assert s is not None and len(s.values) == n // 15
    per_slot = idle.reshape(-1, 15).mean(axis=1)
    np.testing.assert_allclose(s.values, per_slot)
    assert took < 2.0, f"series() took {took:.2f} s on {n} samples"


def test_default_history_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_history_path() == tmp_path / "umbridge-balancer" / "capacity.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert (
        default_history_path() == Path.home() / ".local" / "share" / "umbridge-balancer" / "capacity.sqlite"
    )


# -- imports ---------------------------------------------------------------------------------------
def _job(start: float, end: float | None, cpus: int, new_format: bool) -> dict:
    def tm(v: float | None) -> object:
        if new_format:
            return {"set": v is not None, "infinite": False, "number": int(v or 0)}
        return int(v or 0)

    return {
        "job_id": 1,
        "partition": "debug",
        "required": {"CPUs": cpus},
        "tres": {"allocated": [{"type": "cpu", "count": cpus}]},
        "time": {"submission": tm(start - 5), "start": tm(start), "end": tm(end)},
    }


@pytest.mark.parametrize("new_format", [False, True], ids=["22.05", "23.11"])
def test_sacct_idle_rebuilds_busy_cpus(new_format: bool):
    doc = {
        "jobs": [
            _job(T0 + 5, T0 + STEP + 5, 2, new_format),  # 2 CPUs for the whole of slot 0 (from +5 s)
            _job(T0 + STEP, T0 + 1.5 * STEP, 4, new_format),  # 4 CPUs half of slot 1
            _job(T0 + 2 * STEP, None, 1, new_format),  # still running at the end of the document
        ]
    }
    s = sacct_idle(doc, 8, STEP)
    assert s.start == T0 and s.total == 8
    exp0 = 8 - 2 * (STEP - 5) / STEP
    exp1 = 8 - 2 * 5 / STEP - 4 * 0.5
    assert s.values[0] == pytest.approx(exp0)
    assert s.values[1] == pytest.approx(exp1)


def test_sacct_idle_from_a_real_sacct_document():
    s = load_series(
        ROOT / "tests" / "data" / "sacct_2205.json", 1.0, total_cpus=2
    )  # Slurm 22.05's own output
    assert s.start == 1_700_000_001 and s.total == 2
    np.testing.assert_array_equal(s.values, [1, 1, 1, 1, 0, 2])  # 1 job, 1 job, 2 jobs, none; one never ran


def test_sacct_import_into_history_and_bad_input(tmp_path: Path):
    path = tmp_path / "sacct.json"
    path.write_text(json.dumps({"jobs": [_job(T0, T0 + 2 * STEP, 3, True)]}))
    s = load_series(path, STEP, total_cpus=4)
    np.testing.assert_allclose(s.values, [1.0, 1.0])
    with History(tmp_path / "h.sqlite") as h:
        assert h.import_series(s, "sacct") == 2
    assert list(load_series(tmp_path / "h.sqlite", STEP).values) == [1.0, 1.0]
    with pytest.raises(TraceError, match="--cpus"):
        load_series(path, STEP)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TraceError, match="not valid JSON"):
        load_series(tmp_path / "bad.json", total_cpus=4)
    (tmp_path / "nojobs.json").write_text("{}")
    with pytest.raises(TraceError, match="'jobs'"):
        load_series(tmp_path / "nojobs.json", total_cpus=4)
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(TraceError, match="neither"):
        load_series(tmp_path / "x.txt")
    with pytest.raises(TraceError, match="cannot read"):
        load_series(tmp_path / "missing")


def _swf_line(job: int, submit: int, wait: int, run: int, procs: int) -> str:
    fields = [job, submit, wait, run, procs] + [-1] * 13
    return " ".join(str(f) for f in fields)


def test_swf_import_into_history(tmp_path: Path):
    path = tmp_path / "tiny.swf.gz"
    lines = [
        "; MaxProcs: 10",
        f"; UnixStartTime: {int(T0)}",
        _swf_line(1, 0, 0, 1800, 4),
        _swf_line(2, 0, 900, 900, 6),
    ]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    s = load_series(path, STEP)
    np.testing.assert_allclose(s.values, [6.0, 0.0])
    with History(tmp_path / "h.sqlite") as h:
        assert h.import_series(s, "swf") == 2
        back = h.series(STEP)
    assert back is not None and back.start == T0 and back.total == 10
    np.testing.assert_allclose(back.values, [6.0, 0.0])
    plain = tmp_path / "noext"  # found by its content
    plain.write_text("\n".join(lines[2:]) + "\n")
    assert len(load_series(plain, STEP).values) == 2


# -- collectors ------------------------------------------------------------------------------------
def _sinfo_cpus(slurm: SlurmCluster) -> list[float]:
    """allocated/idle/other/total CPUs of the test cluster, as sinfo prints them."""
    a_i_o_t = slurm.run(["sinfo", "-h", "-o", "%C"]).stdout.strip()
    return [float(x) for x in a_i_o_t.split("/")]


def _pending(slurm: SlurmCluster) -> tuple[int, float]:
    cpus = slurm.run(["squeue", "-h", "-r", "-t", "PD", "-o", "%C"]).stdout.split()
    return len(cpus), sum(float(c) for c in cpus)


def test_slurm_collector_matches_sinfo_and_squeue(
    slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    cfg = parse_config(
        {
            "balancer": {"scheduler": "slurm"},
            "servers": [
                {"name": "m", "command": ["true"], "resources": {"cpus": 1, "time_limit": "00:02:00"}}
            ],
        },
        base_dir=tmp_path,
    )
    backend = SlurmBackend(cfg, tmp_path / "run")

    async def main() -> None:
        collector = make_collector(cfg, backend)  # before start: it follows the job names given then
        await backend.start()
        try:
            await check(collector, backend.job_names["m"])
        finally:
            await backend.close()

    async def check(collector: Any, our_name: str) -> None:
        assert isinstance(collector, SlurmCollector) and collector.default_only
        # An idle node: everything free, and the will-run test says a job of ours starts now.
        (idle,) = await collector.sample()
        assert (idle.partition, idle.total_cpus, idle.idle_cpus, idle.alloc_cpus) == ("debug", 2, 2, 0)
        assert idle.pending_jobs == 0 and idle.our_pending == 0
        assert idle.expected_wait_s is not None and idle.expected_wait_s < 5
        # Other users' jobs take both CPUs; one more of theirs and one of ours wait.
        running = [
            slurm.sbatch("-J", "other", "-c", "1", "-t", "5", "--output=/dev/null", wrap="sleep 300")
            for _ in range(2)
        ]
        for job in running:
            slurm.wait_state(job, {"RUNNING"})
        slurm.sbatch("-J", "other", "-c", "2", "-t", "3", "--output=/dev/null", wrap="sleep 300")
        ours = slurm.sbatch("-J", our_name, "-c", "1", "-t", "2", "--output=/dev/null", wrap="sleep 300")
        t0 = time.perf_counter()
        (full,) = await collector.sample()
        took = time.perf_counter() - t0
        a, i, o, t = _sinfo_cpus(slurm)
        assert (
            (full.alloc_cpus, full.idle_cpus, full.other_cpus, full.total_cpus)
            == (a, i, o, t)
            == (2, 0, 0, 2)
        )
        assert (full.pending_jobs, full.pending_cpus) == _pending(slurm) == (2, 3)
        assert full.our_pending == 1
        print(f"slurm collector sample: {took * 1000:.0f} ms")

        # The backfill scheduler's expected start of our job (squeue --start) becomes the wait.
        def our_start() -> float | None:
            return parse_slurm_time(slurm.run(["squeue", "-h", "-j", ours, "-o", "%S"]).stdout)

        before = wait_until(our_start, timeout=60, interval=0.25, what="backfill's expected start of our job")
        (known,) = await collector.sample()
        after = our_start()  # backfill may have run again in between
        assert known.expected_wait_s is not None
        assert any(
            known.expected_wait_s == pytest.approx(max(0.0, t - known.t), abs=1e-3) for t in (before, after)
        )
        assert 0 < known.expected_wait_s <= 600
        # A partition filter, and a partition that does not exist.
        (named,) = await SlurmCollector(partitions=["debug"]).sample()
        assert (named.partition, named.total_cpus, named.pending_jobs) == ("debug", 2, 2)
        with pytest.raises(CollectError, match="no partition"):
            await SlurmCollector(partitions=["nosuch"]).sample()

    asyncio.run(main())


def test_slurm_collector_fails_in_one_line_without_a_cluster(tmp_path: Path):
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "none.conf"), "PATH": str(tmp_path)}
    with pytest.raises(CollectError, match=r"^slurm: sinfo failed \(127\): .*cannot run"):
        asyncio.run(SlurmCollector(env=env).sample())


def test_gres_and_node_parsing():
    assert gres_gpus("(null)") == 0
    assert gres_gpus("gpu:a100:4(S:0-1),mps:100") == 4
    assert gres_gpus("gpu:2(IDX:0,1),gpu:v100:1") == 3
    parts, default = parse_sinfo("gpu*|4/60/0/64|2|gpu:a100:4(S:0-1)\ngpu*|0/32/32/64|2|gpu:a100:4\n")
    assert default == "gpu"
    p = parts["gpu"]
    assert (p.alloc, p.idle, p.other, p.total, p.gpus) == (4, 92, 32, 128, 16)
    parse_node_gres(
        "gpu*|gpu:a100:4|gpu:a100:1(IDX:0)|mixed\ngpu*|gpu:a100:4|gpu:a100:0|drained\n"
        "gpu*|gpu:a100:4|gpu:a100:4(IDX:0-3)|allocated\ngpu*|gpu:a100:4|gpu:a100:0|idle\n",
        parts,
    )
    assert p.idle_gpus == 3 + 0 + 0 + 4


def test_local_collector_follows_psutil():
    c = LocalCollector()
    (first,) = asyncio.run(c.sample())
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = psutil.Process(burner.pid)
        wait_until(lambda: sum(proc.cpu_times()[:2]) >= 0.5, 20, what="the burner to spin 0.5 s")
        burnt = sum(proc.cpu_times()[:2])  # CPU seconds it spent inside the collector's window
        (second,) = asyncio.run(c.sample())
    finally:
        burner.kill()
        burner.wait()
    cpus = psutil.cpu_count()
    for s in (first, second):
        assert (s.source, s.partition, s.total_cpus) == ("local", "", cpus)
        assert 0 <= s.idle_cpus <= cpus and s.alloc_cpus == pytest.approx(cpus - s.idle_cpus)
        assert s.mem_used_frac == pytest.approx(psutil.virtual_memory().percent / 100, abs=0.05)
        assert s.load == pytest.approx(os.getloadavg()[0] / cpus, abs=1.0)
    window = second.t - first.t + 0.05
    assert second.idle_cpus <= cpus - burnt / window + 0.05, "CPU time a spinning process took counts as busy"


def test_hq_embedded_collector_sees_its_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("hyperqueue")
    from balancer.backends.base import ENV_SERVER_ID, Launch
    from balancer.backends.hyperqueue import backend as hqb

    monkeypatch.setattr(hqb, "launcher_argv", lambda command, python=None: list(command))
    raw = {
        "balancer": {"scheduler": "hyperqueue"},
        "servers": [{"name": "m", "command": ["sleep", "60"]}],
        "backend": {"workers": 1, "cpus_per_worker": 2, "poll_interval_s": 0.05},
    }
    cfg = parse_config(raw, base_dir=tmp_path)
    be = hqb.HyperQueueBackend(cfg, tmp_path / "run")
    started: set[str] = set()
    be.bind(
        type(
            "Ev",
            (),
            {
                "job_started": lambda self, sid, job, host: started.add(sid),
                "job_ended": lambda self, *a: None,
                "job_deadline": lambda self, *a: None,
            },
        )()
    )

    async def main() -> list[CapacitySample]:
        collector = make_collector(cfg, be)  # as the app does: before the backend starts
        with pytest.raises(CollectError, match="not started"):
            await collector.sample()
        await be.start()
        try:
            got = await collector.sample()
            launches = [
                Launch(f"s{i}", cfg.servers[0], {ENV_SERVER_ID: f"s{i}"}, be.run_dir / "logs")
                for i in range(3)
            ]
            await be.submit(launches)
            await until_async(lambda: len(started) == 2)
            return got + await collector.sample()
        finally:
            await be.close()

    empty, busy = asyncio.run(main())
    assert (empty.total_cpus, empty.idle_cpus, empty.pending_jobs, empty.workers) == (2, 2, 0, 1)
    assert (busy.total_cpus, busy.idle_cpus, busy.alloc_cpus, busy.pending_jobs) == (2, 0, 2, 1)


async def until_async(pred: Any, timeout: float = 20.0) -> None:
    await asyncio.to_thread(wait_until, pred, timeout)


def test_hq_json_parsing():
    workers = [
        {
            "id": 1,
            "configuration": {
                "resources": {
                    "resources": [
                        {"name": "cpus", "kind": "groups", "groups": [[0, 1], [2, 3]]},
                        {"name": "gpus/nvidia", "kind": "list", "values": [0, 1]},
                    ]
                }
            },
            "ended": None,
        },
        {
            "id": 2,
            "configuration": {
                "resources": {"resources": [{"name": "cpus", "kind": "range", "start": 0, "end": 7}]}
            },
            "ended": None,
        },
        {
            "id": 3,
            "configuration": {"resources": {"resources": [{"name": "cpus", "kind": "list", "values": [0]}]}},
            "ended": {"at": "2026-01-01T00:00:00Z"},
        },
    ]
    assert parse_workers(workers) == (2, 12, 2)
    jobs = [{"id": 1, "task_stats": {"running": 2, "waiting": 3}}, {"id": 2, "task_stats": {"running": 1}}]
    assert parse_jobs(jobs) == (3, 3)
    assert parse_allocations([{"status": "queued"}, {"status": "running"}, {"status": "queued"}]) == 2


# -- CLI -------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """As the balancer's own: a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _cli(argv: list[str]) -> int:
    parser = _Parser(prog="balancer")
    add_capacity_parser(parser.add_subparsers(dest="command", required=True, parser_class=_Parser))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return int(args.func(args))


def test_cli_import_show_collect_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    hist = tmp_path / "h.sqlite"
    sacct = tmp_path / "sacct.json"
    sacct.write_text(json.dumps({"jobs": [_job(T0, T0 + 2 * STEP, 3, False)]}))
    assert _cli(["capacity", "import", str(sacct), "--history", str(hist), "--cpus", "4"]) == 0
    assert "imported 2 slots" in capsys.readouterr().out
    assert _cli(["capacity", "collect", "--history", str(hist), "--once"]) == 0
    assert capsys.readouterr().out.startswith(datetime.datetime.now().isoformat()[:10])
    assert _cli(["capacity", "show", "--history", str(hist)]) == 0
    out = capsys.readouterr().out
    assert "3 samples" in out and "sacct" in out and "local" in out
    bad = [
        (["capacity", "import", str(sacct), "--history", str(hist)], "--cpus N"),
        (["capacity", "import", str(tmp_path / "missing.swf"), "--history", str(hist)], "cannot read"),
        (["capacity", "import", str(hist), "--history", str(tmp_path / "x")], "already a capacity history"),
        (["capacity", "show", "--history", str(tmp_path / "none.sqlite")], "no history"),
        (["capacity", "show", "--history", str(sacct)], "not a capacity history"),
        (["capacity", "import", str(sacct), "--grid", "0"], "must be > 0"),
        (["capacity", "collect", "--scheduler", "pbs"], "invalid choice"),
    ]
    for argv, msg in bad:
        assert _cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) <= 3, (argv, err)


@pytest.mark.skipif(shutil.which("hq") is None, reason="the hq binary is not on PATH (HPC users download it)")
def test_hq_binary_collector_lists_workers_and_tasks(tmp_path: Path):
    hq = shutil.which("hq") or "hq"
    d = str(tmp_path / "hq")
    procs = [
        subprocess.Popen(
            [hq, "--server-dir", d, "server", "start"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    ]
    try:
        wait_until(
            lambda: (
                subprocess.run([hq, "--server-dir", d, "server", "info"], capture_output=True).returncode == 0
            ),
            30,
            0.1,
            "hq server",
        )
        procs.append(
            subprocess.Popen(
                [hq, "--server-dir", d, "worker", "start", "--cpus", "2"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for _ in range(3):
            subprocess.run(
                [hq, "--server-dir", d, "submit", "--cpus", "1", "--", "sleep", "60"],
                check=True,
                capture_output=True,
            )
        collector = HqCollector(d, hq)

        def full() -> CapacitySample | None:
            (s,) = asyncio.run(collector.sample())
            return s if s.pending_jobs == 1 and s.idle_cpus == 0 else None

        s = wait_until(full, 30, 0.1, "two tasks running, one waiting")
        assert (s.workers, s.total_cpus, s.alloc_cpus, s.alloc_queues, s.our_pending) == (1, 2, 2, 0, 0)
    finally:
        subprocess.run([hq, "--server-dir", d, "server", "stop"], capture_output=True, timeout=30)
        for p in procs:
            p.kill()
            p.wait()


KTH = ROOT.parent / "shared" / "data" / "traces" / "KTH-SP2-1996-2.1-cln.swf.gz"


@pytest.mark.skipif(not KTH.exists(), reason=f"the KTH SP2 trace is not at {KTH}")
def test_a_real_trace_survives_the_history_unchanged(tmp_path: Path):
    direct = load_series(KTH, STEP)
    with History(tmp_path / "kth.sqlite") as h:
        assert h.import_series(direct, "swf") == np.isfinite(direct.values).sum()
        back = h.series(STEP)
    assert back is not None and back.total == direct.total == 100
    assert abs(back.start - direct.start) < STEP  # the history's grid is epoch-aligned
    np.testing.assert_allclose(back.values, direct.values)


def test_make_collector_takes_partition_and_job_size_from_the_config(tmp_path: Path):
    raw: dict[str, Any] = {
        "balancer": {"scheduler": "slurm"},
        "backend": {"account": "acc"},
        "servers": [
            {
                "name": "m",
                "command": ["true"],
                "partition": "p1",
                "qos": "q",
                "resources": {"cpus": 4, "time_limit": "1:00:00"},
            }
        ],
    }
    cfg = parse_config(raw, base_dir=tmp_path)
    c = make_collector(cfg, SlurmBackend(cfg, tmp_path / "run"))
    assert isinstance(c, SlurmCollector) and c.partitions == ("p1",) and not c.default_only
    assert c.test_job == ProbeJob(4, "1:00:00", 0, ("--account=acc", "--qos=q"))
    raw["forecast"] = {"partition": "big"}
    cfg = parse_config(raw, base_dir=tmp_path)
    assert make_collector(cfg, SlurmBackend(cfg, tmp_path / "run")).partitions == ("big",)
    local = parse_config({"servers": [{"name": "m", "command": ["true"]}]}, base_dir=tmp_path)
    assert isinstance(make_collector(local, None), LocalCollector)
