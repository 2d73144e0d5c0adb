"""The scheduler-independent part of a batch-scheduler backend (SLURM today; PBS, LSF, ... tomorrow).

A scheduler subclasses ``BatchBackend`` and fills a few hooks (see README, "Adding a scheduler"):
``directives`` prefix and the shell expressions for its array index and job id, ``submit_argv`` and
``parse_job_id``, ``status_argv`` and ``parse_status`` with a ``STATES`` table from its native job
states to ``JobState``, and ``cancel_argv``. Everything else is here:

* **Submission.** A ``submit`` of k servers is one submission of a job array of ceil(k / m) tasks
  (m = ``servers_per_job``; a plain job for one task), so a burst costs the scheduler one RPC;
  what each job runs comes from ``jobscript.py``.
* **States.** One status command for all our jobs per poll (``poll_interval_s``; ``fast_poll_s``
  while a job is fresh or being cancelled). Running -> ``job_started``, its end time ->
  ``job_deadline``; a finished or vanished job -> ``job_ended``. A preemptible job whose end the
  scheduler brings forward (a preemption's grace time) or that ends preempted -> ``job_preempted``
  (once), and ``job_ended`` as not failed when it is gone. A job pending longer than
  ``pending_timeout_s`` (off by default), or for a reason that never resolves, is cancelled and
  reported failed.
* **Ending.** Cancels of one event-loop turn make one cancel command; a cancel that arrives while
  the submission is still running is applied when it returns. ``close`` cancels every job still
  alive and waits, bounded, until the scheduler shows none.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import shutil
import time
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from balancer.backends.base import Backend, Launch, Submissions
from balancer.backends.batch.jobscript import JobScripts, read_directives
from balancer.backends.commands import run_command
from balancer.backends.options import BatchOptions, BatchServerOptions
from balancer.backends.states import TERMINAL, JobState
from balancer.config.schema import BalancerConfig, ConfigError, ServerSpec
from balancer.units import format_time_limit

log = logging.getLogger(__name__)

FRESH_S = 30.0  # a job this young that has not started yet is polled at the fast rate
VANISH_GRACE_S = 10.0  # a job never seen by the scheduler this long after submission counts as gone
CLOSE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class StatusRow:
    """One job (or array task) in the scheduler's status output."""

    key: tuple[str, str]  # (job id, array task id or "")
    native: str  # the scheduler's own state name
    reason: str = ""  # why it is pending or ended, if the scheduler says
    end_wall: float | None = None  # when it will be killed (running) in Unix seconds
    nodes: str = ""


@dataclass
class _Job:
    """One batch job (or array task) and the servers it hosts."""

    key: tuple[str, str]
    servers: list[str]
    spec: str
    submitted_m: float
    state: str = "SUBMITTED"  # the scheduler's own name, for messages
    seen: bool = False
    started: bool = False
    deadline: float | None = None
    ended: bool = False
    cancelled: set[str] = field(default_factory=set)
    cancel_sent: bool = False
    preemptible: bool = False  # submitted to the preemptible partition or QOS
    preempted: bool = False  # reported as preempted (its end brought forward, or its state)

    @property
    def id(self) -> str:
        """The id the scheduler's commands take: ``7_0`` for an array task, ``7`` for a plain job."""
        return f"{self.key[0]}_{self.key[1]}" if self.key[1] else self.key[0]


class BatchBackend(JobScripts, Backend):
    Options = BatchOptions
    ServerOptions = BatchServerOptions
    # -- hooks a scheduler fills -------------------------------------------------------------------
    TOOLS: ClassVar[tuple[str, ...]] = ()  # commands that must be on PATH
    STATES: ClassVar[dict[str, JobState]] = {}  # native state -> JobState

    async def check(self, specs: Sequence[ServerSpec]) -> None:
        """Validate what of ``specs`` needs the scheduler (partitions, queues); raise ConfigError.
        Called at start for every spec and on a reload for the new and changed ones."""

    @abstractmethod
    def submit_argv(
        self, spec: ServerSpec, n_jobs: int, script: Path, log_dir: Path, preemptible: bool = False
    ) -> list[str]:
        """The command line that submits ``script`` as ``n_jobs`` array tasks (a plain job for 1);
        ``preemptible``: to the scheduler's preemptible partition or QOS (``Launch.preemptible``)."""

    @abstractmethod
    def parse_job_id(self, stdout: str) -> str:
        """The job (array) id from the submit command's output."""

    @abstractmethod
    def status_argv(self, job_names: list[str]) -> list[str]:
        """The command line that lists every job (and array task) with these names, ended ones too."""

    @abstractmethod
    def parse_status(self, stdout: str) -> Iterable[StatusRow]:
        """The status command's output, one row per job or array task."""

    @abstractmethod
    def cancel_argv(self, job_ids: list[str]) -> list[str]:
        """The command line that cancels these jobs (array tasks as ``7_0``)."""

    def never_starts(self, row: StatusRow) -> str | None:
        """Why a pending job will never start as submitted (None: it may)."""
        return None

    def error_text(self, stderr: str) -> str:
        """A command's complaint as one line."""
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        return "; ".join(lines[-2:]) or "no message"

    # -- set-up ----------------------------------------------------------------------------------
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opts: BatchOptions = self.cfg.backend_options
        # Job names are fixed per run directory, so a balancer restarted there finds its jobs.
        self.run_id = hashlib.sha1(str(self.run_dir.resolve()).encode()).hexdigest()[:6]
        self.jobs: dict[tuple[str, str], _Job] = {}
        self.by_server: dict[str, _Job] = {}
        self.scripts: dict[str, Path] = {}
        self._script_texts: dict[str, str] = {}
        self._directives: dict[str, list[str]] = {}
        self.job_names: dict[str, str] = {}  # spec -> job name
        self._submissions = Submissions()
        self._submit_lock = asyncio.Lock()
        self._last_submit_m = -math.inf
        self._cancel_targets: set[str] = set()
        self._cancel_flush: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._poll_lock = asyncio.Lock()
        self._closing = False
        self._status_error: str | None = None
        self._bin: dict[str, str] = {}

    async def start(self) -> None:
        for tool in self.TOOLS:
            path = shutil.which(tool)
            if path is None:
                raise ConfigError(
                    "balancer.scheduler",
                    f"{self.name}: {tool} is not on PATH (load the {self.name} module first)",
                )
            self._bin[tool] = path
        await self.check_specs(self.cfg.servers)
        self._name_jobs(self.cfg.servers)
        self._poller = asyncio.create_task(self._poll_loop(), name=f"{self.name}-poll")

    async def check_specs(self, specs: Sequence[ServerSpec]) -> None:
        """Each job script readable (read afresh, not from the cache), then the scheduler's own
        ``check`` (partitions, ...). The tools found at start are not looked for again."""
        for spec in specs:
            if not spec.job_script:
                continue
            try:
                await asyncio.to_thread(read_directives, spec.job_script, self.DIRECTIVE)
            except OSError as exc:
                raise ConfigError(
                    f"servers.{spec.name}.job_script", f"cannot read: {exc.strerror or exc}"
                ) from None
        await self.check(specs)

    def _name_jobs(self, specs: Iterable[ServerSpec]) -> None:
        """A job name for each spec not named yet; a known spec keeps its name (its jobs, ended or
        not, are found by it; the names are fixed per run directory, so a restart finds them too)."""
        for spec in specs:
            self.job_names.setdefault(spec.name, f"{self.opts.job_name}-{spec.name}-{self.run_id}")

    def reconfigure(self, cfg: BalancerConfig) -> None:
        """New specs get job names; a removed spec keeps its name, so its jobs are still polled
        until they end. The cached directives are dropped (a job script changed in place is read
        again); the generated script follows each launch's spec (``_script``), and so do its
        resources (``submit_argv``): nothing cached at start stands in for them."""
        super().reconfigure(cfg)
        self._name_jobs(cfg.servers)
        self._directives.clear()

    async def run(self, tool: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Run one of the scheduler's commands off the event loop: (exit code, stdout, stderr)."""
        return await run_command([self._bin.get(tool, tool), *args], self.opts.command_timeout_s, env)

    # -- submit ----------------------------------------------------------------------------------
    async def submit(self, launches: list[Launch]) -> None:
        if not launches:
            return
        spec, log_dir = launches[0].spec, launches[0].log_dir
        if launches[0].time_limit_s is not None:  # one Start: one fitted limit for all its jobs
            limit = format_time_limit(launches[0].time_limit_s)
            spec = dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, time_limit=limit))
        ids = [x.server_id for x in launches]
        if self._closing:  # a start the scaler asked for just before shutdown
            for sid in ids:
                self.events.job_ended(sid, "not submitted: the balancer is shutting down", False)
            return
        per = spec.options.servers_per_job
        n_jobs = math.ceil(len(ids) / per)
        self._submissions.begin(ids)
        argv = [self.TOOLS[0] if self.TOOLS else self.name]
        try:
            async with self._submit_lock:
                script = self._script(spec, log_dir)
                argv = self.submit_argv(spec, n_jobs, script, log_dir, launches[0].preemptible)
                wait = self._last_submit_m + self.cfg.delay_ms / 1000 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                rc, out, err = await self.run(*argv, env=self.submit_env(launches))
                self._last_submit_m = time.monotonic()
        except OSError as exc:
            rc, out, err = 1, "", f"cannot write the job script: {exc}"
        finally:
            early = self._submissions.end(ids)
        if rc != 0:
            why = f"{argv[0]} rejected the job: {self.error_text(err)}"
            for sid in ids:
                self.events.job_ended(sid, why, True)
            return
        array_id = self.parse_job_id(out)
        now = time.monotonic()
        for t in range(n_jobs):
            job = _Job((array_id, str(t) if n_jobs > 1 else ""), ids[t * per : (t + 1) * per], spec.name, now)
            job.preemptible = launches[0].preemptible
            self.jobs[job.key] = job
            for sid in job.servers:
                self.by_server[sid] = job
        for sid in early:
            await self.cancel(sid)
        self._wake.set()

    async def adopt(self, server_id: str, job: str, doc: dict[str, Any]) -> bool:
        """After a restart: follow the job (``7_0`` or ``7``) a re-registered launcher runs in."""
        spec = str(doc.get("spec") or "")
        if not job or spec not in self.job_names:
            return False
        head, _, task = job.partition("_")
        key = (head, task)
        j = self.jobs.get(key)
        if j is None:
            j = self.jobs[key] = _Job(key, [], spec, time.monotonic())
        j.servers.append(server_id)
        self.by_server[server_id] = j
        self._wake.set()
        return True

    # -- polling ---------------------------------------------------------------------------------
    def _live(self) -> list[_Job]:
        return [j for j in self.jobs.values() if not j.ended]

    def _interval(self) -> float:
        now = time.monotonic()
        for j in self._live():
            if j.cancel_sent or (not j.started and now - j.submitted_m < FRESH_S):
                return min(self.opts.fast_poll_s, self.opts.poll_interval_s)
        return self.opts.poll_interval_s

    async def _poll_loop(self) -> None:
        fast = min(self.opts.fast_poll_s, self.opts.poll_interval_s)
        while not self._closing:
            if not self._live():
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(fast)  # a fresh submission starts on the scheduler's next tick at best
            try:
                await self.poll()
            except Exception as exc:  # a bad line or a bug must not end polling
                log.warning("%s: poll failed: %s: %s", self.name, type(exc).__name__, exc)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval())
            if self._wake.is_set():
                await asyncio.sleep(fast)  # right after a submit or cancel: let it land

    async def poll(self) -> None:
        """One status command for all our jobs; report what changed."""
        async with self._poll_lock:
            names = sorted({self.job_names[j.spec] for j in self._live()})
            if not names:
                return
            asked_m = time.monotonic()
            rc, out, err = await self.run(*self.status_argv(names))
            if rc != 0:
                msg = self.error_text(err)
                if msg != self._status_error:
                    log.warning("%s: status failed (will retry): %s", self.name, msg)
                self._status_error = msg
                return
            self._status_error = None
            seen: set[tuple[str, str]] = set()
            for row in self.parse_status(out):
                job = self.jobs.get(row.key)
                if job is None or job.ended:
                    continue
                seen.add(row.key)
                self._update(job, row)
            for job in self._live():
                if job.key in seen or job.submitted_m > asked_m:
                    continue
                if job.seen or asked_m - job.submitted_m > VANISH_GRACE_S:
                    self._end(job, f"job {job.id} is no longer known to {self.name.upper()}", True)

    def _update(self, job: _Job, row: StatusRow) -> None:
        job.seen = True
        job.state = row.native
        state = self.STATES.get(row.native, JobState.UNKNOWN)
        if state is JobState.RUNNING:
            was_running = job.started
            if not job.started:
                job.started = True
                for sid in job.servers:
                    self.events.job_started(sid, job.id, row.nodes or "?")
            if row.end_wall is not None and row.end_wall != job.deadline:
                # Brought forward: earlier than before, or an end where a running job had none (an
                # unlimited job shows none, or start + 365 days, until SLURM preempts it).
                earlier = was_running and (job.deadline is None or row.end_wall < job.deadline - 1.0)
                job.deadline = row.end_wall
                if job.preemptible and earlier:
                    self._preempted(job, f"job {job.id}: its end was brought forward (preempted)")
                else:
                    for sid in job.servers:
                        self.events.job_deadline(sid, row.end_wall)
        elif state is JobState.PENDING:
            never = self.never_starts(row)
            if never is not None:
                self._give_up(job, f"job {job.id} cannot start: {never}")
            elif self._pending_too_long(job):
                limit = self.opts.pending_timeout_s
                self._give_up(
                    job, f"job {job.id} pending for more than {limit:g} s (reason {row.reason}); cancelled"
                )
        elif state in TERMINAL:
            why = f"job {job.id} {row.native}" + (
                f" ({row.reason})" if row.reason and row.reason != "None" else ""
            )
            if state is JobState.PREEMPTED:
                self._preempted(job, why)
            self._end(job, why, state not in (JobState.COMPLETED, JobState.PREEMPTED))

    def _pending_too_long(self, job: _Job) -> bool:
        """Queued beyond ``[backend] pending_timeout_s`` (None, the default: never)."""
        limit = self.opts.pending_timeout_s
        return limit is not None and time.monotonic() - job.submitted_m > limit

    def _preempted(self, job: _Job, why: str) -> None:
        """The scheduler takes ``job`` back: at the start of its preemption grace time (SLURM then
        sets a preemptible job's end to now + GraceTime: it runs on, its processes hear nothing
        until the grace ends) or when it ends as preempted. Reported once."""
        if not job.preempted:
            job.preempted = True
            for sid in job.servers:
                self.events.job_preempted(sid, why)

    def _give_up(self, job: _Job, why: str) -> None:
        """A job that will not start in time: cancel it and report the start as failed now."""
        self._queue_cancel(job)
        self._end(job, why, True)

    def _end(self, job: _Job, reason: str, failed: bool) -> None:
        if job.ended:
            return
        job.ended = True
        for sid in job.servers:
            self.by_server.pop(sid, None)
            self.events.job_ended(sid, reason, failed)
        if not self._closing:
            self.jobs.pop(job.key, None)

    # -- cancel ----------------------------------------------------------------------------------
    async def cancel(self, server_id: str) -> None:
        job = self.by_server.get(server_id)
        if job is None:
            self._submissions.defer_cancel(server_id)
            return
        job.cancelled.add(server_id)
        # A job hosting several servers ends when all of them are to stop (the others hold leases).
        if job.ended or job.cancel_sent or not job.cancelled.issuperset(job.servers):
            return
        await asyncio.shield(self._queue_cancel(job))

    def _queue_cancel(self, job: _Job) -> asyncio.Task[None]:
        """Add ``job`` to the next cancel command: cancels of one event-loop turn share one call."""
        job.cancel_sent = True
        self._cancel_targets.add(job.id)
        if self._cancel_flush is None or self._cancel_flush.done():
            self._cancel_flush = asyncio.create_task(self._flush_cancels())
        self._wake.set()
        return self._cancel_flush

    async def _flush_cancels(self) -> None:
        await asyncio.sleep(0)
        while self._cancel_targets:
            targets = sorted(self._cancel_targets)
            self._cancel_targets.clear()
            rc, _, err = await self.run(*self.cancel_argv(targets))
            if rc != 0:
                log.warning("%s: cancel %s failed: %s", self.name, " ".join(targets), self.error_text(err))

    async def close(self) -> None:
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        # A job whose submission is still running would be missed (and live on until its lease ends).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._submissions.idle.wait(), self.opts.command_timeout_s)
        for job in self._live():
            if not job.cancel_sent:
                self._queue_cancel(job)
        if self._cancel_flush is not None:
            await self._cancel_flush
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while self._live() and time.monotonic() < deadline:
            await self.poll()
            if self._live():
                await asyncio.sleep(0.1)
        for job in self._live():
            self._end(job, f"job {job.id} still {job.state} after cancel", True)
            log.warning(
                "%s: job %s still %s %g s after cancel", self.name, job.id, job.state, CLOSE_TIMEOUT_S
            )
