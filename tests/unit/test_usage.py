"""Resource monitoring, the pure parts: the launcher monitor's failure modes, the balancer's validation
of samples, visible GPUs (real process trees and launchers: system/test_usage_processes)."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

from balancer.launcher import main as launch
from balancer.launcher import usage
from balancer.launcher.usage import clean_samples, journal_fields, visible_gpus


def test_launcher_monitor_survives_a_failing_sample(monkeypatch):
    calls = []
    fifth = threading.Event()  # by the fifth sample, three good ones are in the launcher's queue

    class Flaky:
        def __init__(self, pid: int) -> None:
            pass

        def sample(self) -> dict[str, Any]:
            calls.append(1)
            if len(calls) >= 5:
                fifth.set()
            if len(calls) == 1:
                raise RuntimeError("psutil went wrong")
            return {"t": 1.0, "cpu_s": float(len(calls))}

        def close(self) -> None:
            pass

    monkeypatch.setattr(usage, "UsageSampler", Flaky)  # the launcher imports it when monitoring starts
    monkeypatch.setenv("UMBRIDGE_BALANCER_MONITOR_S", "0.01")
    lch = launch.Launcher(["true"])

    async def run() -> None:
        task = asyncio.create_task(lch._monitor(12345))
        assert await asyncio.to_thread(fifth.wait, 10)
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), 10))
    assert lch.usage[0]["cpu_s"] == 2.0  # the failed sample was skipped, the next ones kept
    batch = lch._take_usage()
    lch.usage.append({"t": 9.0})
    lch._keep_usage(batch)  # an undelivered batch goes back before newer samples
    assert [x["t"] for x in lch.usage][-1] == 9.0 and len(lch.usage) == len(batch) + 1


def test_clean_samples_keeps_known_numeric_fields_only():
    good = {"t": 1.0, "cpu_s": 2.0, "procs": 1, "node": {"cpu_pct": 3.0}, "server": "forged", "ev": "x"}
    gpu = {"index": 0, "uuid": "GPU-1", "util_pct": 5.0, "mem_used_bytes": 1, "mem_total_bytes": 2}
    samples, dropped = clean_samples(
        [good, {"t": 2.0, "gpus": [gpu]}, {"cpu_s": 1.0}, {"t": 1.0, "cpu_s": "x"}, {"t": True}, 7]
    )
    assert dropped == 4 and len(samples) == 2
    assert "server" not in samples[0] and "ev" not in samples[0]
    assert samples[1]["gpus"] == [gpu]
    assert clean_samples("nope") == ([], 1) and clean_samples(None) == ([], 0)
    assert journal_fields(samples[0])["sample_t"] == 1.0 and "t" not in journal_fields(samples[0])


def test_visible_gpus_follows_cuda_visible_devices():
    assert visible_gpus({}) is None
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,GPU-ab"}) == ["1", "GPU-ab"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == [] == visible_gpus({"CUDA_VISIBLE_DEVICES": ""})


def test_no_nvml_means_no_gpus_field_and_no_error():
    g = usage.GpuSampler({})  # this machine has no NVIDIA driver (and maybe no nvidia-ml-py)
    assert g.sample() is None
    g.close()


class FakeNvml:
    """pynvml's calls the sampler makes, for two GPUs; ``broken`` makes the next reads fail."""

    def __init__(self) -> None:
        self.broken = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}aaa"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        if self.broken:
            raise RuntimeError("GPU is lost")
        return type("Mem", (), {"used": 100 * (h + 1), "total": 1000})()

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return type("Util", (), {"gpu": 50 + h})()


def test_gpus_the_server_sees_through_nvml(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    g = usage.GpuSampler({"CUDA_VISIBLE_DEVICES": "GPU-1"})  # by UUID prefix: only the second
    assert g.sample() == [
        {"index": 1, "uuid": "GPU-1aaa", "util_pct": 51.0, "mem_used_bytes": 200, "mem_total_bytes": 1000}
    ]
    assert [x["index"] for x in usage.GpuSampler({}).sample() or []] == [0, 1]  # unset: all
    assert usage.GpuSampler({"CUDA_VISIBLE_DEVICES": "-1"}).sample() is None  # none: no gpus field
    assert clean_samples([{"t": 1.0, "gpus": g.sample()}]) == ([{"t": 1.0, "gpus": g.sample()}], 0)
    fake.broken = True
    assert g.sample() is None and g.sample() is None  # a failing GPU read: no field, no exception
