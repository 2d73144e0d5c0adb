"""Registration and leases through a shared directory, for sites whose compute nodes cannot open a
connection to the login node (``[balancer] registration = "file"``).

The directory (``registration_dir``, default ``RUN_DIR/registration``) must be on a file system both
sides see. A launcher writes ``<server>.register.json`` (its registration, with the run's token),
its usage samples in ``<server>.usage.json`` (a new batch once the balancer took the last one)
and, when its model server exits, ``<server>.exited.json``; the balancer answers a stop with an
empty ``<server>.stop`` file and proves it is alive by touching ``balancer.alive`` every third of
the lease. A launcher that sees ``<server>.stop``, or a ``balancer.alive`` unchanged for the lease
time, stops its server, exactly as with the HTTP lease. Files are read and written on a worker
thread (a shared file system can be slow); the registration itself goes through the same control
code as over HTTP.

The directory holds the token (in the launchers' registrations) and its files stop servers, so it
must be this user's alone: an existing one owned by another user, or writable by group or others,
is refused at the start (one line, exit 2); a new one is made 0700. Nothing there is followed or
trusted blindly: files are created with ``O_EXCL | O_NOFOLLOW`` (a symlink ``balancer.alive`` is
replaced, never written through), and only regular files of this user, of at most MAX_FILE bytes,
opened with ``O_NONBLOCK | O_NOFOLLOW``, are read; anything else (another user's file, a symlink, a
FIFO) is removed unread, so it can neither stop a server nor hold up the poll loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from balancer.config.schema import ConfigError
from balancer.control.api import Control
from balancer.launcher.contract import ALIVE, UnsafeFile, dir_problem, ours, read_bounded
from balancer.observe.events import Ev, EventBus

POLL_S = 0.5
MAX_FILE = 4 << 20  # bytes of one registration, usage or exit file (a usage batch is tens of KiB)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_STOPPED = frozenset({Ev.SERVER_STOPPING, Ev.SERVER_STOPPED, Ev.SERVER_FAILED})


class FileRegistration:
    def __init__(self, directory: Path, control: Control, bus: EventBus, lease_s: float) -> None:
        self.dir = directory
        self.control = control
        self.lease_s = lease_s
        self._stops: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        bus.subscribe(self._on_event)

    def reconfigure(self, lease_s: float) -> None:
        """A reloaded ``lease_s``: how often the launchers' heartbeat files are touched from now on."""
        self.lease_s = lease_s

    def _on_event(self, e: dict[str, Any]) -> None:
        if e["ev"] in _STOPPED:
            self._stops.add(e["server"])  # its launcher learns it from a stop file

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)
        self._task = asyncio.create_task(self._loop(), name="file-registration")

    def _prepare(self) -> None:
        """Make the directory (0700) or check the one there; raises ConfigError when it is unsafe."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError("registration_dir", f"cannot create {self.dir}: {exc.strerror}") from None
        why = dir_problem(self.dir)
        if why:
            raise ConfigError("registration_dir", f"{self.dir} is unsafe: {why}")
        touch_ours(self.dir / ALIVE)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._stops:  # the last stops (shutdown) must reach the launchers too
            await asyncio.to_thread(self._write_stops, self._take_stops())

    def _take_stops(self) -> list[str]:
        stops, self._stops = sorted(self._stops), set()
        return stops

    async def _loop(self) -> None:
        beat = 0.0
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            touch = now - beat >= self.lease_s / 3
            if touch:
                beat = now
            found = await asyncio.to_thread(self._pass, self._take_stops(), touch)
            for kind, sid, doc in found:
                if kind == "register":
                    await self._register(sid, doc)
                elif kind == "usage":
                    s = self.control.pool.servers.get(sid)
                    if s is not None:
                        self.control.usage(s, doc.get("usage"))
                else:
                    self.control.exited_doc(sid, doc)
            await asyncio.sleep(POLL_S)

    async def _register(self, sid: str, doc: dict[str, Any]) -> None:
        if not isinstance(doc.get("token"), str) or not self.control.token_ok(doc["token"]):
            self.control.refused(f"{self.dir}/{sid}.register.json", None)
            self._stops.add(sid)
            return
        status, _, _ = await self.control.register_doc(doc)
        if status != 200:
            self._stops.add(sid)

    def _pass(self, stops: list[str], touch: bool) -> list[tuple[str, str, dict[str, Any]]]:
        """One look at the directory (worker thread): write stops, heartbeat, collect reports."""
        self._write_stops(stops)
        if touch:
            touch_ours(self.dir / ALIVE)
        found = []
        for name in sorted(os.listdir(self.dir)):
            for kind in ("register", "exited", "usage"):
                suffix = f".{kind}.json"
                if name.endswith(suffix) and not name.startswith("."):
                    path = self.dir / name
                    try:
                        data = read_ours(path)
                        doc = json.loads(data) if data is not None else None
                    except (OSError, ValueError):
                        continue  # half a file from a writer that does not rename: next pass
                    with contextlib.suppress(OSError):
                        path.unlink()  # read, or not ours (removed unread)
                    if isinstance(doc, dict):
                        found.append((kind, name[: -len(suffix)], doc))
        return found

    def _write_stops(self, stops: list[str]) -> None:
        for sid in stops:
            with contextlib.suppress(OSError):
                touch_ours(self.dir / f"{sid}.stop")


def touch_ours(path: Path) -> None:
    """Create ``path`` (0600) or renew its time; what is there and not a regular file of ours (a
    symlink, a FIFO, another user's file) is replaced, never written through or followed."""
    for _ in range(2):
        try:
            fd = os.open(path, _CREATE, 0o600)
        except FileExistsError:
            st = os.lstat(path)
            if ours(st):
                os.utime(path, follow_symlinks=False)
                return
            path.unlink()  # then create our own, exclusively
        else:
            os.close(fd)
            return


def read_ours(path: Path) -> bytes | None:
    """The bytes of ``path`` if it is a regular file of ours of at most MAX_FILE bytes, else None;
    never blocks on a FIFO or a device, never follows a symlink."""
    try:
        return read_bounded(path, MAX_FILE, owned=True)
    except UnsafeFile:
        return None
    except PermissionError:
        if not ours(os.lstat(path)):
            return None  # another user's file, not even readable to us
        raise
