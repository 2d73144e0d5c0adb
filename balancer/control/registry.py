"""The per-user registry of running balancers, so a command finds "the" balancer from any directory.

``balancer serve`` writes one entry (``<pid>.json``: pid, process start time, run directory, URL,
configuration, cwd) when it is ready and removes it at a clean shutdown; a reader drops the entries
of processes that are gone or whose pid now belongs to another process (start time differs), so a
crashed or killed balancer is never picked. The directory is the user's runtime directory
(``$XDG_RUNTIME_DIR/umbridge-balancer``, tmpfs, emptied at logout) when it is set and ours, else
``~/.local/state/umbridge-balancer/running``; owner-only (0700), entries 0600, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from balancer.launcher.contract import UnsafeFile, dir_problem, read_bounded, write_atomic

MAX_ENTRY = 64 << 10
RUN_FILE = "running.json"  # in the run directory, while it runs


@dataclass(frozen=True)
class Entry:
    pid: int
    started: float  # the process's start time (psutil ``create_time``): tells a reused pid apart
    run_dir: str
    url: str
    config: str | None
    cwd: str
    scheduler: str = "local"
    host: str = ""  # a registry in a shared home is read on other nodes: their pids are not ours


def _host() -> str:
    return socket.gethostname()


def registry_dir() -> Path:
    """Where this user's entries live (not created here)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute() and dir_problem(Path(runtime), forbid=0o077) is None:
        return Path(runtime) / "umbridge-balancer"
    return Path.home() / ".local" / "state" / "umbridge-balancer" / "running"


def _private_dir() -> Path:
    d = registry_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    return d


def process_start(pid: int) -> float | None:
    """The start time of process ``pid`` (None when there is none, or it is a zombie)."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(p.create_time())
    except (psutil.Error, OSError):
        return None


def register(run_dir: Path, url: str, config: str | None, scheduler: str) -> list[Path]:
    """Enter this process: the registry's entry, and the same in ``RUN_DIR/running.json`` (a command
    that finds a run directory by itself tells a dead run from a live one). Returns the files to
    remove at shutdown; a registry that cannot be written is skipped (found then by ``--run-dir``)."""
    pid = os.getpid()
    started = process_start(pid) or time.time()
    entry = Entry(pid, started, str(run_dir), url, config, os.getcwd(), scheduler, _host())
    text = json.dumps(asdict(entry)) + "\n"
    written = []
    for path in (run_dir / RUN_FILE, None):
        try:
            path = path or _private_dir() / f"{pid}.json"
            write_atomic(path, text)
            written.append(path)
        except OSError:
            pass
    return written


def unregister(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def read_entry(path: Path) -> Entry | None:
    """An entry file of ours (None when it is not one: missing, foreign, malformed)."""
    try:
        return Entry(**json.loads(read_bounded(path, MAX_ENTRY, owned=True, forbid=0o077)))
    except (OSError, UnsafeFile, ValueError, TypeError):
        return None


def alive(e: Entry) -> bool:
    now = process_start(e.pid)
    return now is not None and abs(now - e.started) < 1.0


def running() -> list[Entry]:
    """The live entries, oldest first; the dead ones (pid gone or reused) are removed on the way.
    A registry directory another user could write is not read at all."""
    d = registry_dir()
    if not d.is_dir() or dir_problem(d, forbid=0o077) is not None:
        return []
    out = []
    for path in d.glob("*.json"):
        e = read_entry(path)
        if e is None:
            continue  # not ours, or not an entry: leave it alone
        if e.host and e.host != _host():
            continue  # another node's balancer (a shared home): its pid means nothing here
        if alive(e):
            out.append(e)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return sorted(out, key=lambda e: e.started)
