"""Backends start model servers (each wrapped in the launcher) somewhere and report their fate.

``make_backend`` picks one by the configured scheduler name; cluster backends import lazily so
the local default needs none of their dependencies.
"""

from __future__ import annotations

from pathlib import Path

from ..config import BalancerConfig, ConfigError
from .base import Backend


def make_backend(cfg: BalancerConfig, run_dir: Path) -> Backend:
    if cfg.scheduler == "local":
        from .local import LocalBackend

        return LocalBackend(cfg, run_dir)
    if cfg.scheduler == "slurm":
        try:
            from .slurm import SlurmBackend
        except ImportError:
            raise ConfigError("balancer.scheduler", "the slurm backend is not available yet") from None
        return SlurmBackend(cfg, run_dir)
    if cfg.scheduler == "hyperqueue":
        try:
            from .hyperqueue import HyperQueueBackend
        except ImportError:
            raise ConfigError("balancer.scheduler", "the hyperqueue backend is not available yet") from None
        return HyperQueueBackend(cfg, run_dir)
    raise ConfigError("balancer.scheduler", f"unknown scheduler {cfg.scheduler!r}")
