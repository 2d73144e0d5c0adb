"""The backend interface: submit launchers, cancel them, report what happened to them.

A backend knows nothing about calls or routing. The pool asks it to ``submit`` launches (several
at once, so a cluster backend can use one job array) and to ``cancel`` one (the second line after
the lease: the launcher normally stops its server when the balancer tells it to). The backend
reports through ``BackendEvents``: a job got an id / started, a job ended, a job will hit its time
limit at a known time. Registration itself comes from the launcher over HTTP, not from here.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import BalancerConfig, ServerSpec

# Environment the launcher reads (set by the backend around the launcher process).
ENV_URL = "UMBRIDGE_BALANCER_URL"
ENV_TOKEN = "UMBRIDGE_BALANCER_TOKEN"
ENV_SERVER_ID = "UMBRIDGE_BALANCER_SERVER_ID"  # one id, or a comma list indexed by array task id
ENV_LEASE = "UMBRIDGE_BALANCER_LEASE_S"
ENV_STARTUP = "UMBRIDGE_BALANCER_STARTUP_TIMEOUT_S"
ENV_CONCURRENCY = "UMBRIDGE_SERVER_CONCURRENCY"  # tells the model how many calls run at once


@dataclass(frozen=True)
class Launch:
    """One model server to start: its id, its spec and the environment for its launcher."""

    server_id: str
    spec: ServerSpec
    env: dict[str, str]  # registration variables + the spec's own env
    log_dir: Path  # stdout/stderr of launcher and server go here, never into the cwd


def launcher_argv(server_command: list[str], python: str | None = None) -> list[str]:
    """The command line that runs ``server_command`` under the launcher."""
    return [python or sys.executable, "-m", "balancer.launch", "--", *server_command]


class BackendEvents(Protocol):
    """What a backend tells the pool. All calls are made from the event loop thread."""

    def job_started(self, server_id: str, job_id: str, host: str) -> None:
        """The job holding ``server_id`` exists (local: process spawned; slurm: running)."""

    def job_ended(self, server_id: str, reason: str, failed: bool) -> None:
        """The job is gone (exited, cancelled, failed, timed out); its server cannot serve."""

    def job_deadline(self, server_id: str, deadline_wall: float) -> None:
        """The job will be killed at ``deadline_wall`` (Unix seconds): drain and replace it."""


class _Unbound:
    """Reports of a backend nobody listens to yet fail loudly instead of vanishing."""

    def __getattr__(self, name: str) -> None:
        raise RuntimeError(f"backend reported {name} before bind()")


class Backend(ABC):
    name: str = "base"

    def __init__(self, cfg: BalancerConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.events: BackendEvents = _Unbound()

    def bind(self, events: BackendEvents) -> None:
        """Whom to report to (the pool); set once, before ``start``."""
        self.events = events

    async def start(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Prepare (connect to the scheduler, validate options). Raise ConfigError on bad config."""

    @abstractmethod
    async def submit(self, launches: list[Launch]) -> None:
        """Start these servers; all share one spec. Report failures through ``job_ended``."""

    @abstractmethod
    async def cancel(self, server_id: str) -> None:
        """Make sure the job of ``server_id`` ends; idempotent, fine for an already gone job."""

    @abstractmethod
    async def close(self) -> None:
        """End every job still alive and wait until they are gone."""
