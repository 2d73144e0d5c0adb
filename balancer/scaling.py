"""Routing and scaling decisions as pure functions of plain data.

Nothing here does I/O or reads a clock: the live balancer and a simulator with a virtual clock
call the same code. The forecast-aware policy will extend ``decide`` with more inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil
from typing import Protocol


class Routable(Protocol):
    outstanding: int
    concurrency: int


def pick_server(candidates: Sequence[Routable]) -> Routable | None:
    """Least outstanding calls among servers with a free slot; first listed wins ties."""
    best = None
    best_load = 1 << 30
    for s in candidates:
        load = s.outstanding
        if load < s.concurrency and load < best_load:
            best, best_load = s, load
            if load == 0:
                break
    return best


@dataclass(frozen=True)
class SpecState:
    """What the policy sees of one server spec at one moment."""

    name: str
    min_servers: int
    max_servers: int
    backlog: int
    concurrency: int
    idle_timeout_s: float
    startup_timeout_s: float
    starting: int = 0  # requested, not yet ready
    ready: int = 0  # ready and taking calls
    unreplaced_draining: int = 0  # draining (job ends soon) and no replacement started yet
    waiting: int = 0  # calls waiting in the queue that this spec could serve
    idle: tuple[tuple[str, float], ...] = ()  # (server id, idle since) of ready servers with no call
    starts: tuple[tuple[str, float], ...] = ()  # (server id, requested at) of servers not yet ready
    start_blocked: bool = False  # held after repeated failures, or in a backoff period


@dataclass(frozen=True)
class Action:
    kind: str  # "start" | "stop"
    spec: str
    reason: str
    count: int = 0  # for start
    server: str | None = None  # for stop
    target: int = 0  # servers the spec aims for after this action


def decide(specs: Sequence[SpecState], now: float) -> list[Action]:
    """Start servers for waiting calls, min_servers and replacements; stop idle and stuck ones."""
    actions: list[Action] = []
    for s in specs:
        live = s.starting + s.ready
        # A start that never became ready within its timeout is given up (counts as a failed start).
        for server, since in s.starts:
            if now - since >= s.startup_timeout_s:
                actions.append(Action("stop", s.name, "startup_timeout", server=server, target=live - 1))
                live -= 1
        wanted = 0
        reason = ""
        if s.ready + s.starting < s.min_servers:
            wanted, reason = s.min_servers - s.ready, "min_servers"
        if s.waiting > 0:
            need = ceil(s.waiting / s.concurrency)
            if need > wanted:
                wanted, reason = need, "demand"
        if s.unreplaced_draining and s.unreplaced_draining >= wanted:
            wanted, reason = s.unreplaced_draining, "replace"
        n = min(wanted - s.starting, s.backlog - s.starting, s.max_servers - live)
        if n > 0 and not s.start_blocked:
            actions.append(Action("start", s.name, reason, count=n, target=live + n))
            live += n
        if s.waiting == 0:
            # Longest idle first, never below min_servers.
            for server, since in sorted(s.idle, key=lambda x: x[1]):
                if live <= s.min_servers or now - since < s.idle_timeout_s:
                    break
                live -= 1
                actions.append(Action("stop", s.name, "idle", server=server, target=live))
    return actions


def start_backoff_s(consecutive_failures: int) -> float:
    """Delay before the next start of a spec whose last starts failed: 1, 2, 4, ... up to 60 s."""
    if consecutive_failures <= 0:
        return 0.0
    return float(min(60, 2 ** (consecutive_failures - 1)))
