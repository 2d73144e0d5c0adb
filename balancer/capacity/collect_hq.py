"""HyperQueue capacity: workers and their CPUs, tasks waiting and running, allocation queues.

Two ways in, because the Python package (``hyperqueue`` 0.27) can submit but cannot list workers:

* ``HqCollector``, where the ``hq`` binary is on PATH: ``hq --output-mode=json worker list``
  (each worker's resources), ``job list`` (running/waiting task counters per job) and ``alloc
  list`` + ``alloc info`` (queue states, allocations still queued in SLURM/PBS). HQ's JSON gives no
  free resources per worker, so busy CPUs are running tasks times ``cpus_per_task``: the tasks on a
  user's HQ server are that user's, ours, all of one size.
* ``HqBackendCollector``, for the embedded cluster (no binary): its size is the configuration
  (``workers`` x ``cpus_per_worker``) and the only tasks in it are the backend's own jobs.

Busy CPUs here are our own tasks; the monitor adds them back as ``ours_cpus`` (from the pool), so
capacity = idle + ours is the workers' CPUs: on HyperQueue every worker is ours.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from balancer.backends.commands import run_command
from balancer.capacity.collect import COMMAND_TIMEOUT_S, CollectError
from balancer.capacity.sample import CapacitySample


def _resource_size(res: dict[str, Any]) -> float:
    """Units of one worker resource in HQ's JSON (kinds ``list``, ``range``, ``groups``, ``sum``)."""
    kind = res.get("kind")
    if kind == "list":
        return float(len(res.get("values") or ()))
    if kind == "range":
        return float(int(res.get("end", -1)) - int(res.get("start", 0)) + 1)
    if kind == "groups":
        return float(sum(len(g) for g in res.get("groups") or ()))
    if kind == "sum":
        return float(res.get("size") or 0)
    return 0.0


def parse_workers(doc: Any) -> tuple[int, float, float]:
    """``worker list`` JSON -> (live workers, their CPUs, their GPUs)."""
    workers, cpus, gpus = 0, 0.0, 0.0
    for w in doc if isinstance(doc, list) else ():
        if not isinstance(w, dict) or w.get("ended"):
            continue
        workers += 1
        resources = ((w.get("configuration") or {}).get("resources") or {}).get("resources") or ()
        for res in resources:
            name = str(res.get("name", ""))
            if name == "cpus":
                cpus += _resource_size(res)
            elif name.startswith("gpus"):
                gpus += _resource_size(res)
    return workers, cpus, gpus


def parse_jobs(doc: Any) -> tuple[int, int]:
    """``job list`` JSON -> (running tasks, waiting tasks)."""
    running = waiting = 0
    for j in doc if isinstance(doc, list) else ():
        stats = j.get("task_stats") if isinstance(j, dict) else None
        if isinstance(stats, dict):
            running += int(stats.get("running") or 0)
            waiting += int(stats.get("waiting") or 0)
    return running, waiting


def parse_allocations(doc: Any) -> int:
    """``alloc info`` JSON -> allocations still queued in the batch scheduler."""
    return sum(
        1
        for a in (doc if isinstance(doc, list) else ())
        if isinstance(a, dict) and a.get("status") == "queued"
    )


class HqCollector:
    """Samples an HQ server through the ``hq`` binary (one sample, partition ``""``)."""

    source = "hyperqueue"

    def __init__(
        self,
        server_dir: str,
        hq_bin: str = "hq",
        cpus_per_task: float = 1.0,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self.server_dir = server_dir
        self.hq_bin = hq_bin
        self.cpus_per_task = cpus_per_task
        self.timeout_s = timeout_s

    async def _json(self, *args: str) -> Any:
        argv = [self.hq_bin, "--server-dir", self.server_dir, "--output-mode=json", *args]
        rc, out, err = await run_command(argv, self.timeout_s)
        if rc != 0:
            lines = [ln.strip() for ln in (err or out).splitlines() if ln.strip()]
            raise CollectError(
                f"hyperqueue: hq {' '.join(args)} failed ({rc}): {lines[-1] if lines else '?'}"
            )
        try:
            return json.loads(out)
        except ValueError:
            raise CollectError(f"hyperqueue: hq {' '.join(args)} printed no JSON") from None

    async def sample(self) -> list[CapacitySample]:
        t = time.time()
        workers_doc, jobs_doc, queues_doc = await asyncio.gather(
            self._json("worker", "list"), self._json("job", "list"), self._json("alloc", "list")
        )
        workers, cpus, gpus = parse_workers(workers_doc)
        running, waiting = parse_jobs(jobs_doc)
        queues = [q for q in queues_doc if isinstance(q, dict)] if isinstance(queues_doc, list) else []
        allocs = await asyncio.gather(*(self._json("alloc", "info", str(q.get("id"))) for q in queues))
        busy = min(cpus, running * self.cpus_per_task)
        return [
            CapacitySample(
                t=t,
                source=self.source,
                partition="",
                total_cpus=cpus,
                idle_cpus=cpus - busy,
                alloc_cpus=busy,
                total_gpus=gpus or None,
                pending_jobs=waiting,
                pending_cpus=waiting * self.cpus_per_task,
                our_pending=sum(parse_allocations(a) for a in allocs),
                workers=workers,
                alloc_queues=len(queues),
            )
        ]


class HqBackendCollector:
    """Samples the embedded HQ cluster from what its backend knows: its size and its own jobs."""

    source = "hyperqueue"

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def _cpus_per_task(self) -> float:
        """Our tasks' size; where specs differ, the smallest (busy CPUs are then a lower bound)."""
        sizes = [r.cpus for r in self.backend.requests.values() if isinstance(r.cpus, int)]
        return float(min(sizes)) if sizes else 1.0

    async def sample(self) -> list[CapacitySample]:
        opts = self.backend.opts
        cluster = self.backend.server.cluster
        info: dict[str, Any] = dict(cluster.info) if cluster is not None else {}
        workers = int(info.get("workers", opts.workers))
        total = float(workers * int(info.get("cpus", opts.cpus_per_worker)))
        jobs = list(self.backend.jobs.values())
        running = sum(1 for j in jobs if j.started)
        per = self._cpus_per_task()
        busy = min(total, running * per)
        return [
            CapacitySample(
                t=time.time(),
                source=self.source,
                partition="",
                total_cpus=total,
                idle_cpus=total - busy,
                alloc_cpus=busy,
                pending_jobs=len(jobs) - running,
                pending_cpus=(len(jobs) - running) * per,
                our_pending=len(jobs) - running,
                workers=workers,
            )
        ]
