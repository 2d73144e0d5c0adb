"""Cluster capacity: the SQLite history, trace imports, parsing, CLI (collectors against real
schedulers: cluster/test_capacity_collectors; the local one: system/test_capacity_local)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gzip
import json
import math
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest

from balancer.backends.batch.slurm import SlurmBackend
from balancer.capacity.collect import CollectError
from balancer.capacity.collect_hq import parse_allocations, parse_jobs, parse_workers
from balancer.capacity.collect_local import LocalCollector
from balancer.capacity.collect_slurm import ProbeJob, SlurmCollector, gres_gpus, parse_node_gres, parse_sinfo
from balancer.capacity.collectors import make_collector
from balancer.capacity.history import History, default_history_path
from balancer.capacity.sample import CapacitySample
from balancer.capacity.series import Series
from balancer.capacity.swf import TraceError
from balancer.capacity.traces import load_series, sacct_idle
from balancer.cli.cluster import add_capacity_parser
from balancer.config.parse import parse_config
from tests.helpers import ROOT

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
        h.add([sample(float(a), float(b), total=16.0) for a, b in zip(t, idle, strict=True)])
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
