"""Calls waiting as demand, counted in one place: the scaler's input and the views' queue figures.

Two kinds of call wait: evaluations in the dispatcher's queues, and metadata calls waiting for a
first server of their model (or, "" , for any spec to say its models). Both are demand; this sums
them so no reader adds them up on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from balancer.pool.members import Members

UNKNOWN = ""  # the model of a call for a model no discovered spec has (yet)


class Demand:
    def __init__(self, members: Members) -> None:
        self._members = members
        self._meta: dict[str, int] = {}  # model -> metadata calls waiting for a server

    @contextlib.contextmanager
    def counting(self, model: str) -> Iterator[None]:
        """Count one metadata call waiting for ``model`` while the block runs."""
        self._meta[model] = self._meta.get(model, 0) + 1
        try:
            yield
        finally:
            self._meta[model] -= 1

    def by_model(self) -> dict[str, int]:
        """Calls waiting, by model (``UNKNOWN`` for a model not yet known)."""
        members = self._members
        out = {m: members.waiting(m) for m in members.queues}
        for m, n in self._meta.items():
            if n:
                out[m] = out.get(m, 0) + n
        return out

    def of(self, models: Iterable[str], discovered: bool = True) -> int:
        """Calls waiting that a spec serving ``models`` could take; while its models are not yet
        ``discovered``, the calls for a model no one has announced count too."""
        members, meta = self._members, self._meta
        n = sum(members.waiting(m) + meta.get(m, 0) for m in models)
        return n if discovered else n + meta.get(UNKNOWN, 0)
