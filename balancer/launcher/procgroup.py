"""Ending process groups: SIGTERM, then SIGKILL after one grace period, everywhere.

A model server runs in its own process group (``child.die_with_parent``: ``setsid``), and so does
each launcher (local backend, HyperQueue task). Whoever ends one sends SIGTERM to the whole group
and SIGKILL to what is left after the grace. There is ONE grace setting, ``GRACE_S``: the time a
model server gets to finish its call and exit. Whoever ends a launcher must outlast the launcher's
own grace for its server, so it waits ``OUTER_GRACE_S`` (GRACE_S plus the launcher's exit and
report). The /proc readers are Linux-only, like the clusters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Protocol

GRACE_S = 10.0
OUTER_GRACE_S = GRACE_S + 2.0


class Child(Protocol):
    """A child process as asyncio's ``Process`` shows it (the launcher's model: ``main._Child``)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2])


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def child_pids(ppid: int) -> list[int]:
    """Live direct children of ``ppid``: for the helper, the HQ task processes."""
    out = []
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[1] == ppid and st[0] != "Z":
            out.append(pid)
    return out


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in group ``pgid`` (zombies hold no resources)."""
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[2] == pgid and st[0] != "Z":
            return True
    return False


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # pid reused by another user's process: not ours to end
        return False
    return True


def end_groups(pgids: list[int], grace_s: float = OUTER_GRACE_S) -> None:
    """SIGTERM the groups, SIGKILL whatever is left after ``grace_s`` (blocking: helper side)."""
    alive = [g for g in pgids if signal_group(g, signal.SIGTERM)]
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [g for g in alive if group_alive(g)]
    for g in alive:
        signal_group(g, signal.SIGKILL)


async def end_group(pgid: int, grace_s: float = OUTER_GRACE_S) -> None:
    """SIGTERM a group, SIGKILL it after ``grace_s``; the /proc scans run off the event loop."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if not await asyncio.to_thread(group_alive, pgid):
            return
    signal_group(pgid, signal.SIGKILL)


def group_env_has(pgid: int, entry: str) -> bool | None:
    """Whether a live member of group ``pgid`` has ``NAME=value`` in its environment (None: none
    readable). Guards against signalling a recycled pid; asks the members, since the group's
    leader may be dead while the rest lives on."""
    unreadable = False
    for pid in _pids():
        st = _stat(pid)
        if st is None or st[2] != pgid or st[0] == "Z":
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if entry.encode() in f.read().split(b"\0"):
                    return True
        except OSError:
            unreadable = True
    return None if unreadable else False


async def end_child(proc: Child, grace_s: float = GRACE_S) -> int:
    """End the process group led by our child ``proc`` (SIGTERM, SIGKILL after ``grace_s``) and
    whatever it left behind in that group; returns its exit code."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except asyncio.TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # children it left in its group go too
    code = proc.returncode
    assert code is not None  # it was waited for above
    return code
