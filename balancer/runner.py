"""One balancer's life cycle: run directory, token, journal, listeners, signals, start and stop.

``balancer serve``, the tests' in-process harness and the in-process benchmarks all run a balancer
through ``Runner``, so the order is written once: the run directory (private, 0700) and its token,
the journal on the bus, "auto" resources sized, the backend, the wiring (``app.Balancer``), the
client and control listeners, the URL files, the components' start; at the end the client port
stops accepting, the components stop (in-flight calls finish), the listeners and the journal close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from balancer.config.schema import BalancerConfig, ConfigError
from balancer.control import registry
from balancer.http.urls import url_host
from balancer.observe.console import NORMAL, Console
from balancer.observe.events import Ev, EventBus
from balancer.observe.journal import Journal

if TYPE_CHECKING:
    from balancer.app import Balancer
    from balancer.backends.base import Backend
    from balancer.http.server import FrontServer
    from balancer.ops.reload import ConfigSource

BackendFactory = Callable[[BalancerConfig, Path], "Backend"]


class StartError(Exception):
    """The balancer could not start (a listener, the backend's checks): one line, exit code 2."""


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (a login node's 1024 is a few hundred
    clients); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def private_run_dir(cfg: BalancerConfig) -> Path:
    """The run directory, private to its owner (0700): it holds the token, the journal, the logs.
    The umask makes all the balancer, its launchers and (through sbatch) their jobs write 0600."""
    os.umask(0o077)
    if cfg.run_dir:
        d = Path(cfg.run_dir)
    else:
        d = Path(".balancer-runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    return d.resolve()


def run_token(run_dir: Path) -> str:
    """The launchers' token, written 0600 into the run directory. A restart with the same run
    directory keeps it, so its launchers can register again."""
    token_file = run_dir / "token"
    old = token_file.read_text().strip() if token_file.is_file() else ""
    token = os.environ.get("UMBRIDGE_BALANCER_TOKEN") or old or secrets.token_urlsafe(32)
    token_file.touch(mode=0o600)
    token_file.chmod(0o600)
    token_file.write_text(token)
    return token


def http_url(host: str, port: int) -> str:
    """A URL for ``host``; a wildcard address (every interface) becomes this machine's name, which
    launchers on other nodes can reach."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://{url_host(host)}:{port}"


async def _listen_control(control: FrontServer, cfg: BalancerConfig, run_dir: Path) -> int:
    """The control listener on ``control_host``. Port 0 takes the port this run directory had
    (``control_url``): after a restart the launchers, who know that URL, find it again; if it is
    taken now, a free one (those launchers are then lost to it)."""
    port = cfg.control_port
    if port == 0:
        with contextlib.suppress(OSError, ValueError):
            port = urlsplit((run_dir / "control_url").read_text().strip()).port or 0
        with contextlib.suppress(OSError):
            return int(await control.listen(cfg.control_host, port))
        port = 0
    return int(await control.listen(cfg.control_host, port))


class Runner:
    """``open()`` builds and listens, ``start()`` starts, ``stop()`` undoes both in order; ``serve()``
    is the whole run of ``balancer serve`` with its signals and its lines on stdout/stderr.

    ``run_dir``/``token``: given (tests, benchmarks), else the private run directory and its token;
    ``journal``: whether the bus is journaled (to ``cfg.journal`` or RUN_DIR/journal.jsonl)."""

    def __init__(
        self,
        cfg: BalancerConfig,
        backend: BackendFactory | None = None,
        *,
        source: ConfigSource | None = None,
        run_dir: Path | None = None,
        token: str | None = None,
        journal: bool = True,
        clock: Callable[[], float] = time.monotonic,
        bus: EventBus | None = None,
        console: int | None = None,
    ) -> None:
        self.cfg = cfg
        self._console_level = console  # serve()'s console on stderr: observe/console.py's level
        self._backend_for = backend
        self._source = source
        self._run_dir = run_dir
        self._token = token
        self._journaled = journal
        self.clock = clock
        self.bus = bus or EventBus()
        self.journal: Journal | None = None
        self.balancer: Balancer | None = None
        self.url = ""
        self.control_url = ""
        self.port = 0

    @property
    def app(self) -> Balancer:
        assert self.balancer is not None, "Runner.open() first"
        return self.balancer

    async def open(self) -> Balancer:
        """Run directory, token, journal, backend, wiring, listeners; raises StartError (and leaves
        nothing open) when the backend cannot be built or a port cannot be had."""
        from balancer.app import Balancer
        from balancer.http.messages import HttpLimits
        from balancer.ops.reload import ConfigSource
        from balancer.profiling.autosize import size_specs

        cfg = self.cfg
        run_dir = self._run_dir if self._run_dir is not None else private_run_dir(cfg)
        token = self._token if self._token is not None else run_token(run_dir)
        if self._journaled:
            self.journal = Journal(cfg.journal or run_dir / "journal.jsonl")
            self.bus.subscribe(self.journal)
        source = self._source or ConfigSource(cfg)  # what a reload compares a file with: "auto" unsized
        cfg = await size_specs(cfg, self.bus)  # "auto" resources from the profile store, before any backend
        try:
            backend = (self._backend_for or _make_backend)(cfg, run_dir)
        except ConfigError as exc:
            self._close_journal()
            raise StartError(str(exc)) from exc
        # Leave descriptors for upstream connections, logs and subprocesses: never let clients exhaust them.
        conns = max(64, min(16384, raise_fd_limit() // 2))
        limits = HttpLimits(max_body=cfg.max_body_bytes, max_connections=conns)
        b = Balancer(cfg, self.bus, run_dir, token, backend, self.clock, limits, source)
        self.balancer = b
        where = f"{cfg.host}:{cfg.port}"
        try:
            self.port = await b.front.listen(cfg.host, cfg.port)
            where = f"{cfg.control_host}:{cfg.control_port or 'any'} (control)"
            control_port = await _listen_control(b.control_front, cfg, run_dir)
        except OSError as exc:
            await b.front.close()
            self._close_journal()
            raise StartError(f"error: cannot listen on {where}: {exc.strerror}") from exc
        self.url = f"http://{url_host(cfg.host)}:{self.port}"
        self.control_url = http_url(cfg.control_host, control_port)
        (run_dir / "url").write_text(self.url + "\n")  # for the operator CLI (balancer forecast ...)
        (run_dir / "control_url").write_text(self.control_url + "\n")  # a restart listens there again
        return b

    async def start(self) -> None:
        """The components' start (backend, scaler; the first forecast before the scaler where the
        policy reads it, else beside the first jobs' wait); journals ``balancer.started``.
        A ConfigError of the backend's start closes the listeners and raises StartError."""
        b, cfg = self.app, self.cfg
        try:
            await b.start(self.url, self.control_url)
        except ConfigError as exc:
            await self._close_listeners()
            self._close_journal()
            raise StartError(str(exc)) from exc
        self.bus.emit(
            Ev.BALANCER_STARTED, url=self.url, host=cfg.host, port=self.port, control_url=self.control_url,
            scheduler=cfg.scheduler, pid=os.getpid(), config=b.reloader.path, run_dir=str(b.run_dir),
            specs=[s.name for s in cfg.servers],
            loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],  # uvloop or asyncio
        )  # fmt: skip

    async def stop(self, reason: str) -> None:
        """Stop accepting connections, let in-flight calls finish, stop the servers (launchers hear
        "stop" and report their exits on the control port, still open), then close the rest."""
        b = self.app
        await b.front.stop_listening()
        await b.shutdown(reason)
        await self._close_listeners()
        self._close_journal()

    async def serve(self) -> int:
        """Run until SIGINT/SIGTERM, then shut down gracefully; SIGHUP reloads the configuration
        file. Returns the exit code: 0, or 2 with one line on stderr when the start failed."""
        loop = asyncio.get_running_loop()
        console = Console(NORMAL if self._console_level is None else self._console_level)
        detach = console.attach(self.bus)
        try:
            return await self._serve(loop)
        finally:
            detach()
            console.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> int:
        try:
            b = await self.open()
            # Signals from here on: a SIGINT while the backend starts (or the first forecast is
            # awaited) lets start() finish and then shuts down gracefully, instead of a traceback.
            stop = asyncio.Event()
            reason = ["signal"]

            def on_signal(sig: signal.Signals) -> None:
                reason[0] = sig.name
                stop.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig)
            hup: list[bool] = []  # a SIGHUP before the start is done reloads right after it
            loop.add_signal_handler(signal.SIGHUP, lambda: hup.append(True))
            await self.start()
        except StartError as exc:
            if self.balancer is not None:  # a failed start is never taken for a running balancer
                with contextlib.suppress(OSError):
                    (self.balancer.run_dir / "url").unlink()
            print(f"balancer: {exc}", file=sys.stderr)
            return 2
        print(
            f"balancer: serving UM-Bridge on {self.url} (owner only), launchers' control API on "
            f"{self.control_url} (scheduler {self.cfg.scheduler}, run dir {b.run_dir})",
            flush=True,
        )
        reloads: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = asyncio.ensure_future(_reload_on_signal(b))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        if hup:
            on_hup()
        # In the user's registry while it serves: the CLI finds it from any directory (registry.py).
        entered = registry.register(b.run_dir, self.url, b.reloader.path, self.cfg.scheduler)
        try:
            await stop.wait()
            loop.remove_signal_handler(signal.SIGHUP)
            print(f"balancer: {reason[0]}: stopping (grace {b.cfg.shutdown_grace_s:g} s)", flush=True)
            await self.stop(reason[0])
        finally:
            registry.unregister(entered)
            with contextlib.suppress(OSError):  # no command takes this run for a running balancer
                (b.run_dir / "url").unlink()
        print("balancer: stopped", flush=True)
        return 0

    async def _close_listeners(self) -> None:
        await self.app.front.close()
        await self.app.control_front.close()

    def _close_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()


def _make_backend(cfg: BalancerConfig, run_dir: Path) -> Backend:
    from balancer.backends.registry import make_backend

    return make_backend(cfg, run_dir)


async def _reload_on_signal(balancer: Balancer) -> None:
    """SIGHUP: the same reload as ``balancer reload``; its outcome is one line here and journaled."""
    from balancer.observe.console import describe_reload

    ok, out = await balancer.reloader.reload(trigger="signal")
    print(f"balancer: SIGHUP: {describe_reload(out) if ok else f'reload rejected: {out}'}", flush=True)
