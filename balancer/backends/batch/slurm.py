"""SLURM backend: the batch-scheduler base (``batch.base``) with SLURM's commands and states.

Why the CLI and not ``pyslurm``: the Python bindings only build against the exact Slurm release
they target, while ``sbatch --parsable`` / ``squeue -o`` work on every site (as in dask-jobqueue and
Parsl). Specific to SLURM:

* ``sbatch --export=ALL`` with the launchers' variables in sbatch's own environment:
  ``--export=ALL,K=V`` makes slurmd load the login environment, ~1.1 s more per job start.
  Options from the config win over the script's ``#SBATCH`` lines, as in sbatch itself.
* One ``squeue -r -t all --name=<our job names>`` per poll; a job's ``%e`` end time becomes its
  deadline (the pool drains and replaces the server ``time_limit_margin_s`` before it).
* A pending reason that never resolves as submitted (``fail_pending_reasons``, e.g.
  ``PartitionConfig`` for a request no node can satisfy) fails the start at once.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from balancer.backends.batch.base import BatchBackend, BatchOptions, BatchServerOptions, StatusRow
from balancer.backends.batch.jobscript import directive_option
from balancer.backends.batch.jobscript import read_directives as _read_directives
from balancer.backends.options import args, duration, word
from balancer.backends.states import SLURM_STATES
from balancer.config.schema import HARVESTING, ConfigError, ServerSpec
from balancer.units import format_time_limit, parse_time_limit, scale_memory

log = logging.getLogger(__name__)

SQUEUE_FORMAT = "%i|%F|%K|%A|%T|%r|%S|%e|%l|%L|%N|%j|%k"
_FIELDS = 13
# SLURM's job states (squeue -t all) on the common enum; any state not listed waits as UNKNOWN.
STATES = SLURM_STATES  # the table lives with every backend's in backends/states.py
# Pending reasons that mean "never, as submitted" (the request exceeds the partition or is refused).
DEFAULT_FAIL_REASONS = (
    "PartitionConfig",
    "BadConstraints",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "InvalidAccount",
    "InvalidQOS",
    "AccountNotAllowed",
    "QOSNotAllowed",
    "DependencyNeverSatisfied",
)
_REASON_HINTS = {
    "PartitionConfig": "the request exceeds what the partition's nodes offer (cpus, memory, gpus)",
    "BadConstraints": "no node satisfies the job's constraints",
    "PartitionNodeLimit": "the node count exceeds the partition's limit",
    "PartitionTimeLimit": "the time limit exceeds the partition's maximum",
}


@dataclass(frozen=True)
class SlurmOptions(BatchOptions):
    fail_pending_reasons: tuple[str, ...] = args(DEFAULT_FAIL_REASONS)
    # Site-wide defaults of the per-server options below.
    partition: str | None = word()
    account: str | None = word()
    qos: str | None = word()
    sbatch_args: tuple[str, ...] = args()
    # Preemptible launches (the harvest and hybrid policies): the partition and/or QOS whose jobs
    # others may preempt, and ``--time-min`` for them (backfill may start such a job early, with a
    # shorter limit that is at least this). They replace ``partition``/``qos`` for those jobs.
    preempt_partition: str | None = word()
    preempt_qos: str | None = word()
    time_min: float | None = duration()


@dataclass(frozen=True)
class SlurmServerOptions(BatchServerOptions):
    partition: str | None = word()
    account: str | None = word()
    qos: str | None = word()
    sbatch_args: tuple[str, ...] = args()


def parse_slurm_time(text: str) -> float | None:
    """squeue's ``%e``/``%S`` (local time, ``YYYY-MM-DDTHH:MM:SS``) as Unix seconds; None for none."""
    t = text.strip()
    if not t or t in ("N/A", "NONE", "Unknown", "UNLIMITED", "INVALID"):
        return None
    try:
        dt = datetime.datetime.fromisoformat(t)
    except ValueError:
        return None
    return dt.timestamp()  # naive: interpreted as local time, as squeue prints it


def read_directives(script: str | Path) -> list[str]:
    """The ``#SBATCH`` lines heading a job script (sbatch stops reading them at the first command)."""
    return _read_directives(script, "#SBATCH")


class SlurmBackend(BatchBackend):
    name = "slurm"
    REFERENCE_SCRIPTS = "slurm_scripts"
    Options = SlurmOptions
    ServerOptions = SlurmServerOptions
    TOOLS = ("sbatch", "squeue", "scancel", "sinfo")
    DIRECTIVE = "#SBATCH"
    OWN_DIRECTIVES = ("--array", "-a", "--job-name", "-J", "--output", "-o", "--error", "-e", "--export")
    STATES = STATES
    ARRAY_INDEX = "${SLURM_ARRAY_TASK_ID:-0}"
    JOB_ID = "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_JOB_ID:+_$SLURM_ARRAY_TASK_ID}"  # 7_0 or 7
    INHERITED_ENV = ("SLURM_ARRAY_",)
    opts: SlurmOptions  # what BatchBackend.__init__ sets from cfg.backend_options, parsed as ``Options``
    _warned_preempt = False

    def spec_option(self, spec: ServerSpec, key: str) -> str | None:
        """A per-server ``partition``/``account``/``qos``, else the [backend] table's site-wide one
        (the capacity collector asks too: its probe job and partitions are the specs')."""
        value = getattr(spec.options, key)
        return getattr(self.opts, key) if value is None else value

    def partition_of(self, spec: ServerSpec, preemptible: bool) -> str:
        """Where its job runs: the preemptible partition for a harvest job, else the spec's own."""
        if preemptible and self.opts.preempt_partition:
            return self.opts.preempt_partition
        return self.spec_option(spec, "partition") or ""

    async def start(self) -> None:
        """A harvesting policy needs somewhere to put its preemptible jobs: refuse to start without."""
        o = self.opts
        if self.cfg.rules.policy in HARVESTING and not (o.preempt_partition or o.preempt_qos):
            raise ConfigError(
                "backend.preempt_partition",
                f"the {self.cfg.rules.policy} policy submits preemptible jobs: set [backend] "
                "preempt_partition and/or preempt_qos to the partition or QOS others may preempt",
            )
        await super().start()

    async def check(self, specs: Sequence[ServerSpec]) -> None:
        """SLURM answers ``sinfo`` and each spec's partition (its own, else the site default) exists."""
        rc, out, err = await self.run("sinfo", "-a", "-h", "-o", "%R")
        if rc != 0:
            raise ConfigError("balancer.scheduler", f"slurm: sinfo failed: {self.error_text(err)}")
        partitions = set(out.split())
        part = self.opts.preempt_partition
        if part is not None and part not in partitions:
            known = ", ".join(sorted(partitions)) or "none"
            raise ConfigError("backend.preempt_partition", f"no SLURM partition {part!r} (known: {known})")
        for spec in specs:
            part = self.spec_option(spec, "partition")
            if part is not None and part not in partitions:
                known = ", ".join(sorted(partitions)) or "none"
                raise ConfigError(
                    f"servers.{spec.name}.partition", f"no SLURM partition {part!r} (known: {known})"
                )

    def preempt_argv(self, spec: ServerSpec) -> list[str]:
        """What makes a job preemptible: the preemptible partition and/or QOS in place of the
        spec's own, and ``--time-min`` (at most the job's limit). ``--no-requeue`` is on every job:
        a preempted job is cancelled and never comes back as the same server."""
        o = self.opts
        argv = [f"--partition={o.preempt_partition}"] if o.preempt_partition else []
        argv += [f"--qos={o.preempt_qos}"] if o.preempt_qos else []
        if o.time_min is not None:
            limit = parse_time_limit(spec.resources.time_limit)
            argv.append(f"--time-min={format_time_limit(min(o.time_min, limit or o.time_min))}")
        return argv

    def submit_argv(
        self, spec: ServerSpec, n_jobs: int, script: Path, log_dir: Path, preemptible: bool = False
    ) -> list[str]:
        per = spec.options.servers_per_job
        res = spec.resources
        script_opts = {directive_option(d, self.DIRECTIVE) for d in self.directives(spec)}
        out = log_dir / ("slurm-%A_%a.out" if n_jobs > 1 else "slurm-%j.out")
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={self.job_names[spec.name]}",
            f"--output={out}",
            f"--error={out}",
            "--export=ALL",
            "--no-requeue",
            f"--chdir={spec.cwd or os.getcwd()}",
        ]
        if n_jobs > 1:
            argv.append(f"--array=0-{n_jobs - 1}")
        preempt = self.preempt_argv(spec) if preemptible else []
        if preemptible and not preempt and not self._warned_preempt:
            self._warned_preempt = True  # a reload switched to harvest: start() could not refuse it
            log.warning("slurm: preemptible jobs asked for, but no [backend] preempt_partition/qos set")
        for opt in ("partition", "account", "qos"):
            v = self.spec_option(spec, opt)
            if v and not any(a.startswith(f"--{opt}=") for a in preempt):
                argv.append(f"--{opt}={v}")
        argv += preempt
        # The config's resources win, but defaults (cpus = 1, no memory, ...) leave a script's own.
        if res.cpus != 1 or per > 1 or not script_opts & {"--cpus-per-task", "-c"}:
            argv.append(f"--cpus-per-task={res.cpus * per}")
        if res.memory:
            argv.append(f"--mem={scale_memory(res.memory, per)}")
        if res.gpus:
            argv.append(f"--gpus={res.gpus * per}")
        if res.time_limit:
            argv.append(f"--time={res.time_limit}")
        return [*argv, *self.opts.sbatch_args, *spec.options.sbatch_args, str(script)]

    def parse_job_id(self, stdout: str) -> str:
        return stdout.strip().split(";")[0]

    def status_argv(self, job_names: list[str]) -> list[str]:
        return ["squeue", "-h", "-r", "-t", "all", f"--name={','.join(job_names)}", "-o", SQUEUE_FORMAT]

    def parse_status(self, stdout: str) -> Iterable[StatusRow]:
        for line in stdout.splitlines():
            row = line.split("|")
            if len(row) != _FIELDS:
                continue
            task = "" if row[2] in ("N/A", "") else row[2]
            end = parse_slurm_time(row[7]) if row[4] == "RUNNING" else None
            yield StatusRow((row[1], task), row[4], reason=row[5], end_wall=end, nodes=row[10])

    def cancel_argv(self, job_ids: list[str]) -> list[str]:
        return ["scancel", "--quiet", *job_ids]

    def never_starts(self, row: StatusRow) -> str | None:
        if row.reason not in self.opts.fail_pending_reasons:
            return None
        hint = _REASON_HINTS.get(row.reason)
        return f"SLURM pending reason {row.reason}" + (f" ({hint})" if hint else "")

    def error_text(self, stderr: str) -> str:
        """A SLURM command's complaint as one line: its ``error:`` lines, without the prefixes."""
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        prefix = re.compile(r"^(sbatch|squeue|scancel|sinfo):\s*(error:\s*)?")
        errs = [prefix.sub("", ln) for ln in lines if "error" in ln]
        return "; ".join(errs or lines[-2:]) or "no message"
