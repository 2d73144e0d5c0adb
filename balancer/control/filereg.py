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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from balancer.control.api import Control
from balancer.launcher.contract import ALIVE
from balancer.observe.events import Ev, EventBus

POLL_S = 0.5
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
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.dir / ALIVE).touch()

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
            (self.dir / ALIVE).touch()
        found = []
        for name in sorted(os.listdir(self.dir)):
            for kind in ("register", "exited", "usage"):
                suffix = f".{kind}.json"
                if name.endswith(suffix) and not name.startswith("."):
                    path = self.dir / name
                    try:
                        doc = json.loads(path.read_text())
                    except (OSError, ValueError):
                        continue  # half a file from a writer that does not rename: next pass
                    path.unlink(missing_ok=True)
                    if isinstance(doc, dict):
                        found.append((kind, name[: -len(suffix)], doc))
        return found

    def _write_stops(self, stops: list[str]) -> None:
        for sid in stops:
            with contextlib.suppress(OSError):
                (self.dir / f"{sid}.stop").touch(mode=0o600)
