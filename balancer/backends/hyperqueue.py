"""HyperQueue backend: each model server is one HQ job whose single task execs the launcher.

Where the HQ server comes from (``[backend] mode``):

* ``embedded`` (default without a server directory): a ``LocalCluster`` with ``workers`` local
  workers of ``cpus_per_worker`` cores, run by a helper process (``hq_embedded``) so that neither
  its threads nor its task processes live in the balancer. No ``hq`` binary needed.
* ``server``: a server somebody already runs: ``[backend] server_dir`` or ``$HQ_SERVER_DIR``.
* ``hq``: the balancer runs ``hq server start --journal`` itself and adds the allocation queues of
  ``[backend] alloc`` (``hq alloc add ...``), so HQ asks SLURM/PBS for workers as servers queue up.

The Python API (``hyperqueue`` 0.27) has no cancel and no task-state query, and its
``wait_for_jobs`` sleeps 1 s per round holding the GIL. What it does have: ``wait_for_jobs`` makes
one job-info RPC, hands the counters of every listed job to a callback, and returns at once if that
callback raises. One such call for all our jobs is the status poll (~0.2 ms, run on a dedicated
thread every ``poll_interval_s``); ``get_failed_tasks`` gives a failed task's error text.

Ending a task: ``hq job cancel`` where the binary is on PATH; otherwise (and in addition) SIGTERM,
then SIGKILL, to the task's process group, whose pid a small ``sh`` wrapper writes to a pid file
before it execs the launcher (HQ starts every task with ``setsid``, so pid == pgid). That works
where the worker runs on this host (always in embedded mode). A task cancelled before it started
finds a ``.cancel`` marker and exits at once. The wrapper also refuses a second start of the same
server (HQ re-runs a task whose worker went away; the pool replaces the server instead).

Resource requests come from ``#HQ`` directives of the spec's job script (``--cpus``, ``--resource``,
``--time-request``, as ``hq submit`` reads them), then ``resources.cpus``/``resources.gpus``, then the
spec option ``hq_resources`` (a table, e.g. ``{"gpus/nvidia" = 1, mem = 2048}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, ServerSpec
from .base import Backend, Launch, launcher_argv
from .hq_embedded import TASK_GRACE_S, EmbeddedCluster, end_group, group_env_has

log = logging.getLogger(__name__)

MODES = ("embedded", "server", "hq")
OPTIONS = frozenset(
    {
        "mode",
        "server_dir",
        "workers",
        "cpus_per_worker",
        "hq",
        "journal",
        "alloc",
        "poll_interval_s",
        "python",
        "kill_grace_s",
        "gpu_resource",
        "start_timeout_s",
        "time_limit_margin_s",  # read by the pool, common to all backends
    }
)
# sh wrapper around the launcher: $1 pid file, $2 log file, then the launcher's argv.
WRAPPER = (
    'exec >>"$2" 2>&1; '
    'if [ -e "$1.cancel" ]; then echo "umbridge-balancer: cancelled before it started"; exit 0; fi; '
    "set -C; "
    'if ! { echo "$$ $(uname -n)" >"$1"; } 2>/dev/null; then '
    'echo "umbridge-balancer: $1 exists: HyperQueue restarted this task, not starting it twice"; '
    "exit 75; fi; "
    'shift 2; exec "$@"'
)
EXIT_RESTART_REFUSED = 75


# -- resource requests -----------------------------------------------------------------------------
@dataclass(frozen=True)
class HqRequest:
    """What one server's task asks HQ for."""

    cpus: int | str = 1
    resources: tuple[tuple[str, int | str], ...] = ()
    min_time_s: float | None = None
    ignored: tuple[str, ...] = ()  # directives the Python API cannot express (e.g. --time-limit)


_DURATION_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """HQ durations: ``90s``, ``1m``, ``1h 30m``, ``01:30:00``."""
    t = text.strip()
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", t):
        parts = [int(x) for x in t.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return float(parts[0] * 3600 + parts[1] * 60 + parts[2])
    pieces = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", t)
    if not pieces or re.sub(r"(\d+(?:\.\d+)?)\s*([a-z]+)", "", t).strip():
        raise ValueError(f"not a duration: {text!r}")
    total = 0.0
    for num, unit in pieces:
        if unit not in _DURATION_UNITS:
            raise ValueError(f"unknown time unit {unit!r} in {text!r}")
        total += float(num) * _DURATION_UNITS[unit]
    return total


def read_directives(script: str | Path) -> list[str]:
    """The arguments of the ``#HQ`` lines heading a job script, as ``hq submit script.sh`` reads them."""
    args: list[str] = []
    with open(script, encoding="utf-8", errors="replace") as f:
        head = f.read(32 * 1024)
    for line in head.splitlines():
        s = line.strip()
        if s.startswith("#HQ"):
            args += shlex.split(s[3:])
        elif s and not s.startswith("#"):
            break  # directives only count before the first command
    return args


def _amount(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def hq_request(spec: ServerSpec, gpu_resource: str = "gpus/nvidia") -> HqRequest:
    """The resource request of ``spec`` (directives < resources.cpus/gpus < hq_resources)."""
    key = f"servers.{spec.name}"
    cpus: int | str = 1
    res: dict[str, int | str] = {}
    min_time: float | None = None
    ignored: list[str] = []
    if spec.job_script:
        args = read_directives(spec.job_script)
        i = 0
        while i < len(args):
            arg = args[i]
            name, eq, value = arg.partition("=")
            if not eq and name in ("--cpus", "--resource", "--time-request") and i + 1 < len(args):
                value, i = args[i + 1], i + 1
            try:
                if name == "--cpus":
                    cpus = _amount(value.strip())
                elif name == "--resource":
                    rname, _, ramount = value.partition("=")
                    res[rname.strip()] = _amount(ramount.strip())
                elif name == "--time-request":
                    min_time = parse_duration(value)
                elif name.startswith("-"):
                    ignored.append(arg)
            except ValueError as exc:
                raise ConfigError(f"{key}.job_script", f"#HQ {arg}: {exc}") from None
            i += 1
    if spec.resources.cpus != 1:
        cpus = spec.resources.cpus
    if spec.resources.gpus:
        res[gpu_resource] = spec.resources.gpus
    extra = spec.option("hq_resources", {})
    if not isinstance(extra, dict) or not all(
        isinstance(v, (int, str)) and not isinstance(v, bool) for v in extra.values()
    ):
        raise ConfigError(f"{key}.hq_resources", 'expected a table of amounts, e.g. {"gpus/nvidia" = 1}')
    res.update({str(k): v for k, v in extra.items()})
    cpus = res.pop("cpus", cpus)
    return HqRequest(cpus, tuple(sorted(res.items())), min_time, tuple(ignored))


def reference_job_script(scripts_dir: str | Path, model: str) -> Path | None:
    """The reference balancer's choice: ``hq_scripts/job_<model>.sh``, else ``hq_scripts/job.sh``."""
    for name in (f"job_{model}.sh", "job.sh"):
        p = Path(scripts_dir) / name
        if p.is_file():
            return p
    return None


# -- the blocking HQ client (runs on one dedicated thread) -----------------------------------------
class _StatusSnapshot(Exception):
    """Raised from the wait_for_jobs callback to make it return after one job-info round."""


class _HqClient:
    """All ``hyperqueue`` calls, made from the single executor thread (so they are serialised)."""

    def __init__(self, server_dir: str) -> None:
        import hyperqueue
        from hyperqueue.ffi import ffi  # the compiled module: wait_for_jobs without the tqdm wrapper
        from hyperqueue.ffi.protocol import ResourceRequest

        self._ffi = ffi
        self._rr = ResourceRequest
        self._hq = hyperqueue
        self.client = hyperqueue.Client(server_dir)
        self.ctx = self.client.connection.ctx

    def submit(self, args: list[str], env: dict[str, str], cwd: str, req: HqRequest, name: str) -> int:
        job = self._hq.Job(name=name, max_fails=1)
        min_time = datetime.timedelta(seconds=req.min_time_s) if req.min_time_s else None
        request = self._rr(cpus=req.cpus, resources=dict(req.resources), min_time=min_time)
        # stdout/stderr None: the wrapper appends both to the server's log itself.
        job.program(args, env=env, cwd=cwd, stdout=None, stderr=None, resources=request, crash_limit=1)
        return int(self.client.submit(job).id)

    def status(self, job_ids: list[int]) -> dict[int, dict[str, Any]]:
        """{job id: {finished, failed, total, completed}}; jobs HQ does not know are absent."""
        out: dict[int, dict[str, Any]] = {}

        def snapshot(status: dict[int, dict[str, Any]]) -> None:
            out.update(status)
            raise _StatusSnapshot

        with contextlib.suppress(_StatusSnapshot):
            self._ffi.wait_for_jobs(self.ctx, job_ids, snapshot)
        return out

    def errors(self, job_ids: list[int]) -> dict[int, str]:
        failed = self.client.connection.get_failed_tasks(job_ids)
        return {jid: "; ".join(t.error.strip() for t in tasks.values()) for jid, tasks in failed.items()}

    def forget(self, job_ids: list[int]) -> None:
        for jid in job_ids:
            with contextlib.suppress(Exception):
                self.client.forget(jid)


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.jobs: dict[str, _Job] = {}
        self.mode = "embedded"
        self.server_dir: Path | None = None
        self.hq_bin: str | None = None
        self.cluster: EmbeddedCluster | None = None
        self.requests: dict[str, HqRequest] = {}
        self._client: _HqClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hyperqueue")
        self._poller: asyncio.Task[None] | None = None
        self._server_proc: asyncio.subprocess.Process | None = None
        self._queues: list[str] = []
        self._submitting: set[str] = set()
        self._cancel_early: set[str] = set()
        self._lost: str | None = None
        self._all_ended = asyncio.Event()
        self._host = socket.gethostname()
        self.poll_s = 0.5
        self.kill_grace_s = TASK_GRACE_S

    # -- options ---------------------------------------------------------------------------------
    def _opt(self, key: str, default: Any = None) -> Any:
        return self.cfg.backend_option(key, default)

    def _num(self, key: str, default: float, integer: bool = False) -> Any:
        value = self._opt(key, default)
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            raise ConfigError(f"backend.{key}", f"expected a positive {'integer' if integer else 'number'}")
        return value

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- start -----------------------------------------------------------------------------------
    async def start(self) -> None:
        for k, _ in self.cfg.backend:
            if k not in OPTIONS:
                raise ConfigError(
                    f"backend.{k}", f"unknown key for hyperqueue (known: {', '.join(sorted(OPTIONS))})"
                )
        if importlib.util.find_spec("hyperqueue") is None:  # imported later, on the HQ thread
            raise ConfigError(
                "balancer.scheduler",
                "needs the hyperqueue package: pip install 'umbridge-balancer[hyperqueue]'",
            )
        given_dir = self._opt("server_dir") or os.environ.get("HQ_SERVER_DIR")
        self.mode = self._opt("mode", "server" if given_dir else "embedded")
        if self.mode not in MODES:
            raise ConfigError("backend.mode", f"expected one of {', '.join(MODES)}, got {self.mode!r}")
        self.poll_s = float(self._num("poll_interval_s", 0.5))
        self.kill_grace_s = float(self._num("kill_grace_s", TASK_GRACE_S))
        self.start_timeout_s = float(self._num("start_timeout_s", 30.0))
        self.gpu_resource = str(self._opt("gpu_resource", "gpus/nvidia"))
        self.python = str(self._opt("python", sys.executable))
        hq = self._opt("hq", "hq")
        self.hq_bin = shutil.which(hq) if self.mode != "embedded" else None
        self._check_specs()
        if self.mode == "server":
            if not given_dir:
                raise ConfigError("backend.server_dir", "mode 'server' needs server_dir (or $HQ_SERVER_DIR)")
            self.server_dir = Path(os.path.expanduser(given_dir))  # noqa: ASYNC240 - no I/O
            if not await asyncio.to_thread(self.server_dir.is_dir):
                raise ConfigError(
                    "backend.server_dir",
                    f"no HyperQueue server directory at {self.server_dir} (hq server start)",
                )
        elif self.mode == "hq" and self.hq_bin is None:
            raise ConfigError("backend.hq", f"mode 'hq' needs the hq binary, {hq!r} is not on PATH")
        try:
            if self.mode == "embedded":
                await self._start_embedded()
            elif self.mode == "hq":
                await self._start_hq_server()
            await self._connect()
            if self.mode == "hq":
                await self._add_alloc_queues()
        except BaseException:
            await self._stop_infra()  # no helper or hq server left behind by a failed start
            raise
        self._poller = asyncio.create_task(self._poll_loop(), name="hyperqueue-poll")

    def _check_specs(self) -> None:
        """Turn requests no worker can satisfy into config errors, not servers that never start."""
        self.workers = int(self._num("workers", 1, integer=True))
        self.cpus_per_worker = int(self._num("cpus_per_worker", os.cpu_count() or 1, integer=True))
        for spec in self.cfg.servers:
            key = f"servers.{spec.name}"
            req = hq_request(spec, self.gpu_resource)
            threads = spec.option("threads")
            if threads is not None and (
                isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
            ):
                raise ConfigError(f"{key}.threads", f"expected a positive integer, got {threads!r}")
            if req.ignored:
                log.warning(
                    "%s: #HQ %s not supported through the Python API, ignored", key, " ".join(req.ignored)
                )
            if self.mode == "embedded":
                if req.resources:
                    names = ", ".join(n for n, _ in req.resources)
                    raise ConfigError(
                        f"{key}.resources",
                        f"asks HyperQueue for {names}, but the embedded workers have CPUs only; "
                        "use [backend] server_dir or mode = 'hq' with workers that provide it",
                    )
                if isinstance(req.cpus, int) and req.cpus > self.cpus_per_worker:
                    raise ConfigError(
                        f"{key}.resources.cpus",
                        f"asks for {req.cpus} CPUs but the embedded workers have {self.cpus_per_worker} each "
                        "([backend] cpus_per_worker)",
                    )
            self.requests[spec.name] = req

    async def _start_embedded(self) -> None:
        self.server_dir = Path(self._opt("server_dir") or self.run_dir / "hq-server")
        self.cluster = EmbeddedCluster(
            self.server_dir, self.workers, self.cpus_per_worker, self.run_dir / "hq-embedded.log", self.python
        )
        try:
            await self.cluster.start(self.start_timeout_s)
        except RuntimeError as exc:
            raise ConfigError("balancer.scheduler", str(exc)) from None

    async def _hq(self, *args: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run the hq binary against our server; (exit code, stdout + stderr)."""
        assert self.hq_bin and self.server_dir
        proc = await asyncio.create_subprocess_exec(
            self.hq_bin,
            "--server-dir",
            str(self.server_dir),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")

    async def _start_hq_server(self) -> None:
        """``hq server start --journal`` in its own session; ready once a client can connect."""
        assert self.hq_bin
        self.server_dir = Path(self._opt("server_dir") or self.run_dir / "hq-server")
        for d in (self.run_dir, self.server_dir):
            d.mkdir(parents=True, exist_ok=True)
        journal = str(self._opt("journal") or self.run_dir / "hq-journal.bin")
        with open(self.run_dir / "hq-server.log", "ab") as out:  # noqa: ASYNC230 - local file
            self._server_proc = await asyncio.create_subprocess_exec(
                self.hq_bin,
                "--server-dir",
                str(self.server_dir),
                "server",
                "start",
                "--journal",
                journal,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def _connect(self) -> None:
        assert self.server_dir is not None
        deadline = time.monotonic() + (self.start_timeout_s if self._server_proc else 0)
        while True:
            try:
                self._client = await self._call(_HqClient, str(self.server_dir))
                return
            except Exception as exc:
                proc = self._server_proc
                if time.monotonic() >= deadline or (proc is not None and proc.returncode is not None):
                    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    if self.hq_bin:
                        _, ver = await self._hq("--version")
                        msg += f" (hq binary: {ver.strip()}; the Python package must be the same version)"
                    raise ConfigError(
                        "backend.server_dir", f"cannot connect to {self.server_dir}: {msg}"
                    ) from None
                await asyncio.sleep(0.2)

    async def _alloc_ids(self) -> set[str]:
        code, out = await self._hq("--output-mode=json", "alloc", "list")
        with contextlib.suppress(ValueError, TypeError):
            return {str(q["id"]) for q in json.loads(out)} if code == 0 else set()
        return set()

    async def _add_alloc_queues(self) -> None:
        """``[backend] alloc``: one entry per queue, the arguments after ``hq alloc add`` (see
        hq_scripts/allocation_queue.sh), e.g. ``"slurm --time-limit 1h -- --partition=p1"``."""
        entries = self._opt("alloc", [])
        if isinstance(entries, str):
            entries = [entries]
        before = await self._alloc_ids()
        for i, entry in enumerate(entries):
            argv = shlex.split(entry) if isinstance(entry, str) else entry
            if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
                raise ConfigError(f"backend.alloc[{i}]", "expected a string or a list of strings")
            code, out = await self._hq("alloc", "add", *argv)
            if code != 0:
                raise ConfigError(f"backend.alloc[{i}]", f"hq alloc add failed: {out.strip()[-500:]}")
        self._queues = sorted((await self._alloc_ids()) - before)

    # -- submit ----------------------------------------------------------------------------------
    async def submit(self, launches: list[Launch]) -> None:
        for i, launch in enumerate(launches):
            if i and self.cfg.delay_ms:
                await asyncio.sleep(self.cfg.delay_ms / 1000)
            await self._submit_one(launch)

    def _task_env(self, launch: Launch) -> dict[str, str]:
        env = dict(launch.env)
        threads = launch.spec.option("threads")
        if threads:  # HQ sets OMP_NUM_THREADS to the task's CPU count; the model may want another
            env["OMP_NUM_THREADS"] = str(threads)
        if self.mode == "embedded":  # same machine: "python" in a command means the balancer's venv
            env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
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
        args += launcher_argv(launch.spec.server_command(), self.python)
        req = self.requests.get(launch.spec.name) or hq_request(launch.spec, self.gpu_resource)
        cwd = launch.spec.cwd or str(self.run_dir)
        self._submitting.add(sid)
        try:
            job_id = await self._call(
                self._client.submit, args, self._task_env(launch), cwd, req, f"ub-{sid}"
            )
        except Exception as exc:
            self.events.job_ended(sid, f"HyperQueue submit failed: {exc}", True)
            return
        finally:
            self._submitting.discard(sid)
        self.jobs[sid] = _Job(sid, job_id, pidfile, logfile)
        if sid in self._cancel_early:
            self._cancel_early.discard(sid)
            await self.cancel(sid)

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
            await asyncio.sleep(self.poll_s)
            if self.cluster is not None and not self.cluster.alive():
                code = self.cluster.proc.returncode if self.cluster.proc else None
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
            if st is None:
                self._end(j, "job vanished from HyperQueue (server restarted?)", True)
            elif st["completed"]:
                if j.cancelling:
                    self._end(j, "cancelled", False)
                elif st["failed"]:
                    self._end(
                        j, f"HyperQueue task failed: {poll.errors.get(j.job_id, '?')} (log: {j.log})", True
                    )
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
        await end_group(j.pid, self.kill_grace_s)

    def _spawn_kill(self, j: _Job) -> None:
        task = asyncio.create_task(self._kill_local(j))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def cancel(self, server_id: str) -> None:
        j = self.jobs.get(server_id)
        if j is None:
            if server_id in self._submitting:
                self._cancel_early.add(server_id)
            return
        j.cancelling = True
        if j.pid is None:  # maybe still queued: the wrapper exits at once if it starts later
            with contextlib.suppress(OSError):
                await asyncio.to_thread(Path(f"{j.pidfile}.cancel").touch)
        if self.hq_bin and self.server_dir is not None:
            await self._hq("job", "cancel", str(j.job_id), timeout=30)
        await self._kill_local(j)

    async def close(self) -> None:
        await asyncio.gather(*(self.cancel(sid) for sid in list(self.jobs)), return_exceptions=True)
        if self.jobs and self._poller is not None and not self._poller.done():
            self._all_ended.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_ended.wait(), max(2.0, 4 * self.poll_s))
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
        """Disconnect, then stop what start() started: the helper, or the hq server and its queues."""
        with contextlib.suppress(Exception):
            await self._call(self._drop_client)  # on the thread that created it
        if self.cluster is not None:
            await self.cluster.stop(self.kill_grace_s + 10)
        if self._server_proc is not None:
            for qid in self._queues:
                await self._hq("alloc", "remove", "--force", qid)
            await self._hq("server", "stop")
            try:
                await asyncio.wait_for(self._server_proc.wait(), 15)
            except asyncio.TimeoutError:
                self._server_proc.kill()
                await self._server_proc.wait()
