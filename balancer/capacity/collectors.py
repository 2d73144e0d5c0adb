"""Which collector a run uses: the one of its scheduler, told what the backend knows (job names,
our job size, the partition, the HQ server). It may be made before ``backend.start()``: SLURM's
follows the job names as the backend gives them, HyperQueue's is chosen at its first sample, once
the backend has resolved its server (embedded, or a server the ``hq`` binary can list)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from balancer.capacity.collect import CollectError, Collector
from balancer.capacity.collect_hq import HqBackendCollector, HqCollector
from balancer.capacity.collect_local import LocalCollector
from balancer.capacity.collect_slurm import ProbeJob, SlurmCollector
from balancer.capacity.sample import CapacitySample
from balancer.config.schema import BalancerConfig

if TYPE_CHECKING:
    from balancer.backends.base import Backend
    from balancer.backends.batch.slurm import SlurmBackend
    from balancer.backends.hyperqueue.backend import HyperQueueBackend


class _Unavailable:
    """A collector that cannot work here; every sample says why (once per pass, in one line)."""

    def __init__(self, source: str, why: str) -> None:
        self.source = source
        self.why = why

    async def sample(self) -> list[CapacitySample]:
        raise CollectError(f"{self.source}: {self.why}")


class _Deferred:
    """A collector chosen at its first sample, when what decides it is known."""

    def __init__(self, source: str, make: Callable[[], Collector]) -> None:
        self.source = source
        self._make = make
        self._real: Collector | None = None

    async def sample(self) -> list[CapacitySample]:
        if self._real is None:
            self._real = self._make()
        return await self._real.sample()


def slurm_partitions(cfg: BalancerConfig, backend: SlurmBackend) -> tuple[str, ...]:
    """``[forecast] partition``, else the partitions our specs submit to; () for the default one."""
    if cfg.forecast.partition:
        return (cfg.forecast.partition,)
    parts = {backend.spec_option(s, "partition") for s in cfg.servers}
    return tuple(sorted(p for p in parts if p))


def _test_job(cfg: BalancerConfig, backend: SlurmBackend) -> ProbeJob | None:
    """The first spec's job size, account and QoS, for ``sbatch --test-only``."""
    if not cfg.servers:
        return None
    spec = cfg.servers[0]
    res = spec.resources
    args = []
    for key in ("account", "qos"):
        value = backend.spec_option(spec, key)
        if value:
            args.append(f"--{key}={value}")
    return ProbeJob(res.cpus, res.time_limit, res.gpus, tuple(args))


def make_collector(cfg: BalancerConfig, backend: Backend | None) -> Collector:
    """The collector for ``cfg.scheduler`` ("local", "slurm", "hyperqueue"), told what its backend
    knows (a backend of that scheduler: the registry builds it from the same configuration)."""
    if cfg.scheduler == "slurm":
        from balancer.backends.batch.slurm import SlurmBackend

        assert isinstance(backend, SlurmBackend), backend
        test_job = _test_job(cfg, backend)
        partitions = slurm_partitions(cfg, backend)
        return SlurmCollector(
            partitions=partitions,
            our_names=backend.job_names.values(),  # a live view: filled by backend.start()
            test_job=test_job,
            default_only=not partitions,
            timeout_s=backend.opts.command_timeout_s,
        )
    if cfg.scheduler == "hyperqueue":
        from balancer.backends.hyperqueue.backend import HyperQueueBackend

        assert isinstance(backend, HyperQueueBackend), backend
        hq = backend
        return _Deferred("hyperqueue", lambda: _hq_collector(hq))
    return LocalCollector()


def _hq_collector(backend: HyperQueueBackend) -> Collector:
    server = backend.server
    if server.server_dir is None:  # not started (yet): ask again next time
        raise CollectError("hyperqueue: the backend has not started its server yet")
    if server.mode == "embedded":
        return HqBackendCollector(backend)
    hq_bin = server.hq_bin or shutil.which(backend.opts.hq)
    if hq_bin is None:
        return _Unavailable(
            "hyperqueue", f"listing workers needs the hq binary ({backend.opts.hq!r} is not on PATH)"
        )
    cpus = [r.cpus for r in backend.requests.values() if isinstance(r.cpus, int)]
    return HqCollector(str(server.server_dir), hq_bin, float(min(cpus)) if cpus else 1.0)
