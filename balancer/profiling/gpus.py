"""GPUs of this machine for the local backend: discovery, and an exclusive allocator per server.

Each local server gets its ``resources.gpus`` devices to itself through its own launcher's
``CUDA_VISIBLE_DEVICES``; the balancer's environment is never changed, so one server's devices
never leak into another's. Discovery asks NVML (``pynvml`` from ``nvidia-ml-py``) when it is
installed and a driver answers, else takes ``[backend] gpus`` from the configuration, else finds
none. A configured list wins over NVML: an operator may keep devices for something else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from balancer.backends.base import Backend

log = logging.getLogger(__name__)


def nvml_gpus() -> list[str] | None:
    """Indices of the NVIDIA GPUs NVML sees; None when NVML is not installed or does not start."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        log.debug("NVML does not start: %s", exc)
        return None
    try:
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def discover(configured: Sequence[int | str] | None) -> tuple[list[str], str]:
    """The devices to hand out and where they came from ("config", "nvml" or "none")."""
    if configured is not None:
        return [str(g) for g in configured], "config"
    found = nvml_gpus()
    if found is not None:
        return found, "nvml"
    return [], "none"


class GpuAllocator:
    """Exclusive GPUs per server; pure bookkeeping, no I/O. Devices go out lowest index first."""

    def __init__(self, devices: Sequence[str]) -> None:
        self.devices = list(devices)
        self.held: dict[str, list[str]] = {}  # owner (server id) -> its devices

    @property
    def free(self) -> list[str]:
        taken = {d for ds in self.held.values() for d in ds}
        return [d for d in self.devices if d not in taken]

    def allocate(self, owner: str, n: int) -> list[str] | None:
        """``n`` free devices for ``owner`` (its earlier ones if it holds some), None if too few free."""
        if owner in self.held:
            return self.held[owner]
        free = self.free
        if n > len(free):
            return None
        self.held[owner] = free[:n]
        return self.held[owner]

    def release(self, owner: str) -> None:
        self.held.pop(owner, None)


class CoreAllocator:
    """Cores per server from this process's affinity. A CPU-bound server gets ``n`` cores no other
    CPU-bound server holds, or waits; any other server shares the least loaded cores, never waits."""

    def __init__(self, cores: Sequence[int]) -> None:
        self.cores = sorted(cores)
        self.held: dict[str, tuple[list[int], bool]] = {}  # owner -> (cores, CPU-bound)
        self._next = 0  # round-robin start, so sharing servers spread

    def _load(self) -> tuple[dict[int, int], set[int]]:
        load = dict.fromkeys(self.cores, 0)
        bound: set[int] = set()
        for cs, cpu_bound in self.held.values():
            for c in cs:
                load[c] = load.get(c, 0) + 1
                if cpu_bound:
                    bound.add(c)
        return load, bound

    def allocate(self, owner: str, n: int, cpu_bound: bool) -> list[int] | None:
        if owner in self.held:
            return self.held[owner][0]
        n = max(1, min(n, len(self.cores)))
        load, bound = self._load()
        k = self._next % len(self.cores)
        order = self.cores[k:] + self.cores[:k]
        if cpu_bound:
            pick = [c for c in order if c not in bound][:n]
            if len(pick) < n:
                return None
        else:
            pick = sorted(order, key=lambda c: (c in bound, load[c]))[:n]
        self._next += n
        self.held[owner] = (sorted(pick), cpu_bound)
        return self.held[owner][0]

    def release(self, owner: str) -> None:
        self.held.pop(owner, None)


def server_gpus(
    backend: Backend, latest: dict[str, dict[str, Any]], server_id: str
) -> list[dict[str, Any]] | None:
    """A server's GPUs for ``balancer servers`` and the dashboard: the devices the local backend
    gave it, else those its launcher sampled, with utilisation and memory from its last usage
    sample (``server.usage``) where NVML reported them; None when it has none."""
    devices = list((backend.server_resources(server_id) or {}).get("gpus") or [])
    sampled = {str(g.get("index")): g for g in (latest.get(server_id) or {}).get("gpus") or []}
    if not devices and not sampled:
        return None
    out = []
    for d in devices or list(sampled):
        g = sampled.get(d) or (next(iter(sampled.values())) if len(sampled) == len(devices) == 1 else {})
        use = {k: g[k] for k in ("util_pct", "mem_used_bytes", "mem_total_bytes") if k in g}
        out.append({"device": d, **use})
    return out
