"""The backend interface: submit launchers, cancel them, report what happened to them.

A backend knows nothing about calls or routing. The pool asks it to ``submit`` launches (several
at once, so a cluster backend can use one job array) and to ``cancel`` one (the second line after
the lease: the launcher normally stops its server when the balancer tells it to). The backend
reports through ``BackendEvents``: a job got an id / started, a job ended, a job will hit its time
limit at a known time. Registration itself comes from the launcher over HTTP, not from here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from balancer.backends.options import BackendOptions, ServerOptions
from balancer.config.schema import BalancerConfig, ServerSpec


@dataclass(frozen=True)
class Launch:
    """One model server to start: its id, its spec and the environment for its launcher."""

    server_id: str
    spec: ServerSpec
    env: dict[str, str]  # registration variables + the spec's own env
    log_dir: Path  # stdout/stderr of launcher and server go here, never into the cwd
    time_limit_s: float | None = None  # fitted to the predicted idle window; None: the spec's own
    preemptible: bool = False  # submit to the backend's preemptible partition or QOS


class BackendEvents(Protocol):
    """What a backend tells the pool. All calls are made from the event loop thread."""

    def job_deferred(self, server_id: str, reason: str) -> None:
        """The start waits for cores or GPUs this machine's own servers hold (local backend)."""

    def job_started(self, server_id: str, job_id: str, host: str) -> None:
        """The job holding ``server_id`` exists (local: process spawned; slurm: running)."""

    def job_ended(self, server_id: str, reason: str, failed: bool) -> None:
        """The job is gone (exited, cancelled, failed, timed out); its server cannot serve."""

    def job_deadline(self, server_id: str, deadline_wall: float) -> None:
        """The job will be killed at ``deadline_wall`` (Unix seconds): drain and replace it."""

    def job_preempted(self, server_id: str, reason: str) -> None:
        """The scheduler preempted the job for another one: a lost server, never a failed start.
        ``job_ended(..., failed=False)`` follows when the job is gone."""


class Submissions:
    """Servers whose submission is under way, and cancels that arrived meanwhile.

    A cancel can come while the submit command still runs (the scaler gave up, or shutdown): there
    is no job id to cancel yet, so it is remembered and applied once the submission returns."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self._early: set[str] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def begin(self, ids: list[str]) -> None:
        self.running.update(ids)
        self.idle.clear()

    def end(self, ids: list[str]) -> list[str]:
        """The submission of ``ids`` returned; the ones cancelled meanwhile (to cancel now)."""
        self.running.difference_update(ids)
        if not self.running:
            self.idle.set()
        early = [sid for sid in ids if sid in self._early]
        self._early.difference_update(ids)
        return early

    def defer_cancel(self, server_id: str) -> None:
        """A cancel of a server with no job yet: kept if it is being submitted, else moot."""
        if server_id in self.running:
            self._early.add(server_id)


class _Unbound:
    """Reports of a backend nobody listens to yet fail loudly instead of vanishing."""

    def __getattr__(self, name: str) -> NoReturn:  # NoReturn: fits every BackendEvents method
        raise RuntimeError(f"backend reported {name} before bind()")


class Backend(ABC):
    """One scheduler. ``Options``/``ServerOptions`` declare its ``[backend]`` and per-server keys;
    the configuration is validated against them when it is loaded."""

    name: str = "base"
    # Where the reference balancer's job scripts live for this scheduler (``load-balancer``).
    REFERENCE_SCRIPTS: str = "hq_scripts"
    Options: type[BackendOptions] = BackendOptions
    ServerOptions: type[ServerOptions] = ServerOptions

    def __init__(self, cfg: BalancerConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.events: BackendEvents = _Unbound()

    def bind(self, events: BackendEvents) -> None:
        """Whom to report to (the pool); set once, before ``start``."""
        self.events = events

    def use_workload(self, workload_of: Callable[[str], str | None]) -> None:  # noqa: B027 - optional
        """Where to ask a spec's workload class ("cpu", "gpu", ...; None: not known yet), before
        ``start``. Only a backend that places servers on cores itself (local) asks."""

    def partition_of(self, spec: ServerSpec, preemptible: bool) -> str:
        """The partition whose capacity a server of ``spec`` counts against ("": the whole machine,
        or the default partition); the capacity collectors report per partition."""
        return ""

    def server_resources(self, server_id: str) -> dict[str, list[Any]] | None:
        """The cores and GPUs this backend itself gave ``server_id`` (local); None: the scheduler's."""
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Prepare (connect to the scheduler, validate options). Raise ConfigError on bad config;
        the per-spec part of that validation is ``check_specs``, which ``start`` calls."""

    async def check_specs(self, specs: Sequence[ServerSpec]) -> None:  # noqa: B027 - optional hook
        """Raise ConfigError (``servers.<name>.<field>``) for a spec this backend could never start.
        Called by ``start`` for every spec, and by a reload for its new and changed specs before
        anything is applied: it changes nothing, so a rejected reload leaves the backend as it was."""

    def reconfigure(self, cfg: BalancerConfig) -> None:
        """Take a reloaded configuration (its specs already passed ``check_specs``): later submits
        use its live settings (``delay_ms``, ...). ``[backend]`` options are fixed at start: a
        backend keeps the ones it started with. Each launch carries its own spec (``Launch.spec``),
        so nothing here may stand in for what a launch asks for."""
        self.cfg = dataclasses.replace(cfg, backend_options=self.cfg.backend_options)

    @abstractmethod
    async def submit(self, launches: list[Launch]) -> None:
        """Start these servers; all share one spec. Report failures through ``job_ended``."""

    @abstractmethod
    async def cancel(self, server_id: str) -> None:
        """Make sure the job of ``server_id`` ends; idempotent, fine for an already gone job."""

    async def adopt(self, server_id: str, job: str, doc: dict[str, Any]) -> bool:
        """Take over the job of a server a previous balancer with this run directory started (its
        launcher re-registered after a restart); False: this backend cannot, the server stops."""
        return False

    @abstractmethod
    async def close(self) -> None:
        """End every job still alive and wait until they are gone."""
