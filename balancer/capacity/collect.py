"""The one interface every capacity collector (SLURM, HyperQueue, this machine) offers.

A collector is asked for a sample every ``collect_interval_s``; it returns one ``CapacitySample``
per partition it watches, all with the same ``t``. It never hangs (every command has a timeout)
and never blocks the event loop; a failure is a ``CollectError`` with one line for the user.
"""

from __future__ import annotations

from typing import Protocol

from balancer.capacity.sample import CapacitySample

COMMAND_TIMEOUT_S = 20.0  # one scheduler command; a collector pass is a few of them at once


class CollectError(RuntimeError):
    """A sample that could not be taken, phrased for the user (one line)."""


class Collector(Protocol):
    source: str

    async def sample(self) -> list[CapacitySample]: ...
