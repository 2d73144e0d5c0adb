"""Which server takes a call: the dispatcher's one routing rule, pure like the rest of the policy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Routable(Protocol):
    outstanding: int
    concurrency: int


R = TypeVar("R", bound=Routable)  # generic, so the caller gets back its own server type


def pick_server(candidates: Iterable[R], free_slot: bool = True) -> R | None:
    """Least outstanding calls; with ``free_slot`` only among servers below their concurrency.

    Metadata calls pass ``free_slot=False``: they are cheap, take no slot and must not wait for
    one behind long evaluations. First listed wins ties."""
    best: R | None = None
    best_load = 1 << 30
    for s in candidates:
        load = s.outstanding
        if load < best_load and (not free_slot or load < s.concurrency):
            best, best_load = s, load
            if load == 0:
                break
    return best
