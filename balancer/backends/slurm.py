"""SLURM backend: model servers as batch jobs, found again through one ``squeue`` poll for all.

Why the CLI and not ``pyslurm``: the Python bindings only build against the exact Slurm release
they target, while ``sbatch --parsable`` / ``squeue -o`` work on every site (as in dask-jobqueue and
Parsl). Every command runs as an asyncio subprocess: the event loop never waits on slurmctld.

* **Submission.** A ``submit`` of k servers is one ``sbatch`` of a job array (``--array=0-(k-1)``;
  one plain job when k = 1), so a burst costs slurmctld one RPC. The job script is generated once
  per spec into ``RUN_DIR/logs/job-<spec>.sh``: the ``#SBATCH`` lines of the user's ``job_script``
  (if any), then the launcher around the model command, exec-style. The launcher's environment
  (URL, token, server ids as a comma list indexed by ``SLURM_ARRAY_TASK_ID``) travels in sbatch's
  own environment with plain ``--export=ALL``: ``--export=ALL,K=V`` makes slurmd load the login
  environment, ~1.1 s more per job start. Options on the command line (from the config) win over
  the script's ``#SBATCH`` lines, as in sbatch itself.
* **Several servers per job** (``servers_per_job = m``): one allocation of m times the resources
  runs m launchers in the background and waits for them, which cuts scheduler load.
* **Threads.** ``OMP_NUM_THREADS`` is set to the server's CPUs (``threads`` overrides, the spec's
  ``env`` wins): two BLAS-threaded servers on one node otherwise spin against each other (eigen
  N = 100: 10 ms median, 240 ms worst instead of 5 ms per call, measured here).
* **States.** One ``squeue -r -t all --name=<our job names>`` call per poll (``poll_interval_s``,
  default 2 s; 0.5 s while a job is fresh or being cancelled, so ``server.started`` is timely).
  RUNNING -> ``job_started`` and the job's end time -> ``job_deadline`` (the pool drains and
  replaces the server ``time_limit_margin_s`` before it). A finished or vanished job ->
  ``job_ended``; the pool retries its calls. A job pending longer than ``pending_timeout_s``, or
  pending for a reason that never resolves (``fail_pending_reasons``, e.g. ``PartitionConfig`` for
  a request no node can satisfy), is cancelled and reported as a failed start.
* **Ending.** The pool stops a server through its lease first; ``cancel`` is ``scancel`` (coalesced:
  the cancels of one event-loop turn make one call). ``close`` cancels every job of ours still
  alive and waits, bounded, until squeue shows none.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, ServerSpec
from .base import ENV_SERVER_ID, Backend, Launch

log = logging.getLogger(__name__)

OPTIONS = frozenset(
    {
        "poll_interval_s",
        "fast_poll_s",
        "pending_timeout_s",
        "time_limit_margin_s",
        "fail_pending_reasons",
        "python",
        "job_name",
        "partition",
        "account",
        "qos",
        "sbatch_args",
        "command_timeout_s",
    }
)
SQUEUE_FORMAT = "%i|%F|%K|%A|%T|%r|%S|%e|%l|%L|%N|%j|%k"
_FIELDS = 13
# Job states after which the job never runs again; any other state (SUSPENDED, REQUEUED, ...) waits.
TERMINAL = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING"})
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
FRESH_S = 30.0  # a job this young that has not started yet is polled at the fast rate
VANISH_GRACE_S = 10.0  # a job never seen in squeue this long after sbatch counts as gone
CLOSE_TIMEOUT_S = 30.0
# Directives that the balancer sets itself; the copies in a user's script would contradict them.
_OWN_DIRECTIVES = ("--array", "-a", "--job-name", "-J", "--output", "-o", "--error", "-e", "--export")


@dataclass
class _Job:
    """One SLURM job (or array task) and the servers it hosts."""

    key: tuple[str, str]  # (array job id, task id); task "" for a plain job
    servers: list[str]
    spec: str
    submitted_m: float
    state: str = "SUBMITTED"
    seen: bool = False
    started: bool = False
    deadline: float | None = None
    ended: bool = False
    cancelled: set[str] = field(default_factory=set)
    cancel_sent: bool = False

    @property
    def id(self) -> str:
        """The id scancel and the launcher use: ``7_0`` for an array task, ``7`` for a plain job."""
        return f"{self.key[0]}_{self.key[1]}" if self.key[1] else self.key[0]


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
    lines = []
    with open(script, encoding="utf-8", errors="replace") as f:
        head = f.read(64 * 1024)
    for i, line in enumerate(head.splitlines()):
        s = line.strip()
        if i == 0 and s.startswith("#!"):
            continue
        if s.startswith("#SBATCH"):
            lines.append(s)
        elif s and not s.startswith("#"):
            break
    return lines


def _directive_option(line: str) -> str:
    words = line[len("#SBATCH") :].split()
    return words[0].split("=", 1)[0] if words else ""


def _scale_memory(mem: str, factor: int) -> str:
    """``2G`` times ``factor`` (servers sharing one allocation); left as is if not a plain size."""
    m = re.fullmatch(r"(\d+)\s*([KMGTkmgt]?)[Bb]?", mem.strip())
    if factor == 1 or not m:
        return mem
    return f"{int(m.group(1)) * factor}{m.group(2).upper()}"


def _error_lines(stderr: str) -> str:
    """sbatch's complaint as one line: its ``error:`` lines, without the prefixes."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    prefix = re.compile(r"^(sbatch|squeue|scancel|sinfo):\s*(error:\s*)?")
    errs = [prefix.sub("", ln) for ln in lines if "error" in ln]
    return "; ".join(errs or lines[-2:]) or "no message"


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_id = secrets.token_hex(3)
        self.jobs: dict[tuple[str, str], _Job] = {}
        self.by_server: dict[str, _Job] = {}
        self.scripts: dict[str, Path] = {}
        self.directives: dict[str, list[str]] = {}
        self.job_names: dict[str, str] = {}  # spec -> job name
        self._submitting: set[str] = set()
        self._no_submits = asyncio.Event()
        self._no_submits.set()
        self._cancel_early: set[str] = set()
        self._submit_lock = asyncio.Lock()
        self._last_submit_m = -math.inf
        self._cancel_targets: set[str] = set()
        self._cancel_flush: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._poll_lock = asyncio.Lock()
        self._closing = False
        self._squeue_error: str | None = None
        self._bin: dict[str, str] = {}
        # Defaults until start() has read the [backend] table.
        self.poll_s, self.fast_poll_s, self.pending_timeout_s, self.cmd_timeout_s = 2.0, 0.5, 300.0, 60.0
        self.fail_reasons: frozenset[str] = frozenset(DEFAULT_FAIL_REASONS)
        self.python = sys.executable

    # -- options ---------------------------------------------------------------------------------
    def _opt(self, key: str, default: Any = None) -> Any:
        return self.cfg.backend_option(key, default)

    def _num(self, key: str, default: float) -> float:
        v = self._opt(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"backend.{key}", f"expected a positive number, got {v!r}")
        return float(v)

    def _spec_opt(self, spec: ServerSpec, key: str) -> Any:
        """A per-server option, falling back to the [backend] table's site-wide default."""
        v = spec.option(key)
        return self._opt(key) if v is None else v

    @staticmethod
    def _str_list(key: str, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return shlex.split(value)
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return list(value)
        raise ConfigError(key, f"expected a list of strings, got {value!r}")

    # -- start -----------------------------------------------------------------------------------
    async def start(self) -> None:
        for k, _ in self.cfg.backend:
            if k not in OPTIONS:
                known = ", ".join(sorted(OPTIONS))
                raise ConfigError(f"backend.{k}", f"unknown key for slurm (known: {known})")
        self.poll_s = self._num("poll_interval_s", 2.0)
        self.fast_poll_s = min(self._num("fast_poll_s", 0.5), self.poll_s)
        self.pending_timeout_s = self._num("pending_timeout_s", 300.0)
        self.cmd_timeout_s = self._num("command_timeout_s", 60.0)
        self._num("time_limit_margin_s", 60.0)  # used by the pool; validated here
        reasons = self._opt("fail_pending_reasons", list(DEFAULT_FAIL_REASONS))
        self.fail_reasons = frozenset(self._str_list("backend.fail_pending_reasons", reasons))
        self.python = str(self._opt("python", sys.executable))
        prefix = self._opt("job_name", "umbridge")
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ConfigError("backend.job_name", f"use letters, digits, '.', '_' and '-', got {prefix!r}")
        for tool in ("sbatch", "squeue", "scancel", "sinfo"):
            path = shutil.which(tool)
            if path is None:
                raise ConfigError(
                    "balancer.scheduler", f"slurm: {tool} is not on PATH (load the SLURM module first)"
                )
            self._bin[tool] = path
        self._str_list("backend.sbatch_args", self._opt("sbatch_args"))
        rc, out, err = await self._run("sinfo", "-a", "-h", "-o", "%R")
        if rc != 0:
            raise ConfigError("balancer.scheduler", f"slurm: sinfo failed: {_error_lines(err)}")
        partitions = set(out.split())
        for spec in self.cfg.servers:
            self._check_spec(spec, partitions)
            self.job_names[spec.name] = f"{prefix}-{spec.name}-{self.run_id}"
        self._poller = asyncio.create_task(self._poll_loop(), name="slurm-poll")

    def _check_spec(self, spec: ServerSpec, partitions: set[str]) -> None:
        key = f"servers.{spec.name}"
        for opt in ("partition", "account", "qos"):
            v = self._spec_opt(spec, opt)
            if v is not None and (not isinstance(v, str) or not v):
                raise ConfigError(f"{key}.{opt}", f"expected a name, got {v!r}")
        try:
            self._directives(spec)
        except OSError as exc:
            raise ConfigError(f"{key}.job_script", f"cannot read: {exc.strerror or exc}") from None
        part = self._spec_opt(spec, "partition")
        if part is not None and part not in partitions:
            known = ", ".join(sorted(partitions)) or "none"
            raise ConfigError(f"{key}.partition", f"no SLURM partition {part!r} (known: {known})")
        self._str_list(f"{key}.sbatch_args", spec.option("sbatch_args"))
        for opt in ("servers_per_job", "threads"):
            v = spec.option(opt, 1)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{key}.{opt}", f"expected a positive integer, got {v!r}")

    # -- job script ------------------------------------------------------------------------------
    def _directives(self, spec: ServerSpec) -> list[str]:
        """The ``#SBATCH`` lines of the spec's own job script, read once."""
        if spec.name not in self.directives:
            self.directives[spec.name] = read_directives(spec.job_script) if spec.job_script else []
        return self.directives[spec.name]

    def _script(self, spec: ServerSpec, log_dir: Path) -> Path:
        """The generated job script of ``spec`` (written once, kept in the logs for inspection)."""
        path = self.scripts.get(spec.name)
        if path is not None:
            return path
        directives = [d for d in self._directives(spec) if _directive_option(d) not in _OWN_DIRECTIVES]
        per = int(spec.option("servers_per_job", 1))
        launcher = " ".join(
            shlex.quote(a) for a in [self.python, "-m", "balancer.launch", "--", *spec.server_command()]
        )
        logs = shlex.quote(str(log_dir))
        body = [
            "#!/bin/bash",
            *directives,
            f"# Generated by umbridge-balancer for server spec '{spec.name}': {per} launcher(s) per job,",
            "# each starting one model server on $PORT and registering it with the balancer.",
            f'IFS=, read -r -a ids <<< "${ENV_SERVER_ID}"',
            f"per={per}",
            "first=$(( ${SLURM_ARRAY_TASK_ID:-0} * per ))",
        ]
        if per == 1:
            body += [
                "exec >>" + logs + '/"${ids[$first]}.log" 2>&1',
                "export UMBRIDGE_BALANCER_TASK_INDEX=$first",
                f"exec {launcher}",
            ]
        else:
            body += [
                "# Launchers run in the background; SIGTERM (scancel, time limit) is passed on to them.",
                "pids=()",
                "trap 'kill -TERM \"${pids[@]}\" 2>/dev/null' TERM INT",
                "for (( i = first; i < first + per && i < ${#ids[@]}; i++ )); do",
                f'    UMBRIDGE_BALANCER_TASK_INDEX=$i {launcher} >>{logs}/"${{ids[$i]}}.log" 2>&1 &',
                "    pids+=($!)",
                "done",
                'for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do wait "$p"; done; done',
            ]
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"job-{spec.name}.sh"
        path.write_text("\n".join(body) + "\n")
        path.chmod(0o755)
        self.scripts[spec.name] = path
        return path

    def _sbatch_args(self, spec: ServerSpec, n_jobs: int, log_dir: Path) -> list[str]:
        per = int(spec.option("servers_per_job", 1))
        res = spec.resources
        script_opts = {_directive_option(d) for d in self._directives(spec)}
        out = log_dir / ("slurm-%A_%a.out" if n_jobs > 1 else "slurm-%j.out")
        args = [
            "--parsable",
            f"--job-name={self.job_names[spec.name]}",
            f"--output={out}",
            f"--error={out}",
            "--export=ALL",
            "--no-requeue",
            f"--chdir={spec.cwd or os.getcwd()}",
        ]
        if n_jobs > 1:
            args.append(f"--array=0-{n_jobs - 1}")
        for opt in ("partition", "account", "qos"):
            v = self._spec_opt(spec, opt)
            if v:
                args.append(f"--{opt}={v}")
        # The config's resources win, but defaults (cpus = 1, no memory, ...) leave a script's own.
        if res.cpus != 1 or per > 1 or not script_opts & {"--cpus-per-task", "-c"}:
            args.append(f"--cpus-per-task={res.cpus * per}")
        if res.memory:
            args.append(f"--mem={_scale_memory(res.memory, per)}")
        if res.gpus:
            args.append(f"--gpus={res.gpus * per}")
        if res.time_limit:
            args.append(f"--time={res.time_limit}")
        args += self._str_list("backend.sbatch_args", self._opt("sbatch_args"))
        args += self._str_list(f"servers.{spec.name}.sbatch_args", spec.option("sbatch_args"))
        return args

    # -- submit ----------------------------------------------------------------------------------
    async def submit(self, launches: list[Launch]) -> None:
        if not launches:
            return
        spec = launches[0].spec
        log_dir = launches[0].log_dir
        ids = [x.server_id for x in launches]
        if self._closing:  # a start the scaler asked for just before shutdown
            for sid in ids:
                self.events.job_ended(sid, "not submitted: the balancer is shutting down", False)
            return
        per = int(spec.option("servers_per_job", 1))
        n_jobs = math.ceil(len(ids) / per)
        env = dict(os.environ)
        # "python" in a server command means the balancer's environment (its venv), as locally.
        env["PATH"] = os.pathsep.join([str(Path(self.python).parent), env.get("PATH", "")])
        for k in [k for k in env if k.startswith("SLURM_ARRAY_") or k.startswith("UMBRIDGE_BALANCER_TASK_")]:
            del env[k]  # a balancer running inside an array job must not hand its own task id on
        # One thread per CPU of the server (as HyperQueue does): BLAS threads of servers sharing a
        # node would otherwise spin against each other. The spec's own env wins.
        env["OMP_NUM_THREADS"] = str(spec.option("threads") or spec.resources.cpus)
        env.update(launches[0].env)
        env[ENV_SERVER_ID] = ",".join(ids)
        self._submitting.update(ids)
        self._no_submits.clear()
        try:
            script = self._script(spec, log_dir)
            args = self._sbatch_args(spec, n_jobs, log_dir)
            async with self._submit_lock:
                wait = self._last_submit_m + self.cfg.delay_ms / 1000 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                rc, out, err = await self._run("sbatch", *args, str(script), env=env)
                self._last_submit_m = time.monotonic()
        except OSError as exc:
            rc, out, err = 1, "", f"cannot write the job script: {exc}"
        finally:
            self._submitting.difference_update(ids)
            if not self._submitting:
                self._no_submits.set()
        if rc != 0:
            why = f"sbatch rejected the job: {_error_lines(err)}"
            for sid in ids:
                self._cancel_early.discard(sid)
                self.events.job_ended(sid, why, True)
            return
        array_id = out.strip().split(";")[0]
        now = time.monotonic()
        for t in range(n_jobs):
            job = _Job((array_id, str(t) if n_jobs > 1 else ""), ids[t * per : (t + 1) * per], spec.name, now)
            self.jobs[job.key] = job
            for sid in job.servers:
                self.by_server[sid] = job
        early = [sid for sid in ids if sid in self._cancel_early]
        for sid in early:
            self._cancel_early.discard(sid)
            await self.cancel(sid)
        self._wake.set()

    # -- polling ---------------------------------------------------------------------------------
    def _live(self) -> list[_Job]:
        return [j for j in self.jobs.values() if not j.ended]

    def _interval(self) -> float:
        now = time.monotonic()
        for j in self._live():
            if j.cancel_sent or (not j.started and now - j.submitted_m < FRESH_S):
                return self.fast_poll_s
        return self.poll_s

    async def _poll_loop(self) -> None:
        while not self._closing:
            if not self._live():
                self._wake.clear()
                await self._wake.wait()
                # A fresh submission: its job starts on slurmctld's next tick at the earliest.
                await asyncio.sleep(self.fast_poll_s)
            try:
                await self.poll()
            except Exception as exc:  # a bad line or a bug must not end polling
                log.warning("slurm: poll failed: %s: %s", type(exc).__name__, exc)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval())
            if self._wake.is_set():
                await asyncio.sleep(self.fast_poll_s)  # right after a submit or cancel: let it land

    async def poll(self) -> None:
        """One squeue call for all our jobs; report what changed."""
        async with self._poll_lock:
            names = ",".join(sorted({self.job_names[j.spec] for j in self._live()}))
            if not names:
                return
            asked_m = time.monotonic()
            rc, out, err = await self._run(
                "squeue", "-h", "-r", "-t", "all", f"--name={names}", "-o", SQUEUE_FORMAT
            )
            if rc != 0:
                msg = _error_lines(err)
                if msg != self._squeue_error:
                    log.warning("slurm: squeue failed (will retry): %s", msg)
                self._squeue_error = msg
                return
            self._squeue_error = None
            seen: set[tuple[str, str]] = set()
            for line in out.splitlines():
                row = line.split("|")
                if len(row) != _FIELDS:
                    continue
                task = "" if row[2] in ("N/A", "") else row[2]
                key = (row[1], task)
                job = self.jobs.get(key)
                if job is None or job.ended:
                    continue
                seen.add(key)
                self._update(job, state=row[4], reason=row[5], end=row[7], nodes=row[10])
            for job in self._live():
                if job.key in seen or job.submitted_m > asked_m:
                    continue
                if job.seen or asked_m - job.submitted_m > VANISH_GRACE_S:
                    self._end(job, f"job {job.id} is no longer known to SLURM", True)

    def _update(self, job: _Job, state: str, reason: str, end: str, nodes: str) -> None:
        job.seen = True
        job.state = state
        if state in RUNNING_STATES:
            if not job.started:
                job.started = True
                for sid in job.servers:
                    self.events.job_started(sid, job.id, nodes or "?")
            deadline = parse_slurm_time(end) if state == "RUNNING" else None
            if deadline is not None and deadline != job.deadline:
                job.deadline = deadline
                for sid in job.servers:
                    self.events.job_deadline(sid, deadline)
        if state == "PENDING":
            waited = time.monotonic() - job.submitted_m
            if reason in self.fail_reasons:
                hint = _REASON_HINTS.get(reason)
                why = f"job {job.id} cannot start: SLURM pending reason {reason}"
                self._give_up(job, why + (f" ({hint})" if hint else ""))
            elif waited > self.pending_timeout_s:
                why = f"job {job.id} pending for more than {self.pending_timeout_s:g} s (reason {reason})"
                self._give_up(job, why + "; cancelled")
            return
        if state not in TERMINAL:
            return
        why = f"job {job.id} {state}"
        if reason and reason != "None":
            why += f" ({reason})"
        self._end(job, why, state != "COMPLETED")

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
            if server_id in self._submitting:
                self._cancel_early.add(server_id)  # sbatch still running: cancel once it returns
            return
        job.cancelled.add(server_id)
        # A job hosting several servers ends when all of them are to stop (the others hold leases).
        if job.ended or job.cancel_sent or not job.cancelled.issuperset(job.servers):
            return
        await asyncio.shield(self._queue_cancel(job))

    def _queue_cancel(self, job: _Job) -> asyncio.Task[None]:
        """Add ``job`` to the next ``scancel``: cancels of one event-loop turn share one call."""
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
            rc, _, err = await self._run("scancel", "--quiet", *targets)
            if rc != 0:
                log.warning("slurm: scancel %s failed: %s", " ".join(targets), _error_lines(err))

    async def close(self) -> None:
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        # A job whose sbatch is still running would be missed (and live on until its lease ends).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._no_submits.wait(), self.cmd_timeout_s)
        live = self._live()
        for job in live:
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
            self._end(job, f"job {job.id} still {job.state} after scancel", True)
            log.warning("slurm: job %s still %s %g s after scancel", job.id, job.state, CLOSE_TIMEOUT_S)

    # -- subprocesses ----------------------------------------------------------------------------
    async def _run(self, tool: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Run a SLURM command without blocking the loop: (exit code, stdout, stderr)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self._bin.get(tool, tool),
                *args,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return 127, "", f"{tool}: error: cannot run: {exc.strerror or exc}"
        timeout = self.cmd_timeout_s
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return 124, "", f"{tool}: error: no answer within {timeout:g} s"
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
