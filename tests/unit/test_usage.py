"""Resource monitoring: the usage sampler on real process trees, its failure modes, the balancer's
validation of samples, and ``server.usage`` journaled from a real launcher."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import psutil
import pytest
import umbridge

from balancer.launcher import main as launch
from balancer.launcher import usage
from balancer.launcher.usage import UsageSampler, clean_samples, journal_fields, tree_pids, visible_gpus
from tests.helpers import MODELS, wait_until

# A root that starts a CPU-burning child and burns CPU itself; it prints once the child runs.
TREE = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
print(child.pid, flush=True)
while True:
    pass
"""


@pytest.fixture
def tree():
    root = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    child = int(root.stdout.readline())
    yield root, child
    for pid in (child, root.pid):
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    root.wait()


def test_sampler_sums_a_real_process_tree(tree):
    root, _child = tree
    s = UsageSampler(root.pid, gpus=False)
    first = wait_until(lambda: (x := s.sample())["procs"] == 2 and x, 10, what="two processes")
    assert first["rss_bytes"] > 0 and first["rss_peak_bytes"] >= first["rss_bytes"]
    assert first["threads"] >= 2 and first["ctx_vol"] + first["ctx_invol"] > 0
    assert {"cpu_pct", "iowait_pct", "mem_used_pct", "load1", "cpus"} <= set(first["node"])
    assert "gpus" not in first
    later = wait_until(lambda: (x := s.sample())["cpu_s"] > first["cpu_s"] + 0.2 and x, 10, what="CPU")
    assert later["cpu_util"] > 0 and later["interval_s"] > 0
    assert later["minflt"] > 0  # Linux: from /proc/<pid>/stat


def test_processes_that_vanish_between_samples_are_no_error(tree):
    root, child = tree
    s = UsageSampler(root.pid, gpus=False)
    wait_until(lambda: s.sample()["procs"] == 2, 10, what="two processes")
    before = s.sample()["cpu_s"]
    psutil.Process(child).kill()
    after = s.sample()  # the child may be a zombie now, or gone: either way no exception
    assert after["cpu_s"] >= before  # cumulative CPU never runs backwards
    root.kill()
    root.wait()
    gone = s.sample()
    assert gone["procs"] == 0 and gone["cpu_s"] >= after["cpu_s"] and "node" in gone


def test_refused_and_vanishing_reads_are_skipped(tree, monkeypatch):
    root, child = tree
    s = UsageSampler(root.pid, gpus=False)
    wait_until(lambda: s.sample()["procs"] == 2, 10, what="two processes")

    def denied(self: psutil.Process) -> Any:
        raise psutil.AccessDenied(self.pid)

    real_ctx = psutil.Process.num_ctx_switches

    def child_vanishes(self: psutil.Process) -> Any:
        if self.pid == child:
            raise psutil.NoSuchProcess(self.pid)
        return real_ctx(self)

    monkeypatch.setattr(psutil.Process, "io_counters", denied)
    monkeypatch.setattr(psutil.Process, "num_ctx_switches", child_vanishes)
    x = s.sample()
    assert "io_read_bytes" not in x and "io_write_bytes" not in x  # not readable: not reported
    assert x["procs"] == 1 and x["rss_bytes"] > 0


def test_tree_from_proc_children_files(tmp_path, tree):
    """The cheap tree walk (kernels with CONFIG_PROC_CHILDREN), on a fake /proc: 1 has threads 1
    and 5 whose children are 2 and 3; 3's child 4 vanished after it was listed."""
    for pid, tids in {1: {1: "2 3", 5: ""}, 2: {2: ""}, 3: {3: "4 "}}.items():
        for tid, kids in tids.items():
            d = tmp_path / str(pid) / "task" / str(tid)
            d.mkdir(parents=True)
            (d / "children").write_text(kids)
    assert sorted(tree_pids(1, str(tmp_path))) == [1, 2, 3, 4]
    assert tree_pids(9, str(tmp_path)) == []  # gone
    (tmp_path / "8").mkdir()
    assert tree_pids(8, str(tmp_path)) is None  # no children files: psutil's scan instead
    root, child = tree
    if tree_pids(root.pid) is not None:  # this kernel has them: the same answer as psutil's scan
        wait_until(lambda: set(tree_pids(root.pid) or ()) == {root.pid, child}, 10, what="both pids")


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

    monkeypatch.setattr(launch, "UsageSampler", Flaky)
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


def test_server_usage_is_journaled_from_a_real_launcher(start_balancer):
    spec = {
        "name": "spin",
        "command": [sys.executable, str(MODELS / "cpu_spinner.py")],
        "min_servers": 1,
        "max_servers": 1,
    }
    b = start_balancer([spec], monitor_interval_s=0.5, lease_s=3)
    b.wait_event("server.ready", 60)
    model = umbridge.HTTPModel(b.url, "cpu_spinner")
    stop = threading.Event()

    def calls() -> None:
        while not stop.is_set():
            model([[1.0]])

    t = threading.Thread(target=calls)
    t.start()
    try:
        busy = wait_until(
            lambda: [e for e in b.events("server.usage") if e["cpu_util"] > 0.4], 60, what="a busy sample"
        )[0]
    finally:
        stop.set()
        t.join(30)
    assert busy["spec"] == "spin" and busy["server"] and busy["procs"] >= 1
    assert busy["cpu_util"] < 1.6  # one spinning thread (plus the server's own bits), not more
    assert busy["rss_bytes"] > 0 and busy["sample_t"] > 0 and busy["node"]["cpus"] >= 1
    assert "gpus" not in busy
    n = len(b.events("server.usage"))
    wait_until(lambda: len(b.events("server.usage")) > n + 1, 30, what="more samples")  # still monitoring
    assert model([[0.1]])[0][0] > 0  # and the server still answers
    assert not b.events("server.failed")


def test_server_usage_through_file_registration(start_balancer):
    spec = {"name": "wait", "command": [sys.executable, str(MODELS / "waiter.py")], "min_servers": 1}
    b = start_balancer([spec], registration="file", lease_s=3, monitor_interval_s=0.3)
    wait_until(lambda: len(b.events("server.usage")) >= 3, 60, what="usage samples through files")
    e = b.events("server.usage")[0]
    assert e["spec"] == "wait" and e["procs"] >= 1 and e["rss_bytes"] > 0


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
