"""Server ids across restarts, and adoption: taking back an earlier balancer's servers.

Ids continue across restarts with the same run directory (``next-server-id`` there), so the ids
below the first one this balancer hands out are an earlier balancer's: when their launchers
register again (they retry every second while the balancer is away), the pool adopts them. For
``ADOPT_WINDOW_S`` after a restart the policy starts nothing, so they are not doubled.
"""

from __future__ import annotations

import itertools
from pathlib import Path

ADOPT_WINDOW_S = 5.0


def _read_int(path: Path) -> int:
    try:
        return max(1, int(path.read_text()))
    except (OSError, ValueError):
        return 1


class ServerIds:
    """Hands out server ids and says which ones may be adopted."""

    def __init__(self, state_dir: Path | None, now: float) -> None:
        self._state = state_dir / "next-server-id" if state_dir is not None else None
        first = _read_int(self._state) if self._state is not None else 1
        self._ids = itertools.count(first)
        self._first = first  # ids below it are an earlier balancer's
        self._adopted: set[str] = set()
        self.adopt_until = now + ADOPT_WINDOW_S if first > 1 else 0.0

    def next(self) -> str:
        n = next(self._ids)
        if self._state is not None:
            self._state.write_text(str(n + 1))  # a few bytes per started server
        return f"s{n}"

    def adoptable(self, server_id: str) -> bool:
        """Whether ``server_id`` is an earlier balancer's (this run directory) not yet taken back."""
        n = server_id[1:]
        ours = server_id[:1] == "s" and n.isdigit() and int(n) < self._first
        return ours and server_id not in self._adopted

    def take(self, server_id: str) -> bool:
        """Take ``server_id`` back; False if it is not adoptable."""
        if not self.adoptable(server_id):
            return False
        self._adopted.add(server_id)
        return True
