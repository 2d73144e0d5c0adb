"""Where the HyperQueue server comes from (``[backend] mode``), and stopping what we started.

* ``embedded`` (default without a server directory): a ``LocalCluster`` with ``workers`` local
  workers of ``cpus_per_worker`` cores in a helper process (``hq_embedded``). No ``hq`` binary.
* ``server``: a server somebody already runs: ``[backend] server_dir`` or ``$HQ_SERVER_DIR``.
* ``hq``: ``hq server start --journal`` run by the balancer, plus the allocation queues of
  ``[backend] alloc`` (``hq alloc add ...``), so HQ asks SLURM/PBS for workers as servers queue up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from balancer.backends.commands import run_command
from balancer.backends.hyperqueue.client import HqClient
from balancer.backends.hyperqueue.embedded import EmbeddedCluster
from balancer.config.schema import ConfigError

MODES = ("embedded", "server", "hq")


class HqServer:
    def __init__(self, opts: Any, run_dir: Path) -> None:
        self.opts = opts
        self.run_dir = run_dir
        self.mode = "embedded"
        self.server_dir: Path | None = None
        self.hq_bin: str | None = None
        self.cluster: EmbeddedCluster | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.queues: list[str] = []

    async def resolve(self) -> None:
        """Pick the mode and check what it needs (ConfigError naming the key otherwise)."""
        opts = self.opts
        given_dir = opts.server_dir or os.environ.get("HQ_SERVER_DIR")
        self.mode = opts.mode or ("server" if given_dir else "embedded")  # a valid one: checked at load
        self.hq_bin = shutil.which(opts.hq) if self.mode != "embedded" else None
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
            raise ConfigError("backend.hq", f"mode 'hq' needs the hq binary, {opts.hq!r} is not on PATH")

    async def start(self, call: Callable[..., Awaitable[Any]]) -> Any:
        """Start what the mode needs and connect; the client, made by ``call`` on the HQ thread."""
        if self.mode == "embedded":
            await self._start_embedded()
        elif self.mode == "hq":
            await self._start_hq_server()
        client = await self._connect(call)
        if self.mode == "hq":
            await self._add_alloc_queues()
        return client

    async def _start_embedded(self) -> None:
        self.server_dir = Path(self.opts.server_dir or self.run_dir / "hq-server")
        opts = self.opts
        log = self.run_dir / "hq-embedded.log"
        self.cluster = EmbeddedCluster(self.server_dir, opts.workers, opts.cpus_per_worker, log, opts.python)
        try:
            await self.cluster.start(self.opts.start_timeout_s)
        except RuntimeError as exc:
            raise ConfigError("balancer.scheduler", str(exc)) from None

    async def hq(self, *args: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run the hq binary against our server; (exit code, stdout + stderr)."""
        assert self.hq_bin and self.server_dir
        argv = [self.hq_bin, "--server-dir", str(self.server_dir), *args]
        code, out, err = await run_command(argv, timeout, merge_stderr=True)
        return code, out + err

    async def _start_hq_server(self) -> None:
        """``hq server start --journal`` in its own session; ready once a client can connect."""
        assert self.hq_bin
        self.server_dir = Path(self.opts.server_dir or self.run_dir / "hq-server")
        for d in (self.run_dir, self.server_dir):
            d.mkdir(parents=True, exist_ok=True)
        journal = str(self.opts.journal or self.run_dir / "hq-journal.bin")
        with open(self.run_dir / "hq-server.log", "ab") as out:  # noqa: ASYNC230 - local file
            self.proc = await asyncio.create_subprocess_exec(
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

    async def _connect(self, call: Callable[..., Awaitable[Any]]) -> Any:
        assert self.server_dir is not None
        deadline = time.monotonic() + (self.opts.start_timeout_s if self.proc else 0)
        while True:
            try:
                return await call(HqClient, str(self.server_dir))
            except Exception as exc:
                proc = self.proc
                if time.monotonic() >= deadline or (proc is not None and proc.returncode is not None):
                    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    if self.hq_bin:
                        _, ver = await self.hq("--version")
                        msg += f" (hq binary: {ver.strip()}; the Python package must be the same version)"
                    raise ConfigError(
                        "backend.server_dir", f"cannot connect to {self.server_dir}: {msg}"
                    ) from None
                await asyncio.sleep(0.2)

    async def _alloc_ids(self) -> set[str]:
        code, out = await self.hq("--output-mode=json", "alloc", "list")
        with contextlib.suppress(ValueError, TypeError):
            return {str(q["id"]) for q in json.loads(out)} if code == 0 else set()
        return set()

    async def _add_alloc_queues(self) -> None:
        """``[backend] alloc``: one entry per queue, the arguments after ``hq alloc add`` (see
        hq_scripts/allocation_queue.sh), e.g. ``"slurm --time-limit 1h -- --partition=p1"``."""
        before = await self._alloc_ids()
        for i, entry in enumerate(self.opts.alloc):
            argv = shlex.split(entry)
            code, out = await self.hq("alloc", "add", *argv)
            if code != 0:
                raise ConfigError(f"backend.alloc[{i}]", f"hq alloc add failed: {out.strip()[-500:]}")
        self.queues = sorted((await self._alloc_ids()) - before)

    async def stop(self) -> None:
        """Stop what ``start`` started: the helper, or the hq server and its queues."""
        if self.cluster is not None:
            await self.cluster.stop(self.opts.kill_grace_s + 10)
        if self.proc is not None:
            for qid in self.queues:
                await self.hq("alloc", "remove", "--force", qid)
            await self.hq("server", "stop")
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
