"""The capacity monitor: sample the cluster on an interval, keep the samples, journal them.

Collection is a scheduler query (an asyncio subprocess) and SQLite writes go through a worker
thread, so the event loop never waits on either. A failing collector is journaled once per
distinct error and minute; the balancer keeps serving and the forecast goes stale, not wrong.

Each sample is stamped with ``ours_cpus``, what our own pool's running jobs hold (``held``, the
pool's one truth), so the history stores capacity = idle + ours and our own load never reads as
the cluster filling up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from balancer.capacity.collect import CollectError  # already phrased for the user: shown as it is
from balancer.capacity.sample import CapacitySample
from balancer.observe.events import Ev, EventBus

ERROR_REPEAT_S = 60.0
PRUNE_EVERY_S = 3600.0


class CapacityMonitor:
    def __init__(
        self,
        collector: Any,  # cluster.collectors.Collector
        history: Any,  # cluster.history.History, or None: samples are journaled, not kept
        service: Any,  # forecast.service.ForecastService
        bus: EventBus,
        interval_s: float,
        wall: Callable[[], float] = time.time,
        held: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        self.collector = collector
        # partition -> CPUs our running jobs hold ("" = the default partition / the whole machine)
        self.held = held or dict
        self.history = history
        self.service = service
        self.bus = bus
        self.interval_s = interval_s
        self.wall = wall
        self.samples = 0
        self.error: str | None = None
        self._error_logged: tuple[str, float] | None = None
        self._pruned = 0.0
        self._task: asyncio.Task[None] | None = None

    def reconfigure(self, interval_s: float) -> None:
        """A reloaded ``collect_interval_s``: the next sample comes after this long."""
        self.interval_s = interval_s

    def start(self, first_done: bool = False) -> None:
        self._task = asyncio.create_task(self._loop(first_done), name="capacity-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self, first_done: bool) -> None:
        if first_done:
            await asyncio.sleep(self.interval_s)
        while True:
            await self.sample_once()
            await asyncio.sleep(self.interval_s)

    async def sample_once(self) -> list[Any]:
        """One collection; never raises (an error is recorded and journaled)."""
        t = self.wall()
        try:
            samples = stamp_ours(await self.collector.sample(), self.held())
            if self.history is not None and samples:
                await asyncio.to_thread(self.history.add, samples)
                if t - self._pruned >= PRUNE_EVERY_S:
                    self._pruned = t
                    await asyncio.to_thread(self.history.prune, t)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(str(exc) if isinstance(exc, CollectError) else f"{type(exc).__name__}: {exc}", t)
            return []
        self.error = None
        self.samples += 1
        self.service.observe(samples, t)
        idle = sum(s.idle_cpus for s in samples)
        ours = sum(s.ours_cpus for s in samples)
        capacity = sum(s.capacity_cpus for s in samples)
        total = sum(s.total_cpus for s in samples)
        pred = self.service.predicted_capacity(t)
        fields: dict[str, Any] = {
            "source": self.collector.source, "idle_cpus": idle, "total_cpus": total,
            "ours_cpus": ours, "capacity_cpus": capacity,
        }  # fmt: skip
        if pred is not None:
            fields["predicted_capacity_cpus"] = round(pred, 3)
            # The same prediction less ours: compared with idle_cpus, the error is the capacity's.
            fields["predicted_idle_cpus"] = round(pred - (capacity - idle), 3)
        pending = [s.pending_jobs for s in samples if s.pending_jobs is not None]
        if pending:
            fields["pending_jobs"] = sum(pending)
        waits = [s.expected_wait_s for s in samples if s.expected_wait_s is not None]
        if waits:
            fields["expected_wait_s"] = min(waits)
        self.bus.emit(Ev.CAPACITY_SAMPLE, **fields)
        return samples

    def _failed(self, error: str, t: float) -> None:
        self.error = error
        last = self._error_logged
        if last is None or last[0] != error or t - last[1] >= ERROR_REPEAT_S:
            self._error_logged = (error, t)
            self.bus.emit(Ev.BALANCER_ERROR, where="collector", error=error)

    def status(self) -> dict[str, Any]:
        return {"source": self.collector.source, "samples": self.samples, "error": self.error}


def stamp_ours(samples: Sequence[CapacitySample], held: Mapping[str, float]) -> list[CapacitySample]:
    """Each sample with ``ours_cpus`` from ``held`` (partition -> CPUs our running jobs hold).

    A partition's own figure goes to its sample; what no sample's partition names (the default
    partition "", or a partition not watched) goes to the only sample, or to the first one where
    there are several (it is ours either way; the view sums them)."""
    out = list(samples)
    if not out:
        return out
    names = {s.partition for s in out}
    rest = sum(v for p, v in held.items() if p not in names)
    for i, s in enumerate(out):
        ours = float(held.get(s.partition, 0.0)) + (rest if i == 0 else 0.0)
        out[i] = replace(s, ours_cpus=ours)
    return out
