"""Backends start model servers (each wrapped in the launcher) somewhere and report their fate.

``BACKENDS`` is the registry: a scheduler name -> the module and class implementing it. Adding a
scheduler is one module plus one line here (README, "Adding a scheduler"). Modules are imported
when a configuration names them, so the local default needs none of the others' dependencies;
this package imports nothing at load time, so ``config`` can use the registry.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.backends.base import Backend
    from balancer.config.load import BalancerConfig

BACKENDS: dict[str, str] = {
    "local": "local:LocalBackend",
    "slurm": "batch.slurm:SlurmBackend",
    "hyperqueue": "hyperqueue.backend:HyperQueueBackend",
}
SCHEDULERS = tuple(BACKENDS)


def backend_class(scheduler: str) -> type[Backend]:
    module, cls = BACKENDS[scheduler].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)  # type: ignore[no-any-return]


def make_backend(cfg: BalancerConfig, run_dir: Path) -> Backend:
    return backend_class(cfg.scheduler)(cfg, run_dir)
