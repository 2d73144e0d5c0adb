"""Batch-scheduler backends without a cluster: sbatch arguments as strings, SLURM's state table, the
typed option validation, the launcher's variables, and the batch base driven through its hooks by a
toy scheduler made of real shell commands (a fourth scheduler, as README's "Adding a scheduler"
describes it; marked inproc). Job scripts run for real: system/test_batch_job_scripts."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from balancer.backends.base import Launch
from balancer.backends.batch.base import BatchBackend, StatusRow
from balancer.backends.batch.slurm import STATES, SlurmBackend
from balancer.backends.registry import SCHEDULERS, make_backend
from balancer.backends.states import JobState
from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError
from balancer.launcher import main as launch
from balancer.launcher.contract import ENV_PREEMPTIBLE, ENV_SERVER_ID


def slurm_cfg(tmp_path: Path, spec: dict[str, Any], backend: dict[str, Any] | None = None):
    raw = {"balancer": {"scheduler": "slurm"}, "backend": backend or {}, "servers": [spec]}
    return parse_config(raw, tmp_path)


def slurm(tmp_path: Path, spec: dict[str, Any], backend: dict[str, Any] | None = None) -> SlurmBackend:
    be = make_backend(slurm_cfg(tmp_path, spec, backend), tmp_path)
    assert isinstance(be, SlurmBackend)
    be.job_names[spec["name"]] = f"umbridge-{spec['name']}-abc"
    return be


def test_sbatch_arguments(tmp_path):
    user = tmp_path / "job.sh"
    user.write_text("#!/bin/bash\n#SBATCH -c 8\nexec model\n")
    spec = {
        "name": "m",
        "job_script": str(user),
        "servers_per_job": 2,
        "sbatch_args": "--constraint=fast",
        "resources": {"memory": "2G", "gpus": 1, "time_limit": "01:00:00"},
    }
    be = slurm(tmp_path, spec, {"partition": "batch", "account": "uq", "sbatch_args": ["--exclusive"]})
    argv = be.submit_argv(be.cfg.servers[0], 3, tmp_path / "job-m.sh", tmp_path)
    assert argv[:2] == ["sbatch", "--parsable"] and argv[-1] == str(tmp_path / "job-m.sh")
    assert "--array=0-2" in argv and f"--output={tmp_path}/slurm-%A_%a.out" in argv
    assert {"--partition=batch", "--account=uq", "--mem=4G", "--gpus=2", "--time=01:00:00"} <= set(argv)
    assert "--cpus-per-task=2" in argv  # 2 servers x 1 CPU: the config's request wins over -c 8
    assert argv.index("--exclusive") < argv.index("--constraint=fast")  # site default, then the spec's
    # One server, no resources in the config: the script's own -c stays, no --array.
    be = slurm(tmp_path, {"name": "m", "job_script": str(user), "partition": "debug"})
    argv = be.submit_argv(be.cfg.servers[0], 1, tmp_path / "s.sh", tmp_path)
    assert not any(a.startswith(("--array", "--cpus-per-task")) for a in argv) and "--partition=debug" in argv


def test_preemptible_launches_go_to_the_preempt_partition_with_time_min(tmp_path):
    spec = {"name": "m", "command": ["model"], "resources": {"time_limit": "00:30:00"}}
    backend = {"partition": "debug", "qos": "normal", "preempt_partition": "scavenger", "time_min": "10m"}
    be = slurm(tmp_path, spec, backend)
    assert be.opts.time_min == 600.0
    normal = be.submit_argv(be.cfg.servers[0], 1, tmp_path / "s.sh", tmp_path)
    pre = be.submit_argv(be.cfg.servers[0], 2, tmp_path / "s.sh", tmp_path, preemptible=True)
    assert {"--partition=debug", "--qos=normal", "--no-requeue"} <= set(normal)
    assert not any(a.startswith("--time-min") for a in normal)
    # The preemptible partition replaces the normal one; the QOS stays (no preempt_qos set).
    assert {"--partition=scavenger", "--qos=normal", "--no-requeue", "--time-min=00:10:00"} <= set(pre)
    assert "--partition=debug" not in pre and "--time=00:30:00" in pre
    # A QOS alone; --time-min never above the job's own limit.
    be = slurm(tmp_path, spec, {"qos": "normal", "preempt_qos": "scavenge", "time_min": 7200})
    pre = be.submit_argv(be.cfg.servers[0], 1, tmp_path / "s.sh", tmp_path, preemptible=True)
    assert {"--qos=scavenge", "--time-min=00:30:00"} <= set(pre) and "--qos=normal" not in pre
    assert not any(a.startswith("--partition") for a in pre)


def test_preempt_options_are_checked_at_load_and_at_start(tmp_path):
    spec = {"name": "m", "command": ["model"]}
    for value, msg in (("soon", "not a duration"), (0, "must be > 0"), (True, "expected a number")):
        with pytest.raises(ConfigError) as err:
            slurm_cfg(tmp_path, spec, {"time_min": value})
        assert err.value.key == "backend.time_min" and msg in str(err.value)
    with pytest.raises(ConfigError) as err:
        slurm_cfg(tmp_path, spec, {"preempt_partition": "a b"})
    assert err.value.key == "backend.preempt_partition"
    # The harvest policy without a preemptible partition or QOS refuses to start, before any sinfo.
    raw = {"balancer": {"scheduler": "slurm"}, "forecast": {"policy": "harvest"}, "servers": [spec]}
    be = make_backend(parse_config(raw, tmp_path), tmp_path)
    with pytest.raises(ConfigError) as err:
        asyncio.run(be.start())
    assert err.value.key == "backend.preempt_partition" and "harvest policy" in str(err.value)
    # HyperQueue cannot place one server on a preemptible allocation: a clear refusal.
    raw = {"balancer": {"scheduler": "hyperqueue"}, "forecast": {"policy": "hybrid"}, "servers": [spec]}
    hq = make_backend(parse_config(raw, tmp_path), tmp_path)
    with pytest.raises(ConfigError) as err:
        asyncio.run(hq.start())
    assert err.value.key == "forecast.policy" and "HyperQueue" in str(err.value)


def test_a_preemptible_job_tells_its_launchers(tmp_path):
    be = slurm(tmp_path, {"name": "m", "command": ["model"]}, {"preempt_partition": "scavenger"})
    spec = be.cfg.servers[0]
    normal = be.submit_env([Launch("s1", spec, {}, tmp_path)])
    pre = be.submit_env([Launch("s2", spec, {}, tmp_path, preemptible=True)])
    assert ENV_PREEMPTIBLE not in normal and pre[ENV_PREEMPTIBLE] == "1"


def test_squeue_rows_map_onto_the_common_states(tmp_path):
    be = slurm(tmp_path, {"name": "m", "command": ["model"]})
    out = (
        "7_0|7|0|8|RUNNING|None|2026-11-24T10:00:00|2026-11-24T11:00:00|1:00:00|59:00|node1|umbridge-m-abc|x\n"
        "9|9|N/A|9|PENDING|PartitionConfig|N/A|N/A|1:00:00|1:00:00||umbridge-m-abc|x\n"
        "garbage line\n"
    )
    run, pend = list(be.parse_status(out))
    assert (run.key, run.native, run.nodes) == (("7", "0"), "RUNNING", "node1") and run.end_wall is not None
    assert (pend.key, pend.native, pend.end_wall) == (("9", ""), "PENDING", None)
    assert "PartitionConfig" in (be.never_starts(pend) or "")
    assert STATES["COMPLETING"] is JobState.RUNNING and STATES["OUT_OF_MEMORY"] is JobState.FAILED
    assert STATES["SUSPENDED"] is JobState.HELD and "BOGUS" not in STATES  # unknown states wait


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_backend_options_are_typed_and_checked_at_load(tmp_path, scheduler):
    spec = {"name": "m", "command": ["model"]}

    def load(backend: dict[str, Any], **extra: Any):
        raw = {"balancer": {"scheduler": scheduler}, "backend": backend, "servers": [{**spec, **extra}]}
        return parse_config(raw, tmp_path)

    cases = [
        ({"time_limit_margin_s": "x"}, {}, "backend.time_limit_margin_s", "expected a number"),
        ({"time_limit_margin_s": 0}, {}, "backend.time_limit_margin_s", "must be > 0"),
        ({"colour": 1}, {}, "backend.colour", f"unknown key for {scheduler}"),
        ({}, {"colour": 1}, "servers.m.colour", f"unknown key for {scheduler}"),
    ]
    if scheduler != "local":
        cases.append(({}, {"threads": 0}, "servers.m.threads", "must be > 0"))
    for backend, extra, key, msg in cases:
        with pytest.raises(ConfigError) as err:
            load(backend, **extra)
        assert err.value.key == key and msg in str(err.value)
    assert load({"time_limit_margin_s": 5}).backend_options.time_limit_margin_s == 5.0


def test_the_launcher_reads_only_the_balancers_variables(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("HQ_JOB_ID", "6")
    monkeypatch.delenv("UMBRIDGE_BALANCER_JOB_ID", raising=False)
    assert launch.job_id() == str(os.getpid())
    monkeypatch.setenv("UMBRIDGE_BALANCER_JOB_ID", "7_1")
    assert launch.job_id() == "7_1"
    monkeypatch.setenv(ENV_SERVER_ID, "s1,s2,s3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("UMBRIDGE_BALANCER_TASK_INDEX", "2")
    assert launch.server_id() == "s3"


# -- a toy scheduler over the batch base -----------------------------------------------------------
SCHED = r"""
import json, sys, time
db = sys.argv[1]
try:
    jobs = json.load(open(db))
except FileNotFoundError:
    jobs = {}
cmd = sys.argv[2]
if cmd == "submit":
    time.sleep(float(sys.argv[4]))
    jid = str(100 + len(jobs))
    for t in range(int(sys.argv[3])):
        jobs[f"{jid}.{t}"] = "Q"
    print(jid)
elif cmd == "status":
    for k, v in jobs.items():
        print(k, v)
elif cmd == "cancel":
    for k in sys.argv[3:]:
        jobs[k.replace("_", ".")] = "X"
json.dump(jobs, open(db, "w"))
"""


class ToyBatch(BatchBackend):
    """A scheduler with commands submit/status/cancel and states Q, R, C (completed), X (cancelled),
    E (failed), P (preempted), B (bad request: never starts)."""

    name = "toy"
    DIRECTIVE = "#TOY"
    STATES = {"Q": JobState.PENDING, "B": JobState.PENDING, "R": JobState.RUNNING,
              "C": JobState.COMPLETED, "X": JobState.CANCELLED, "E": JobState.FAILED,
              "P": JobState.PREEMPTED}  # fmt: skip
    ARRAY_INDEX = "${TOY_INDEX:-0}"
    JOB_ID = "$TOY_JOB"
    submit_delay = 0.0

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, str(self.run_dir / "sched.py"), str(self.run_dir / "db.json"), *args]

    def submit_argv(self, spec, n_jobs, script, log_dir, preemptible=False):  # type: ignore[no-untyped-def]
        return self._cmd("submit", str(n_jobs), str(self.submit_delay))

    def parse_job_id(self, stdout: str) -> str:
        return stdout.strip()

    def status_argv(self, job_names: list[str]) -> list[str]:
        return self._cmd("status")

    def parse_status(self, stdout: str) -> Iterable[StatusRow]:
        for line in stdout.splitlines():
            key, state = line.split()
            job, task = key.split(".")
            yield StatusRow((job, task if task != "0" or self._array(job) else ""), state, nodes="toy1")

    def _array(self, job: str) -> bool:
        return any(k[0] == job and k[1] for k in self.jobs)

    def cancel_argv(self, job_ids: list[str]) -> list[str]:
        return self._cmd("cancel", *job_ids)

    def never_starts(self, row: StatusRow) -> str | None:
        return "bad request" if row.native == "B" else None


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple[str, ...]] = []

    def job_started(self, server_id: str, job_id: str, host: str) -> None:
        self.log.append(("started", server_id, job_id))

    def job_ended(self, server_id: str, reason: str, failed: bool) -> None:
        self.log.append(("ended", server_id, reason, str(failed)))

    def job_deadline(self, server_id: str, deadline_wall: float) -> None:
        self.log.append(("deadline", server_id))

    def job_preempted(self, server_id: str, reason: str) -> None:
        self.log.append(("preempted", server_id, reason))


def test_a_preemptible_jobs_end_brought_forward_is_its_preemption(tmp_path):
    """SLURM's preemption grace: the job runs on, but its end moves to now + GraceTime. For a
    preemptible job that is the preemption (reported once, no deadline); for another job a new
    deadline (the pool drains the server before it)."""
    from balancer.backends.batch.base import _Job

    cfg = slurm_cfg(tmp_path, {"name": "m", "command": ["x"]})
    be = ToyBatch(cfg, tmp_path)
    rec = Recorder()
    be.bind(rec)
    far, soon = 2e9, 1.8e9
    for preemptible in (True, False):
        rec.log.clear()
        job = _Job(("7", ""), ["s1"], "m", 0.0, preemptible=preemptible)
        be._update(job, StatusRow(("7", ""), "R", end_wall=far, nodes="n1"))
        assert rec.log == [("started", "s1", "7"), ("deadline", "s1")]  # the first end is its limit
        be._update(job, StatusRow(("7", ""), "R", end_wall=soon, nodes="n1"))
        be._update(job, StatusRow(("7", ""), "R", end_wall=soon - 10, nodes="n1"))
        if preemptible:
            assert rec.log[2:] == [("preempted", "s1", "job 7: its end was brought forward (preempted)")]
            be._update(job, StatusRow(("7", ""), "P"))  # then it ends preempted: not reported again
            assert rec.log[3:] == [("ended", "s1", "job 7 P", "False")]
        else:
            assert rec.log[2:] == [("deadline", "s1"), ("deadline", "s1")]
    # An unlimited job that showed no end at all until SLURM set one for its grace time.
    rec.log.clear()
    job = _Job(("8", ""), ["s2"], "m", 0.0, preemptible=True)
    be._update(job, StatusRow(("8", ""), "R", end_wall=None, nodes="n1"))
    be._update(job, StatusRow(("8", ""), "R", end_wall=soon, nodes="n1"))
    assert rec.log == [
        ("started", "s2", "8"),
        ("preempted", "s2", "job 8: its end was brought forward (preempted)"),
    ]


@pytest.mark.inproc  # its fake scheduler commands are small processes
def test_a_fourth_scheduler_is_its_hooks(tmp_path):
    (tmp_path / "sched.py").write_text(SCHED)
    # The batch options of any batch scheduler will do for the toy (it is not in the registry).
    backend = {"poll_interval_s": 0.05, "fast_poll_s": 0.05}
    cfg = slurm_cfg(tmp_path, {"name": "m", "command": ["x"]}, backend)
    db = tmp_path / "db.json"

    def set_state(key: str, state: str) -> None:
        import json

        jobs = json.loads(db.read_text())
        jobs[key] = state
        db.write_text(json.dumps(jobs))

    async def until(pred, timeout: float = 20.0):  # type: ignore[no-untyped-def]
        for _ in range(int(timeout / 0.02)):
            if pred():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out: {rec.log}")

    rec = Recorder()

    async def main() -> None:
        be = ToyBatch(cfg, tmp_path)
        be.bind(rec)
        await be.start()
        launches = [Launch(f"s{i}", cfg.servers[0], {}, tmp_path / "logs") for i in range(3)]
        be.submit_delay = 0.5
        submitting = asyncio.ensure_future(be.submit(launches))
        await asyncio.sleep(0.2)
        await be.cancel("s2")  # arrives while the submit command still runs
        await submitting
        assert sorted(j.id for j in be.jobs.values()) == ["100_0", "100_1", "100_2"]  # one array
        await until(lambda: ("ended", "s2", "job 100_2 X", "True") in rec.log)  # cancelled once submitted
        set_state("100.0", "R")
        await until(lambda: ("started", "s0", "100_0") in rec.log)
        set_state("100.0", "C")
        await until(lambda: ("ended", "s0", "job 100_0 C", "False") in rec.log)
        # A second array: one task runs, then the scheduler preempts it: reported as preempted, then
        # as ended but not failed (a lost server, not a failed start).
        await be.submit([Launch("p0", cfg.servers[0], {}, tmp_path / "logs", preemptible=True)])
        set_state("103.0", "R")
        await until(lambda: ("started", "p0", "103") in rec.log)
        set_state("103.0", "P")
        await until(lambda: ("ended", "p0", "job 103 P", "False") in rec.log)
        assert rec.log.index(("preempted", "p0", "job 103 P")) < rec.log.index(
            ("ended", "p0", "job 103 P", "False")
        )
        set_state("100.1", "B")
        await until(lambda: any(e[:2] == ("ended", "s1") for e in rec.log))
        assert ("ended", "s1", "job 100_1 cannot start: bad request", "True") in rec.log
        await be.close()
        # What a toy job runs exports the toy's own array index and job id for the launcher.
        script = be.job_script(cfg.servers[0], tmp_path)
        assert "first=$(( ${TOY_INDEX:-0} * per ))" in script
        assert "export UMBRIDGE_BALANCER_JOB_ID=$TOY_JOB" in script

    asyncio.run(main())
