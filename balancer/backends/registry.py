"""The backend registry: a scheduler name -> the module and class implementing it.

Adding a scheduler is one module plus one line here (README, "Adding a scheduler"). Modules are
imported when a configuration names them, so the local default needs none of the others'
dependencies; this module imports no backend at load time, so ``config.parse`` can use the registry.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.backends.base import Backend
    from balancer.config.schema import BalancerConfig

BACKENDS: dict[str, str] = {
    "local": "local:LocalBackend",
    "slurm": "batch.slurm:SlurmBackend",
    "hyperqueue": "hyperqueue.backend:HyperQueueBackend",
}
SCHEDULERS = tuple(BACKENDS)


def backend_class(scheduler: str) -> type[Backend]:
    module, cls = BACKENDS[scheduler].split(":")
    return getattr(importlib.import_module(f"balancer.backends.{module}"), cls)


def make_backend(cfg: BalancerConfig, run_dir: Path) -> Backend:
    return backend_class(cfg.scheduler)(cfg, run_dir)
