"""Launcher: runs one model server inside an allocation and keeps it on a lease.

``python -m balancer.launcher -- <server command>`` picks a free port, exports ``PORT``, starts the
server in its own process group, waits until its ``/Info`` answers, registers the URL with the
balancer (token from ``UMBRIDGE_BALANCER_TOKEN``) and then long-polls a lease. The server is stopped
when the balancer says so, when the balancer has been unreachable for the lease time, or on
SIGTERM/SIGINT; the launcher exits with the server's exit code. In a preemptible job
(``UMBRIDGE_BALANCER_PREEMPTIBLE=1``) the first SIGTERM the balancer did not ask for is the scheduler
preempting the job: it is reported first, so the balancer marks the server preempted (its calls in
flight go to other servers, uncharged) before the server stops and hands the CPUs back early.
Nothing is orphaned if the balancer dies. With ``UMBRIDGE_LOADBALANCER_COMM_FILEDIR`` set it also
writes the reference balancer's ``url-<jobid>.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from balancer.launcher.child import Started
from balancer.launcher.child import start as start_model
from balancer.launcher.client import request
from balancer.launcher.contract import (
    ALIVE,
    ENV_LEASE,
    ENV_MONITOR,
    ENV_PREEMPTIBLE,
    ENV_PROBE,
    ENV_REGISTRATION_DIR,
    ENV_SOCKET,
    ENV_SPEC,
    ENV_STARTUP,
    ENV_TOKEN,
    ENV_URL,
    dir_problem,
    ours,
    probe_time,
    write_atomic,
)
from balancer.launcher.place import job_id, own_log, server_id
from balancer.launcher.procgroup import GRACE_S, end_child

PREEMPTED_GRACE_S = 0.5  # a preempted server's model: SIGTERM, then SIGKILL after this

USAGE_KEEP = 100  # unsent usage samples kept while the balancer is away (the oldest go first)


def log(msg: str) -> None:
    print(f"[launch {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _stop_and_mtime(stop: Path, alive: Path) -> tuple[bool, float | None]:
    """Whether the balancer asked to stop, and its heartbeat's time: only regular files of ours count
    (a symlink or another user's file is no stop and no heartbeat)."""
    try:
        st = os.lstat(alive)
        mtime: float | None = st.st_mtime if ours(st) else None
    except OSError:
        mtime = None
    try:
        told = ours(os.lstat(stop))
    except OSError:
        told = False
    return told, mtime


def _sampler(pid: int) -> Any:
    """A ``UsageSampler`` of ``pid``, built on a worker thread: psutil (and NVML) load there, beside
    the model's start, not before it."""
    from balancer.launcher.usage import UsageSampler

    return UsageSampler(pid)


def _offer_usage(path: Path, batch: list[dict[str, Any]]) -> bool:
    """Write a usage batch for file registration, unless the balancer has not taken the last one."""
    if path.exists():
        return False
    write_atomic(path, json.dumps({"usage": batch}))
    return True


class _Child:
    """asyncio's view of the started model's process (a ``Popen``: started before asyncio was
    imported): ``pid``, ``returncode``, ``await wait()``; ``waitpid`` blocks a worker thread."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._done = asyncio.get_running_loop().run_in_executor(None, popen.wait)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self._done.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._done)  # a caller's timeout does not end the wait


class Launcher:
    def __init__(self, command: list[str], started: Started | None = None) -> None:
        self.command = command
        self.started = started  # the model, when ``python -m balancer.launcher`` started it first
        self.balancer = os.environ.get(ENV_URL, "").rstrip("/")
        self.token = os.environ.get(ENV_TOKEN, "")
        self.sid = server_id()
        reg = os.environ.get(ENV_REGISTRATION_DIR)
        self.reg_dir = Path(reg) if reg else None
        self.lease_s = float(os.environ.get(ENV_LEASE, "30"))
        self.startup_s = float(os.environ.get(ENV_STARTUP, "120"))
        self.probe_s = probe_time(self.startup_s, os.environ.get(ENV_PROBE))
        self.probe_set = bool(os.environ.get(ENV_PROBE))  # the spec asked to fail at the probe time
        self.port: int | None = None
        self.ready = False  # /Info answered: a later exit is no failed start
        self.proc: _Child | None = None
        self.stop_reason: str | None = None
        self.stop_now = False  # the balancer said: end the model at once (preempted, calls moved)
        self.balancer_said_stop = False  # then the balancer knows; otherwise we report the exit
        self.stopped = asyncio.Event()
        try:
            self.monitor_s = float(os.environ.get(ENV_MONITOR) or 5.0)
        except ValueError:
            self.monitor_s = 5.0
        self.usage: deque[dict[str, Any]] = deque(maxlen=USAGE_KEEP)  # sent with the next lease poll
        self.preemptible = os.environ.get(ENV_PREEMPTIBLE) == "1"
        self.preempt_notice: asyncio.Future[None] | None = None  # the report of a preemption, once

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log(f"stopping server: {reason}")
        self.stopped.set()

    def on_sigterm(self) -> None:
        """SIGTERM ends the server, except the first one a preemptible job gets before the balancer
        said stop: that is the scheduler taking the job back (a preemption). The balancer is told
        first (so the calls in flight that break are re-queued as preempted, not failed) and the
        server stops on its answer, a second SIGTERM or the job's kill."""
        unasked = not (self.stopped.is_set() or self.balancer_said_stop)
        http = bool(self.balancer) and self.reg_dir is None  # file registration: a plain stop
        if not (self.preemptible and unasked and self.preempt_notice is None and http):
            self.request_stop("signal SIGTERM")
            return
        log("SIGTERM on a preemptible job: preempted; telling the balancer before stopping")
        self.preempt_notice = asyncio.ensure_future(self._report_preempted())

    async def _report_preempted(self) -> None:
        try:
            status, body = await self._post(f"/api/servers/{self.sid}/preempted", {"signal": "SIGTERM"}, 5)
        except (asyncio.TimeoutError, OSError) as exc:  # the lease goes on; the job's kill ends us
            log(f"could not report the preemption: {type(exc).__name__}: {exc}")
            return
        if status >= 400 or body.get("stop"):
            self.balancer_said_stop = status < 400  # it knows; a refusal (401) still ends the server
            self.request_stop("preempted; the balancer re-queues the calls in flight")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "signal SIGINT")
        child = self.started or start_model(self.command)  # child.py: port, environment, process
        port, sock, url, probe = child.port, child.sock, child.url, child.probe
        self.port = port
        self.proc = _Child(child.popen)
        log(f"server pid {self.proc.pid} on {child.where}: {' '.join(self.command)}")
        monitor = None
        if self.monitor_s > 0 and (self.balancer or self.reg_dir is not None):
            monitor = asyncio.create_task(self._monitor(self.proc.pid), name="usage-monitor")
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            ok = self.ready = await self._wait_ready(probe, exited)
            if ok:
                self._write_url_file(url)
                if self.reg_dir is not None:
                    await self._file_lease(self._doc(url, None if sock else port), exited)
                elif self.balancer:
                    await self._lease(self._doc(url, None if sock else port), exited)
                else:
                    await asyncio.wait(
                        [exited, asyncio.ensure_future(self.stopped.wait())],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
        finally:
            if monitor is not None:
                monitor.cancel()
            code = await self._stop_server(exited)
            if sock:
                with contextlib.suppress(OSError):
                    os.unlink(sock)
            if self.reg_dir is not None and not self.balancer_said_stop:
                report = json.dumps(await self._exit_doc(code))
                await asyncio.to_thread(write_atomic, self.reg_dir / f"{self.sid}.exited.json", report)
            elif self.balancer and not self.balancer_said_stop:
                await self._report_exit(code)
        log(f"server exited with code {code}")
        return code

    async def _wait_ready(self, base: str, exited: asyncio.Future[int]) -> bool:
        """Poll /Info until it answers 200. At the probe time (``ENV_PROBE``) say what was seen
        instead of waiting silently: a model that listens on another port than ``$PORT`` fails at
        once; one that listens on nothing yet may still be loading, so it gets the whole start-up
        timeout, unless the spec set ``ENV_PROBE`` itself (then it fails at the probe time)."""
        start = time.monotonic()
        probe_at = start + self.probe_s
        deadline = start + (self.probe_s if self.probe_set else self.startup_s)
        probed = False
        # A model is up a few hundred ms after its start: polls at 5 ms, slowly spaced out to 50 ms,
        # notice it within a few ms (a refused connection costs ~0.1 ms; 1.5x steps up to 250 ms
        # took ~0.1 s on average to notice it).
        delay = 0.005
        while time.monotonic() < deadline and not self.stopped.is_set():
            if exited.done():
                self.stop_reason = f"model server exited with code {exited.result()} before it answered /Info"
                log(self.stop_reason)
                return False
            with contextlib.suppress(asyncio.TimeoutError, OSError):
                status, _ = await request("GET", f"{base}/Info", 2, read_body=False)
                if status == 200:
                    return True
            if not probed and time.monotonic() >= probe_at:
                probed = True
                if self._wrong_port():
                    return False
            await asyncio.sleep(delay)
            delay = min(delay * 1.25, 0.05)
        if not self.stopped.is_set() and not probed and self._wrong_port():
            return False
        if not self.stopped.is_set():
            waited = time.monotonic() - start
            state = f"exited with code {exited.result()}" if exited.done() else "process still running"
            if not exited.done() and not self.probe_set:
                state += "; if the model is only slow to start, raise the spec's startup_timeout_s"
            self.request_stop(
                f"started, but nothing answers /Info on {self._where()} after {waited:.0f} s ({state})"
            )
        return False

    def _where(self) -> str:
        return f"port {self.port}" if self.port and not os.environ.get(ENV_SOCKET) else "its socket"

    def _wrong_port(self) -> bool:
        """At the probe time: stop at once if the model listens, but not where it was told to."""
        from balancer.launcher.ports import listening_ports  # psutil: only at the probe time

        ports = listening_ports(self.proc.pid) if self.proc is not None else None
        if not self.port or os.environ.get(ENV_SOCKET) or ports is None or self.port in ports:
            log(f"nothing answers /Info on {self._where()} after {self.probe_s:g} s yet; still waiting")
            return False
        if ports:
            shown = ", ".join(str(p) for p in sorted(ports)[:5])
            self.request_stop(
                f"started, but it listens on port {shown}, not on $PORT={self.port}: the model must "
                "listen on the port in the PORT environment variable"
            )
            return True
        log(
            f"nothing answers /Info on port {self.port} after {self.probe_s:g} s (no port open yet: loading?)"
        )
        return False

    def _write_url_file(self, url: str) -> None:
        d = os.environ.get("UMBRIDGE_LOADBALANCER_COMM_FILEDIR")
        if d:
            path = Path(d) / f"url-{job_id()}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, url)  # readers never see a half-written URL

    async def _post(self, path: str, doc: dict, timeout: float) -> tuple[int, dict]:
        status, body = await request("POST", f"{self.balancer}{path}", timeout, doc, self.headers)
        return status, body if isinstance(body, dict) else {}

    def _doc(self, url: str, port: int | None) -> dict[str, Any]:
        """What registration tells the balancer."""
        return {
            "server": self.sid,
            "spec": os.environ.get(ENV_SPEC, ""),
            "url": url,
            "host": urlparse(url).hostname if port else None,
            "port": port,
            "job": job_id(),
            "pid": self.proc.pid if self.proc else None,
            "launcher_pid": os.getpid(),
        }

    async def _file_lease(self, doc: dict[str, Any], exited: asyncio.Future[int]) -> None:
        """Registration and lease through the shared directory (filereg.py): write the
        registration, then stop on ``<server>.stop`` or when ``balancer.alive`` has not changed for
        the lease time (measured on our clock: the two machines' clocks may differ)."""
        assert self.reg_dir is not None
        why = await asyncio.to_thread(dir_problem, self.reg_dir)
        if why:  # the token would be readable there, its stop files another user's
            self.balancer_said_stop = True  # nothing goes into that directory, not even our exit
            self.request_stop(f"will not register through {self.reg_dir}: {why}")
            return
        stop, alive = self.reg_dir / f"{self.sid}.stop", self.reg_dir / ALIVE
        usage_file = self.reg_dir / f"{self.sid}.usage.json"
        text = json.dumps({**doc, "token": self.token})
        await asyncio.to_thread(write_atomic, self.reg_dir / f"{self.sid}.register.json", text)
        log(f"registered {doc['url']} as {self.sid} through {self.reg_dir}")
        seen, changed = None, time.monotonic()
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(self.stopped.wait())
        try:
            while not self.stopped.is_set() and not exited.done():
                told, mtime = await asyncio.to_thread(_stop_and_mtime, stop, alive)
                if told:
                    self.balancer_said_stop = True
                    self.request_stop("balancer asked to stop (stop file)")
                    return
                batch = self._take_usage()  # most polls have none: no thread hop for them
                if batch and not await asyncio.to_thread(_offer_usage, usage_file, batch):
                    self._keep_usage(batch)
                if mtime != seen:
                    seen, changed = mtime, time.monotonic()
                elif time.monotonic() - changed > self.lease_s:
                    self.balancer_said_stop = True  # nobody to tell
                    self.request_stop(f"{alive} unchanged for {self.lease_s:g} s (lease expired)")
                    return
                await asyncio.wait([exited, stop_wait], timeout=min(1.0, self.lease_s / 10))
        finally:
            stop_wait.cancel()

    async def _lease(self, doc: dict[str, Any], exited: asyncio.Future[int]) -> None:
        last_ok = time.monotonic()
        registered = False
        wait = max(0.5, self.lease_s / 3)
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(self.stopped.wait())
        try:
            while not self.stopped.is_set() and not exited.done():
                if time.monotonic() - last_ok > self.lease_s:
                    self.balancer_said_stop = True  # nobody to tell
                    self.request_stop(f"balancer unreachable for {self.lease_s:g} s (lease expired)")
                    return
                batch: list[dict[str, Any]] = []
                try:
                    if not registered:
                        req = asyncio.ensure_future(self._post("/api/servers/register", doc, 10))
                    else:
                        batch = self._take_usage()  # samples ride on the lease poll: no extra requests
                        ask = {"wait": wait, "usage": batch} if batch else {"wait": wait}
                        lease = self._post(f"/api/servers/{self.sid}/lease", ask, wait + 10)
                        req = asyncio.ensure_future(lease)
                    waits: list[asyncio.Future[Any]] = [req, exited, stop_wait]
                    # A request that hangs (the link went silent: no answer, no reset) ends with the
                    # lease, not with its own longer timeout: the loop's top then stops the server.
                    left = last_ok + self.lease_s - time.monotonic() + 0.01
                    done, _ = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                    if req not in done:
                        req.cancel()
                        if not done:
                            self._keep_usage(batch)
                            continue
                        return
                    status, body = req.result()
                except (asyncio.TimeoutError, OSError) as exc:
                    self._keep_usage(batch)
                    log(f"balancer not reachable: {type(exc).__name__}: {exc}")
                    await asyncio.wait([exited, stop_wait], timeout=min(1.0, self.lease_s / 10))
                    continue
                last_ok = time.monotonic()
                if body.get("register"):  # a restarted balancer: register again, keep the server
                    registered = False
                    log("balancer restarted: registering again")
                    continue
                if status >= 400 or body.get("stop"):
                    self.balancer_said_stop = True
                    self.stop_now = bool(body.get("now"))
                    refused = status == 401
                    self.request_stop(
                        "balancer refused our token (401)"
                        if refused
                        else body.get("reason", "balancer asked to stop")
                    )
                    return
                if not registered:
                    registered = True
                    log(f"registered {doc['url']} as {self.sid}")
        finally:
            stop_wait.cancel()

    async def _monitor(self, pid: int) -> None:
        """Sample the server's tree every ``monitor_s`` on a worker thread (psutil and NVML block);
        the samples wait in ``self.usage`` for the next lease poll. A sample that fails for a
        reason the sampler does not expect is logged once and skipped: monitoring never stops the
        server."""
        sampler = await asyncio.to_thread(_sampler, pid)
        warned = False
        try:
            while True:
                await asyncio.sleep(self.monitor_s)
                try:
                    self.usage.append(await asyncio.to_thread(sampler.sample))
                except Exception as exc:
                    if not warned:
                        warned = True
                        log(f"usage sample failed: {type(exc).__name__}: {exc}")
        finally:
            sampler.close()

    def _take_usage(self) -> list[dict[str, Any]]:
        batch = list(self.usage)
        self.usage.clear()
        return batch

    def _keep_usage(self, batch: list[dict[str, Any]]) -> None:
        """A batch that did not reach the balancer goes back before the newer samples."""
        if batch:
            self.usage = deque([*batch, *self.usage], maxlen=USAGE_KEEP)

    async def _stop_server(self, exited: asyncio.Future[int]) -> int:
        assert self.proc is not None
        # Preempted: the balancer re-queues the calls in flight elsewhere, so nothing is owed to
        # them; the CPUs go back at once rather than after a model's graceful shutdown (an
        # umbridge server waits for its running calls), which held them up to GRACE_S (measured:
        # 0.3-9.8 s after the notice, bench/live_replay.py) while the preempting job waited.
        grace = PREEMPTED_GRACE_S if self.stop_now or self.preempt_notice is not None else GRACE_S
        code = await end_child(self.proc, grace)
        return 128 - code if code < 0 else code

    async def _exit_doc(self, code: int) -> dict[str, Any]:
        """The exit report; before ready it adds the log file and the model's last stderr lines."""
        doc: dict[str, Any] = {"code": code, "why": self.stop_reason, "ready": self.ready}
        if not self.ready:
            doc["log"], doc["stderr"] = await asyncio.to_thread(own_log)
        return doc

    async def _report_exit(self, code: int) -> None:
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await self._post(f"/api/servers/{self.sid}/exited", await self._exit_doc(code), 5)


def main(argv: list[str] | None = None, started: Started | OSError | None = None) -> int:
    """``started``: the model as ``__main__`` started it before importing this module (or why it
    could not); None: it is started here."""
    p = argparse.ArgumentParser(prog="python -m balancer.launcher", description=__doc__.split("\n")[0])
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the model server command")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        print("launch: error: give the model server command after --", file=sys.stderr)
        return 2
    try:
        if isinstance(started, OSError):
            raise started
        return asyncio.run(Launcher(cmd, started).run())
    except FileNotFoundError as exc:
        print(f"launch: error: cannot start {cmd[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
