"""This machine's capacity (psutil), so the local default backend takes the same path as a cluster:
idle CPUs are the CPUs times the share of CPU time left idle since the previous sample. The monitor
adds ours (the cores the local backend gave our running servers): capacity = idle + ours, at most
the CPUs, so our own servers' load never reads as the machine filling up."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psutil

from balancer.capacity.sample import CapacitySample

FIRST_WINDOW_S = 0.25  # the first sample has no previous one: measure over this window


def _busy_idle(times: Any) -> tuple[float, float]:
    """(busy, idle) CPU seconds of a ``psutil.cpu_times()`` total; waiting on I/O counts as idle."""
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0), idle


def _read() -> tuple[Any, float, float]:
    return psutil.cpu_times(), os.getloadavg()[0], psutil.virtual_memory().percent / 100.0


class LocalCollector:
    """One sample of the whole machine per call (partition ``""``)."""

    source = "local"

    def __init__(self) -> None:
        self.cpus = float(psutil.cpu_count() or os.cpu_count() or 1)
        self._prev: Any = None

    async def sample(self) -> list[CapacitySample]:
        if self._prev is None:
            self._prev = (await asyncio.to_thread(_read))[0]
            await asyncio.sleep(FIRST_WINDOW_S)
        t = time.time()
        times, load, mem = await asyncio.to_thread(_read)
        b0, i0 = _busy_idle(self._prev)
        b1, i1 = _busy_idle(times)
        self._prev = times
        spent = (b1 - b0) + (i1 - i0)
        idle_frac = (i1 - i0) / spent if spent > 0 else 1.0
        idle = min(self.cpus, max(0.0, self.cpus * idle_frac))
        return [
            CapacitySample(
                t=t,
                source=self.source,
                partition="",
                total_cpus=self.cpus,
                idle_cpus=idle,
                alloc_cpus=self.cpus - idle,
                load=load / self.cpus,
                mem_used_frac=mem,
            )
        ]
