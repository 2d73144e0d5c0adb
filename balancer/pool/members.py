"""What the pool needs of whoever routes calls to its READY servers (the dispatcher), as a protocol.

Data flows calls -> dispatcher -> pool: the pool never imports the call path. It keeps the
membership in step through ``Members`` (given to it at construction) and ends waiting calls with
``NoServerError``, which the call path turns into a 503.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol


class NoServerError(Exception):
    """No server can take this call (its specs are held after failed starts, or shutting down)."""


class Members(Protocol):
    """The routing table of READY servers and the calls waiting for them."""

    @property
    def by_model(self) -> Mapping[str, Collection[Any]]: ...  # model -> member servers

    @property
    def queues(self) -> Mapping[str, Any]: ...  # model -> its waiting calls

    def add(self, server: Any) -> None: ...

    def remove(self, server: Any) -> None: ...

    def resized(self, server: Any) -> None: ...

    def waiting(self, model: str) -> int: ...

    def oldest_wait(self, model: str) -> float | None: ...

    def fail_waiters(self, model: str, exc: Exception) -> int: ...
