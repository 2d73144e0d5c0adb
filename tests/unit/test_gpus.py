"""GPUs and cores per local server: the allocators, option parsing, discovery (a real balancer with a
configured GPU list: system/test_gpus_balancer). The NVML path runs only where a driver answers."""

from __future__ import annotations

from typing import Any

import pytest

from balancer.backends.options import LocalOptions, parse_options
from balancer.config.schema import ConfigError
from balancer.profiling.gpus import CoreAllocator, GpuAllocator, discover, nvml_gpus


def test_gpu_allocator_exclusive_and_freed() -> None:
    a = GpuAllocator(["0", "1", "2"])
    assert a.allocate("s1", 2) == ["0", "1"]
    assert a.allocate("s1", 2) == ["0", "1"]  # idempotent for one owner
    assert a.allocate("s2", 2) is None  # one free: the start waits
    assert a.allocate("s3", 1) == ["2"]
    a.release("s1")
    assert a.allocate("s2", 2) == ["0", "1"]
    a.release("nobody")
    assert a.free == []


def test_core_allocator_cpu_bound_exclusive() -> None:
    c = CoreAllocator([0, 1])
    assert c.allocate("a", 1, cpu_bound=True) == [0]
    assert c.allocate("b", 1, cpu_bound=True) == [1]
    assert c.allocate("c", 1, cpu_bound=True) is None  # no third CPU-bound server on two cores
    w = c.allocate("w", 1, cpu_bound=False)  # a waiting server shares a core, never waits
    assert w is not None and len(w) == 1
    c.release("a")
    assert c.allocate("c", 1, cpu_bound=True) == [0]
    assert CoreAllocator([0, 1]).allocate("x", 5, cpu_bound=True) == [0, 1]  # capped at the cores


def test_core_allocator_sharing_spreads() -> None:
    c = CoreAllocator([0, 1, 2, 3])
    picks = [c.allocate(str(i), 1, cpu_bound=False) for i in range(4)]
    assert sorted(p[0] for p in picks if p) == [0, 1, 2, 3]


def test_gpus_option_parsed() -> None:
    opts = parse_options(LocalOptions, {"gpus": [0, 1]}, "backend", "local")
    assert opts.gpus == ("0", "1")
    assert parse_options(LocalOptions, {"gpus": ["GPU-abc"]}, "backend", "local").gpus == ("GPU-abc",)
    assert parse_options(LocalOptions, {}, "backend", "local").gpus is None
    for bad in ([-1], [True], "0,1", [0.5]):
        with pytest.raises(ConfigError, match=r"backend\.gpus"):
            parse_options(LocalOptions, {"gpus": bad}, "backend", "local")


def test_discover_prefers_config() -> None:
    assert discover([3, 1]) == (["3", "1"], "config")
    assert discover([]) == ([], "config")


def test_nvml_path() -> None:
    found = nvml_gpus()
    if found is None:
        pytest.skip("no NVIDIA GPU/driver here: NVML (nvidia-ml-py) does not initialise")
    assert found and all(g.isdigit() for g in found)
    assert discover(None) == (found, "nvml")


def test_server_gpus_view() -> None:
    """What `balancer servers` and the dashboard show: assigned devices with the last sample's use."""
    from balancer.profiling.gpus import server_gpus

    class Backend:
        def server_resources(self, sid: str) -> dict[str, list[Any]] | None:
            return {"s1": {"cpus": [0], "gpus": ["1"]}, "s2": {"cpus": [1], "gpus": []}}.get(sid)

    gpu = {"index": 1, "uuid": "GPU-x", "util_pct": 87.0, "mem_used_bytes": 5, "mem_total_bytes": 9}
    sample = {"gpus": [gpu]}
    assert server_gpus(Backend(), {"s1": sample}, "s1") == [
        {"device": "1", "util_pct": 87.0, "mem_used_bytes": 5, "mem_total_bytes": 9}
    ]
    assert server_gpus(Backend(), {}, "s1") == [{"device": "1"}]  # no NVML sample: the device only

    class Scheduler:  # Backend.server_resources's default: the scheduler placed it, not the balancer
        def server_resources(self, sid: str) -> None:
            return None

    assert server_gpus(Backend(), {}, "s2") is None and server_gpus(Scheduler(), {}, "s3") is None
    # Another backend (SLURM): the GPUs the launcher sampled through its CUDA_VISIBLE_DEVICES.
    assert server_gpus(Scheduler(), {"s3": sample}, "s3") == [
        {"device": "1", "util_pct": 87.0, "mem_used_bytes": 5, "mem_total_bytes": 9}
    ]
