"""HyperQueue backend: each model server is one HQ job whose single task execs the launcher.

Where the HQ server comes from (``[backend] mode``: embedded, an existing server, or one the
``hq`` binary starts with allocation queues): ``hq_server``.

Status comes from one poll of all our jobs every ``poll_interval_s`` on a dedicated thread
(``hq_client``: the Python API has no cancel and no task-state query).

Ending a task: ``hq job cancel`` where the binary is on PATH; otherwise (and in addition) SIGTERM,
then SIGKILL, to the task's process group, whose pid a small ``sh`` wrapper writes to a pid file
before it execs the launcher (HQ starts every task with ``setsid``, so pid == pgid). That works
where the worker runs on this host (always in embedded mode). A task cancelled before it started
finds a ``.cancel`` marker and exits at once. The wrapper also refuses a second start of the same
server (HQ re-runs a task whose worker went away; the pool replaces the server instead).

What a task asks for (``#HQ`` directives, resources, ``hq_resources``): ``hq_resources``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balancer.backends.base import Backend, Launch, Submissions
from balancer.backends.hyperqueue.client import HqClient
from balancer.backends.hyperqueue.resources import HqRequest, hq_request
from balancer.backends.hyperqueue.server import MODES, HqServer
from balancer.backends.options import BackendOptions, ThreadsOption, one_of, positive
from balancer.backends.states import TERMINAL, JobState, hq_state
from balancer.config.schema import HARVESTING, BalancerConfig, ConfigError, ServerSpec
from balancer.launcher.contract import ENV_JOB_ID, launcher_argv
from balancer.launcher.procgroup import OUTER_GRACE_S, end_group, group_env_has

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HqOptions(BackendOptions):
    # Default: "server" with a server_dir (or $HQ_SERVER_DIR), else "embedded".
    mode: str | None = one_of(None, *MODES)
    server_dir: str | None = None
    workers: int = positive(1)  # embedded: local workers
    cpus_per_worker: int = positive(os.cpu_count() or 1)
    hq: str = "hq"  # the binary, for mode "hq" and job cancel
    journal: str | None = None  # mode "hq": the server's journal file
    alloc: tuple[str, ...] = field(default=(), metadata={"wrap": True})  # mode "hq": `hq alloc add` args
    poll_interval_s: float = positive(0.5)
    python: str = sys.executable
    kill_grace_s: float = positive(OUTER_GRACE_S)
    gpu_resource: str = "gpus/nvidia"
    start_timeout_s: float = positive(30.0)


@dataclass(frozen=True)
class HqServerOptions(ThreadsOption):
    hq_resources: dict[str, int | str] = field(default_factory=dict)


WRAPPER = (
    'exec >>"$2" 2>&1; '
    'if [ -e "$1.cancel" ]; then echo "umbridge-balancer: cancelled before it started"; exit 0; fi; '
    "set -C; "
    'if ! { echo "$$ $(uname -n)" >"$1"; } 2>/dev/null; then '
    'echo "umbridge-balancer: $1 exists: HyperQueue restarted this task, not starting it twice"; '
    "exit 75; fi; "
    f'export {ENV_JOB_ID}="$HQ_JOB_ID.${{HQ_TASK_ID:-0}}"; '  # the launcher knows no HQ variable
    'shift 2; exec "$@"'
)
EXIT_RESTART_REFUSED = 75


# -- the backend -----------------------------------------------------------------------------------
@dataclass(eq=False)
class _Job:
    server_id: str
    job_id: int
    pidfile: Path
    log: Path
    started: bool = False
    cancelling: bool = False
    pid: int | None = None
    host: str | None = None


@dataclass
class _Poll:
    status: dict[int, dict[str, Any]]
    errors: dict[int, str] = field(default_factory=dict)
    pids: dict[int, tuple[int, str]] = field(default_factory=dict)


def _read_pidfile(path: Path) -> tuple[int, str] | None:
    try:
        pid, host = path.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None  # not started yet, or caught mid-write


class HyperQueueBackend(Backend):
    name = "hyperqueue"
    REFERENCE_SCRIPTS = "hq_scripts"
    Options = HqOptions
    ServerOptions = HqServerOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opts: HqOptions = self.cfg.backend_options
        self.jobs: dict[str, _Job] = {}
        self.server = HqServer(self.opts, self.run_dir)
        self.requests: dict[str, HqRequest] = {}  # spec name -> its request (also for the collectors)
        self._request_specs: dict[str, ServerSpec] = {}  # spec name -> the spec its request is of
        self._client: HqClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hyperqueue")
        self._poller: asyncio.Task[None] | None = None
        self._submissions = Submissions()
        self._lost: str | None = None
        self._all_ended = asyncio.Event()
        self._host = socket.gethostname()

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- start -----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.cfg.rules.policy in HARVESTING:
            # HQ places tasks on whatever workers exist: one server cannot be asked to run on a
            # preemptible allocation, and a preempted worker's task is re-run, not reported.
            raise ConfigError(
                "forecast.policy",
                f"the {self.cfg.rules.policy} policy needs preemptible jobs per server, which HyperQueue "
                "cannot place (its allocations hold many tasks): use the slurm backend, or make every "
                "worker allocation preemptible with [backend] alloc and the demand or forecast policy",
            )
        if importlib.util.find_spec("hyperqueue") is None:  # imported later, on the HQ thread
            raise ConfigError(
                "balancer.scheduler",
                "needs the hyperqueue package: pip install 'umbridge-balancer[hyperqueue]'",
            )
        await self.server.resolve()
        await self.check_specs(self.cfg.servers)
        self._cache_requests(self.cfg.servers)
        try:
            self._client = await self.server.start(self._call)
        except BaseException:
            await self._stop_infra()  # no helper or hq server left behind by a failed start
            raise
        self._poller = asyncio.create_task(self._poll_loop(), name="hyperqueue-poll")

    async def check_specs(self, specs: Sequence[ServerSpec]) -> None:
        """Turn requests no worker can satisfy into config errors, not servers that never start
        (after ``server.resolve``: whether the workers are the embedded ones decides)."""
        cpus_per_worker = self.opts.cpus_per_worker
        for spec in specs:
            key = f"servers.{spec.name}"
            try:
                req = hq_request(spec, self.opts.gpu_resource)
            except OSError as exc:
                raise ConfigError(f"{key}.job_script", f"cannot read: {exc.strerror or exc}") from None
            if req.ignored:
                log.warning(
                    "%s: #HQ %s not supported through the Python API, ignored", key, " ".join(req.ignored)
                )
            if self.server.mode == "embedded":
                if req.resources:
                    names = ", ".join(n for n, _ in req.resources)
                    raise ConfigError(
                        f"{key}.resources",
                        f"asks HyperQueue for {names}, but the embedded workers have CPUs only; "
                        "use [backend] server_dir or mode = 'hq' with workers that provide it",
                    )
                if isinstance(req.cpus, int) and req.cpus > cpus_per_worker:
                    raise ConfigError(
                        f"{key}.resources.cpus",
                        f"asks for {req.cpus} CPUs but the embedded workers have {cpus_per_worker} each "
                        "([backend] cpus_per_worker)",
                    )

    def _cache_requests(self, specs: Sequence[ServerSpec]) -> None:
        """Each spec's request (its ``#HQ`` directives read now), for ``submit``."""
        try:
            self.requests = {spec.name: hq_request(spec, self.opts.gpu_resource) for spec in specs}
        except (ConfigError, OSError):  # the script changed since check_specs: each submit asks afresh
            self.requests = {}
        self._request_specs = {spec.name: spec for spec in specs}

    def reconfigure(self, cfg: BalancerConfig) -> None:
        """Later submits use the reloaded specs' requests (a job script's ``#HQ`` lines read again)."""
        super().reconfigure(cfg)
        self._cache_requests(cfg.servers)

    # -- submit ----------------------------------------------------------------------------------
    async def submit(self, launches: list[Launch]) -> None:
        for i, launch in enumerate(launches):
            if i and self.cfg.delay_ms:
                await asyncio.sleep(self.cfg.delay_ms / 1000)
            await self._submit_one(launch)

    def _task_env(self, launch: Launch) -> dict[str, str]:
        env = dict(launch.env)
        threads = launch.spec.options.threads
        if threads:  # HQ sets OMP_NUM_THREADS to the task's CPU count; the model may want another
            env["OMP_NUM_THREADS"] = str(threads)
        if self.server.mode == "embedded":  # same machine: "python" in a command means the balancer's venv
            env["PATH"] = os.pathsep.join([str(Path(self.opts.python).parent), os.environ.get("PATH", "")])
        return env

    async def _submit_one(self, launch: Launch) -> None:
        sid = launch.server_id
        if self._lost or self._client is None:
            self.events.job_ended(sid, self._lost or "HyperQueue backend not started", True)
            return
        launch.log_dir.mkdir(parents=True, exist_ok=True)
        pidfile = launch.log_dir / f"{sid}.hqpid"
        logfile = launch.log_dir / f"{sid}.log"
        for stale in (pidfile, Path(f"{pidfile}.cancel")):
            stale.unlink(missing_ok=True)
        args = ["/bin/sh", "-c", WRAPPER, "hq-launch", str(pidfile), str(logfile)]
        args += launcher_argv(launch.spec.server_command(), self.opts.python)
        spec = launch.spec  # the cached request only for the very spec it was made for (reloads)
        req = self.requests.get(spec.name) if self._request_specs.get(spec.name) == spec else None
        req = req or hq_request(spec, self.opts.gpu_resource)
        cwd = launch.spec.cwd or str(self.run_dir)
        self._submissions.begin([sid])
        try:
            env = self._task_env(launch)
            job_id = await self._call(self._client.submit, args, env, cwd, req, f"ub-{sid}")
        except Exception as exc:
            self._submissions.end([sid])
            self.events.job_ended(sid, f"HyperQueue submit failed: {exc}", True)
            return
        early = self._submissions.end([sid])
        self.jobs[sid] = _Job(sid, job_id, pidfile, logfile)
        if early:
            await self.cancel(sid)

    async def adopt(self, server_id: str, job: str, doc: dict[str, Any]) -> bool:
        """After a restart: follow HQ job ``12`` (the launcher reports ``12.0``) of a server started by
        an earlier balancer. Only a HyperQueue server that outlived it has such a job: an embedded
        cluster ends with its balancer."""
        head = job.partition(".")[0]
        if self.server.mode == "embedded" or not head.isdigit() or self._client is None:
            return False
        logs = self.run_dir / "logs"
        j = _Job(server_id, int(head), logs / f"{server_id}.hqpid", logs / f"{server_id}.log", started=True)
        self.jobs[server_id] = j
        self.events.job_started(server_id, job, str(doc.get("host") or "?"))
        return True

    # -- status ----------------------------------------------------------------------------------
    def _poll_sync(self, jobs: list[_Job]) -> _Poll:
        assert self._client is not None
        poll = _Poll(self._client.status([j.job_id for j in jobs]))
        done = [jid for jid, s in poll.status.items() if s["completed"]]
        failed = [jid for jid in done if poll.status[jid]["failed"]]
        if failed:
            poll.errors = self._client.errors(failed)
        self._client.forget(done)
        for j in jobs:
            st = poll.status.get(j.job_id)
            if st is not None and not st["completed"] and j.pid is None:
                info = _read_pidfile(j.pidfile)
                if info:
                    poll.pids[j.job_id] = info
        return poll

    async def _poll_loop(self) -> None:
        failing_since: float | None = None
        while True:
            await asyncio.sleep(self.opts.poll_interval_s)
            cluster = self.server.cluster
            if cluster is not None and not cluster.alive():
                code = cluster.proc.returncode if cluster.proc else None
                await self._lose_all(f"embedded HyperQueue cluster exited (code {code}); see hq-embedded.log")
                return
            jobs = list(self.jobs.values())
            if not jobs:
                continue
            try:
                poll = await self._call(self._poll_sync, jobs)
            except Exception as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= max(self.cfg.lease_s, 10.0):
                    await self._lose_all(f"HyperQueue server unreachable: {exc}")
                    return
                continue
            failing_since = None
            self._apply(jobs, poll)

    def _apply(self, jobs: list[_Job], poll: _Poll) -> None:
        for j in jobs:
            if self.jobs.get(j.server_id) is not j:
                continue
            info = poll.pids.get(j.job_id)
            if info and j.pid is None:
                j.pid, j.host = info
                if not j.started:
                    j.started = True
                    self.events.job_started(j.server_id, str(j.job_id), j.host)
                if j.cancelling:  # cancelled while queued: it started anyway, end it now
                    self._spawn_kill(j)
            st = poll.status.get(j.job_id)
            state = hq_state(st, j.started, j.cancelling)
            if state not in TERMINAL:
                continue
            if st is None:
                self._end(j, "job vanished from HyperQueue (server restarted?)", True)
            elif state is JobState.CANCELLED:
                self._end(j, "cancelled", False)
            elif state is JobState.FAILED:
                self._end(j, f"HyperQueue task failed: {poll.errors.get(j.job_id, '?')} (log: {j.log})", True)
            else:
                self._end(j, "launcher exited", False)

    def _end(self, j: _Job, reason: str, failed: bool) -> None:
        if self.jobs.get(j.server_id) is j:
            del self.jobs[j.server_id]
            self.events.job_ended(j.server_id, reason, failed)
            if not self.jobs:
                self._all_ended.set()

    async def _lose_all(self, reason: str) -> None:
        """The HQ server is gone: its tasks' launchers may live on, so end the local ones ourselves."""
        self._lost = reason
        jobs = list(self.jobs.values())
        await asyncio.gather(*(self._kill_local(j) for j in jobs), return_exceptions=True)
        for j in jobs:
            self._end(j, reason, True)

    # -- ending tasks ----------------------------------------------------------------------------
    async def _kill_local(self, j: _Job) -> None:
        """SIGTERM (then SIGKILL) the task's process group, if it runs on this host."""
        if j.pid is None:
            info = await asyncio.to_thread(_read_pidfile, j.pidfile)
            if info is None:
                return
            j.pid, j.host = info
        if j.host not in (self._host, socket.getfqdn(), "localhost"):
            return
        # Make sure the group is still this job's task, not a recycled pid.
        if await asyncio.to_thread(group_env_has, j.pid, f"HQ_JOB_ID={j.job_id}") is False:
            return
        await end_group(j.pid, self.opts.kill_grace_s)

    def _spawn_kill(self, j: _Job) -> None:
        task = asyncio.create_task(self._kill_local(j))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def cancel(self, server_id: str) -> None:
        j = self.jobs.get(server_id)
        if j is None:
            self._submissions.defer_cancel(server_id)
            return
        j.cancelling = True
        if j.pid is None:  # maybe still queued: the wrapper exits at once if it starts later
            with contextlib.suppress(OSError):
                await asyncio.to_thread(Path(f"{j.pidfile}.cancel").touch)
        if self.server.hq_bin:
            await self.server.hq("job", "cancel", str(j.job_id), timeout=30)
        await self._kill_local(j)

    async def close(self) -> None:
        await asyncio.gather(*(self.cancel(sid) for sid in list(self.jobs)), return_exceptions=True)
        if self.jobs and self._poller is not None and not self._poller.done():
            self._all_ended.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_ended.wait(), max(2.0, 4 * self.opts.poll_interval_s))
        for j in list(self.jobs.values()):
            self._end(j, "backend closed", False)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._stop_infra()
        self._pool.shutdown(wait=False)

    def _drop_client(self) -> None:
        self._client = None

    async def _stop_infra(self) -> None:
        """Disconnect (on the thread that connected), then stop the helper or the hq server."""
        with contextlib.suppress(Exception):
            await self._call(self._drop_client)
        await self.server.stop()
