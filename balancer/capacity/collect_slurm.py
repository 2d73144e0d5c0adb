"""SLURM capacity: what ``sinfo`` and ``squeue`` say about each partition, plus the scheduler's own
guess of when a job of ours would start.

One pass is two commands run at once (a third for GPUs where gres is configured):

* ``sinfo -o '%P|%C|%D|%G'``: allocated/idle/other/total CPUs per partition (lines summed, since
  sinfo splits a partition by node state and gres); the default partition is marked ``*``.
* ``squeue -r -t PD -o '%P|%C|%S|%j'``: everybody's pending jobs (array tasks one by one) and the
  CPUs they ask for; our own jobs, told apart by the names the backend gives them (fixed per run),
  bring the backfill scheduler's expected start ``%S``.
* ``sbatch --test-only`` for a job of our size, in a partition where no pending job of ours has an
  expected start yet (backfill fills ``%S`` only every ``bf_interval``, 30 s by default, and not at
  all while we have nothing queued): the same will-run test, answered at once.

sinfo counts our own running jobs as allocated; the monitor adds them back (``ours_cpus``, from the
pool), so what is stored is capacity = idle + ours.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from balancer.backends.batch.slurm import parse_slurm_time
from balancer.backends.commands import run_command
from balancer.capacity.collect import COMMAND_TIMEOUT_S, CollectError
from balancer.capacity.sample import CapacitySample

_TEST_ONLY_START = re.compile(r"to start at (\S+)")


@dataclass(frozen=True)
class ProbeJob:
    """The size of one of our jobs, for ``sbatch --test-only``."""

    cpus: int = 1
    time_limit: str | None = None  # SLURM syntax; None: the partition's default
    gpus: int = 0
    args: tuple[str, ...] = ()  # e.g. --account=..., --qos=...: they change where and when it may run


@dataclass
class _Partition:
    alloc: float = 0.0
    idle: float = 0.0
    other: float = 0.0
    total: float = 0.0
    gpus: float | None = None
    idle_gpus: float | None = None
    pending_jobs: int = 0
    pending_cpus: float = 0.0
    our_pending: int = 0
    our_start: float | None = None  # earliest expected start of our pending jobs


def gres_gpus(text: str) -> float:
    """GPUs in a gres string (``gpu:a100:4(S:0-1),mps:100``, ``gpu:2(IDX:0,1)``); 0 for ``(null)``."""
    n = 0.0
    for entry in re.sub(r"\([^)]*\)", "", text).split(","):
        parts = entry.strip().split(":")
        if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit():
            n += int(parts[-1])
    return n


def parse_sinfo(out: str) -> tuple[dict[str, _Partition], str | None]:
    """``%P|%C|%D|%G`` lines -> partitions (CPUs summed over lines), and the default partition."""
    parts: dict[str, _Partition] = {}
    default = None
    for line in out.splitlines():
        row = line.strip().split("|")
        if len(row) != 4:
            continue
        name, cpus, nodes, gres = row
        if name.endswith("*"):
            name = name[:-1]
            default = name
        try:
            a, i, o, t = (float(x) for x in cpus.split("/"))
            n_nodes = int(nodes)
        except ValueError:
            continue
        p = parts.setdefault(name, _Partition())
        p.alloc, p.idle, p.other, p.total = p.alloc + a, p.idle + i, p.other + o, p.total + t
        gpus = gres_gpus(gres) * n_nodes
        if gpus:
            p.gpus = (p.gpus or 0.0) + gpus
    return parts, default


def parse_node_gres(out: str, parts: dict[str, _Partition]) -> None:
    """``Partition|Gres|GresUsed|State`` per node -> idle GPUs of each partition (usable nodes only)."""
    for line in out.splitlines():
        row = [x.strip() for x in line.split("|")]
        if len(row) < 4 or row[0].rstrip("*") not in parts:
            continue
        p = parts[row[0].rstrip("*")]
        usable = row[3].rstrip("*~#!%$@^-").lower() in ("idle", "mixed", "allocated", "completing")
        free = gres_gpus(row[1]) - gres_gpus(row[2]) if usable else 0.0
        p.idle_gpus = (p.idle_gpus or 0.0) + max(free, 0.0)


def parse_pending(out: str, parts: dict[str, _Partition], our_names: frozenset[str]) -> None:
    """``%P|%C|%S|%j`` lines of pending jobs -> counts per partition (a job queued in several
    partitions counts in each), our own jobs and their earliest expected start."""
    for line in out.splitlines():
        row = line.split("|", 3)
        if len(row) != 4:
            continue
        names, cpus, start, job_name = row
        try:
            n_cpus = float(cpus)
        except ValueError:
            continue
        for name in names.split(","):
            p = parts.get(name)
            if p is None:
                continue
            p.pending_jobs += 1
            p.pending_cpus += n_cpus
            if job_name.strip() in our_names:
                p.our_pending += 1
                t = parse_slurm_time(start)
                if t is not None and (p.our_start is None or t < p.our_start):
                    p.our_start = t


class SlurmCollector:
    """Samples SLURM partitions: all, the ``partitions`` named, or the default one only."""

    source = "slurm"

    def __init__(
        self,
        partitions: Sequence[str] = (),
        our_names: Collection[str] = (),
        test_job: ProbeJob | None = None,
        default_only: bool = False,
        timeout_s: float = COMMAND_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.partitions = tuple(partitions)
        self.our_names = our_names  # may be a live view (the backend's job names, filled at its start)
        self.test_job = test_job
        self.default_only = default_only and not self.partitions
        self.timeout_s = timeout_s
        self.env = dict(env) if env is not None else None

    async def _run(self, *argv: str) -> str:
        rc, out, err = await run_command(list(argv), self.timeout_s, self.env)
        if rc != 0:
            lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
            raise CollectError(f"slurm: {argv[0]} failed ({rc}): {lines[-1] if lines else 'no message'}")
        return out

    async def sample(self) -> list[CapacitySample]:
        where = [f"--partition={','.join(self.partitions)}"] if self.partitions else []
        t = time.time()
        sinfo, squeue = await asyncio.gather(
            self._run("sinfo", "-h", *where, "-o", "%P|%C|%D|%G"),
            self._run("squeue", "-h", "-r", "-t", "PD", *where, "-o", "%P|%C|%S|%j"),
        )
        parts, default = parse_sinfo(sinfo)
        if self.default_only:
            parts = {default: parts[default]} if default in parts else {}
        if not parts:
            which = ", ".join(self.partitions) or ("the default partition" if self.default_only else "any")
            raise CollectError(f"slurm: sinfo shows no partition ({which})")
        parse_pending(squeue, parts, frozenset(self.our_names))
        if any(p.gpus for p in parts.values()):
            nodes = await self._run(
                "sinfo", "-h", "-N", *where, "-O", "Partition:|,Gres:|,GresUsed:|,StateLong:"
            )
            parse_node_gres(nodes, parts)
        waits = await asyncio.gather(*(self._expected_start(name, p) for name, p in parts.items()))
        return [
            CapacitySample(
                t=t,
                source=self.source,
                partition=name,
                total_cpus=p.total,
                idle_cpus=p.idle,
                alloc_cpus=p.alloc,
                other_cpus=p.other,
                total_gpus=p.gpus,
                idle_gpus=p.idle_gpus if p.gpus else None,
                pending_jobs=p.pending_jobs,
                pending_cpus=p.pending_cpus,
                our_pending=p.our_pending,
                expected_wait_s=None if start is None else max(0.0, start - t),
            )
            for (name, p), start in zip(parts.items(), waits, strict=True)
        ]

    async def _expected_start(self, name: str, p: _Partition) -> float | None:
        """Our pending jobs' expected start, else the will-run test's answer for a job of our size."""
        if p.our_start is not None or self.test_job is None:
            return p.our_start
        job = self.test_job
        argv = ["sbatch", "--test-only", f"--partition={name}", f"--cpus-per-task={job.cpus}"]
        if job.time_limit:
            argv.append(f"--time={job.time_limit}")
        if job.gpus:
            argv.append(f"--gpus={job.gpus}")
        rc, out, err = await run_command([*argv, *job.args, "--wrap", "true"], self.timeout_s, self.env)
        m = _TEST_ONLY_START.search(err + out) if rc == 0 else None
        return parse_slurm_time(m.group(1)) if m else None  # refused (too big, ...): no estimate
