"""The Python API: open a pool from a script or notebook, as dask-jobqueue users open a cluster.

``open_pool`` runs the very balancer ``balancer serve`` runs (``runner.Runner``: the same run
directory, journal, listeners, backend and shutdown) on an event loop of its own in a background
thread. A thread, not a subprocess, because the configuration is validated in the caller (a bad key
raises ``ConfigError`` at the call, with its one line) and a dict configuration needs no file; its own
loop, because a notebook already runs one (``asyncio.run`` would refuse) and a cell's blocking call
must not stall the balancer. Ctrl-C in the notebook interrupts the cell, not the pool: ``close()``
(or the ``with`` block's end, or the interpreter's exit) stops it, letting calls in flight finish.
``scale`` and ``status`` speak the operator API over HTTP with the run's token, exactly as
``balancer scale`` and ``balancer status`` do.

Like ``serve``, opening a pool sets the process's umask to 077: the run's logs and token, and what
the model servers write, stay private to their owner.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import getpass
import http.client
import itertools
import json
import os
import shlex
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from balancer.config.schema import BalancerConfig, ConfigError
from balancer.observe.console import NORMAL, QUIET, VERBOSE, Console
from balancer.runner import Runner, StartError

if TYPE_CHECKING:
    from balancer.ops.reload import ConfigSource

__all__ = ["BalancerPool", "ConfigError", "PoolError", "StartError", "open_pool", "pool_config"]

_SECTIONS = ("servers", "backend", "forecast", "notify", "profiles")
_OPEN_TIMEOUT_S = 120.0  # listeners and the backend's checks (a cluster's sbatch --test-only)
_COUNTER = itertools.count(1)
_LIVE: weakref.WeakSet[BalancerPool] = weakref.WeakSet()
CONSOLE_LEVELS: dict[str, int | None] = {"off": None, "quiet": QUIET, "normal": NORMAL, "verbose": VERBOSE}


class PoolError(RuntimeError):
    """The running pool refused or could not be reached: one line, as ``balancer scale`` prints."""


def open_pool(
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    /,
    *,
    console: str = "quiet",
    **options: Any,
) -> BalancerPool:
    """Start a balancer in this process and return its pool once it listens.

    ``config``: a TOML file (as ``balancer serve --config``), or the same document as a dict
    (relative paths then count from the current directory); ``options``: ``servers=[...]``,
    ``backend={...}`` and the other tables, or any ``[balancer]`` key (``scheduler="slurm"``,
    ``port=4242``), which win over the file's. Without a port in a dict or keywords the pool takes a
    free one (``pool.url`` says which): a notebook may open several. Raises ``ConfigError`` for a
    bad configuration and ``StartError`` when it cannot start (a port taken, the backend's checks).

    ``console``: the life-cycle lines ``balancer serve`` prints, on this process's stderr: "quiet"
    (only a server that failed, with its reason and log file, and a held spec), "normal",
    "verbose" (the scaler's decisions too) or "off".
    """
    try:
        if console not in CONSOLE_LEVELS:
            raise ConfigError("console", f"expected one of {', '.join(CONSOLE_LEVELS)}, got {console!r}")
        setup = _configure(config, options)
    except ConfigError as exc:
        raise exc.with_traceback(None) from None  # one line at the caller, not the parser's frames
    pool = BalancerPool(setup, CONSOLE_LEVELS[console])
    pool._open()
    return pool


def pool_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None, /, **options: Any
) -> BalancerConfig:
    """The validated configuration ``open_pool`` would start with (same arguments), starting nothing."""
    try:
        return _configure(config, options).cfg
    except ConfigError as exc:
        raise exc.with_traceback(None) from None


@dataclass
class _Setup:
    cfg: BalancerConfig
    raw: dict[str, Any]  # the document: ``job_script`` parses it again for another scheduler
    base_dir: Path  # where its relative paths count from
    options: dict[str, Any]  # ``[balancer]`` keys given as keywords: they win, as a command line's
    source: ConfigSource | None  # the file ``balancer reload`` re-reads (None: a dict or keywords)


def _configure(config: str | os.PathLike[str] | Mapping[str, Any] | None, options: dict[str, Any]) -> _Setup:
    from balancer.config.parse import parse_config, read_config
    from balancer.ops.reload import ConfigSource

    options = dict(options)
    sections = {k: options.pop(k) for k in _SECTIONS if k in options}
    path, digest = None, None
    if config is None or isinstance(config, Mapping):
        raw, base_dir = {**dict(config or {}), **sections}, Path.cwd()
        top = raw.get("balancer", {})
        if isinstance(top, Mapping):
            raw["balancer"] = {"port": 0, **top}  # a free port: a notebook may open several pools
    elif isinstance(config, (str, os.PathLike)):
        path = os.path.abspath(config)
        _, digest = read_config(path)  # the file alone must be valid, read as ``serve`` reads it
        raw = {**_toml(path), **sections}
        base_dir = Path(path).parent
    else:
        raise ConfigError("config", f"expected a file path or a dict, got {type(config).__name__}")
    top = raw.get("balancer", {})
    if "run_dir" not in options and not (isinstance(top, Mapping) and top.get("run_dir")):
        options["run_dir"] = _fresh_run_dir()
    cfg = parse_config(raw, base_dir=base_dir, **options)
    # Servers given beside a file are not in it: a reload would drop them, so that pool has no file.
    source = ConfigSource(cfg, path, digest, dict(options)) if path and not sections else None
    return _Setup(cfg, raw, base_dir, options, source)


def _toml(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    return dict(tomllib.loads(Path(path).read_text()))


def _fresh_run_dir() -> str:
    """A run directory of its own per pool (``serve`` names one per process: a notebook has several)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path(".balancer-runs") / f"{stamp}-{os.getpid()}-{next(_COUNTER)}")


class BalancerPool:
    """A running balancer: ``url`` for ``umbridge.HTTPModel``, ``scale``, ``status``, ``job_script``,
    ``close``. Use it as a context manager, or call ``close()``; the interpreter's exit closes it too."""

    def __init__(self, setup: _Setup, console: int | None = QUIET) -> None:
        self.config = setup.cfg
        self._setup = setup
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="balancer-pool", daemon=True)
        self._runner = Runner(setup.cfg, source=setup.source)
        self._console = Console(console) if console is not None else None
        self._detach = self._console.attach(self._runner.bus) if self._console else None
        self._token = ""
        self._closed = False
        self.url = ""
        self.run_dir: Path | None = None

    def _open(self) -> None:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            try:
                fut.result(_OPEN_TIMEOUT_S)
            except concurrent.futures.TimeoutError:  # TimeoutError itself from Python 3.11 on
                raise StartError(f"not started after {_OPEN_TIMEOUT_S:g} s") from None
        except BaseException as exc:  # a StartError, or Ctrl-C while it starts: leave nothing behind
            fut.cancel()
            with contextlib.suppress(BaseException):
                asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(5)  # let it unwind
            self.close()
            if isinstance(exc, StartError):
                raise StartError(str(exc).removeprefix("error: ")) from None
            raise
        _LIVE.add(self)

    async def _start(self) -> None:
        b = await self._runner.open()
        await self._runner.start()
        self.url, self.run_dir, self._token = self._runner.url, b.run_dir, b.token

    def _run(self, coro: Any, timeout: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- the operator's API -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The status API's document (``balancer status --json``): specs, servers by state, calls."""
        return self._call("GET", "/api/status")

    def scale(
        self, spec: str, *, min: int | None = None, max: int | None = None, backlog: int | None = None
    ) -> dict[str, Any]:
        """Change a spec's limits while it runs, as ``balancer scale SPEC --min --max --backlog``;
        returns the limits now in force."""
        given = (("min_servers", min), ("max_servers", max), ("backlog", backlog))
        body = {k: v for k, v in given if v is not None}
        if not body:
            raise ValueError("give at least one of min, max, backlog")
        return self._call("POST", f"/api/specs/{spec}/scale", body)

    def wait_for_servers(self, n: int, spec: str | None = None, timeout: float = 60.0) -> int:
        """Block until ``n`` servers (of ``spec``, else of all specs) are ready; returns how many are.
        Raises ``TimeoutError`` after ``timeout`` s, saying how many were ready."""
        deadline = time.monotonic() + timeout
        while True:
            specs = self.status().get("specs", {})
            ready = sum(s["servers"].get("ready", 0) for name, s in specs.items() if spec in (None, name))
            if ready >= n:
                return int(ready)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ready} of {n} servers ready after {timeout:g} s")
            time.sleep(0.05)

    def job_script(self, spec: str | None = None, scheduler: str = "slurm") -> str:
        """What a job of ``spec`` (default: the first) would run under ``scheduler``, without
        submitting anything: for SLURM the batch script the backend generates (its ``#SBATCH`` lines
        from the spec's own job script), headed by the ``sbatch`` command line that carries the
        resources; for ``local`` and ``hyperqueue``, which generate no script, the launcher command
        each server runs (HyperQueue submits it through its API)."""
        from balancer.backends.registry import make_backend
        from balancer.config.parse import parse_config
        from balancer.launcher.contract import launcher_argv

        setup = self._setup
        raw = dict(setup.raw)
        if scheduler != self.config.scheduler:  # the [backend] table is the other scheduler's
            raw.pop("backend", None)
        try:
            cfg = parse_config(raw, base_dir=setup.base_dir, **{**setup.options, "scheduler": scheduler})
        except ConfigError as exc:
            raise exc.with_traceback(None) from None
        names = [s.name for s in cfg.servers]
        if spec is None:
            spec = names[0]
        if spec not in names:
            raise ConfigError("spec", f"no server spec {spec!r} (specs: {', '.join(names)})")
        sp = next(s for s in cfg.servers if s.name == spec)
        run_dir = self.run_dir or Path(cfg.run_dir or ".")
        be: Any = make_backend(cfg, run_dir)
        if not hasattr(be, "submit_argv"):
            argv = launcher_argv(sp.server_command(), getattr(cfg.backend_options, "python", sys.executable))
            return (
                f"#!/bin/sh\n# {scheduler}: no batch script; each server of spec '{spec}' runs\n"
                f"exec {shlex.join(argv)}\n"
            )
        logs = run_dir / "logs"
        be.job_names.setdefault(spec, f"{be.opts.job_name}-{spec}-{be.run_id}")
        script = be.job_script(sp, logs)
        submit = shlex.join(be.submit_argv(sp, 1, logs / f"job-{spec}.sh", logs))
        first, _, rest = script.partition("\n")
        return f"{first}\n# preview, submitted as: {submit}\n{rest}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._closed:
            raise PoolError("the pool is closed")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        with contextlib.suppress(KeyError, OSError):
            req.add_header("X-Balancer-User", getpass.getuser())  # journaled with a change, as the CLI's
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                doc = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(ValueError, OSError, http.client.HTTPException, AttributeError):
                why = json.loads(exc.read()).get("error", {}).get("message", exc.reason)
                raise PoolError(f"the balancer refused: {exc.code} {why}") from None
            raise PoolError(f"the balancer refused: {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            why = getattr(exc, "reason", exc)
            raise PoolError(f"cannot reach the balancer at {self.url}: {why}") from None
        return dict(doc)

    # -- life cycle ---------------------------------------------------------------------------------
    def close(self, reason: str = "closed") -> None:
        """Stop the pool as ``serve`` stops on SIGTERM: no new calls, calls in flight finish (up to
        ``shutdown_grace_s``), the servers stop, the journal closes. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        try:
            if self._runner.balancer is not None:
                # A start cut short (Ctrl-C, a StartError) has closed some parts already: stop the rest.
                with contextlib.suppress(*(() if self.url else (Exception,))):
                    self._run(self._runner.stop(reason), None)
        finally:
            with contextlib.suppress(Exception):  # its worker threads end here, not after us
                self._run(self._loop.shutdown_default_executor(), 10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()
            if self._console is not None and self._detach is not None:
                self._detach()
                self._console.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> BalancerPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.url
        specs = ", ".join(s.name for s in self.config.servers)
        return f"<BalancerPool {state} scheduler={self.config.scheduler} specs=[{specs}]>"


def _close_all() -> None:
    """A notebook kernel or script that ends without ``close()`` leaves no model servers behind."""
    for pool in list(_LIVE):
        with contextlib.suppress(Exception):
            pool.close("interpreter exit")


# Before the interpreter's thread pools shut down (``atexit`` runs after them, when the shutdown's
# ``asyncio.to_thread`` work, the profile store's last write, could no longer run).
getattr(threading, "_register_atexit", atexit.register)(_close_all)
