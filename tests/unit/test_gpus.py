"""GPUs and cores per local server: the allocators, and a real balancer with a configured GPU list.

No GPU is needed: ``[backend] gpus = [0, 1]`` stands for two devices; what is checked is each model
server's own ``CUDA_VISIBLE_DEVICES`` (``/proc/<pid>/environ``) and the balancer's. The NVML path
runs only where a driver answers.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from balancer.backends.local import LocalBackend
from balancer.backends.options import LocalOptions, parse_options
from balancer.config.load import ConfigError
from balancer.profiling.gpus import CoreAllocator, GpuAllocator, discover, nvml_gpus

from .helpers import BalancerProc, reap, test_model_spec, wait_until


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


def api(b: BalancerProc, path: str) -> Any:
    req = urllib.request.Request(b.url + path, headers={"Authorization": f"Bearer {b.token()}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


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


def test_spec_asking_more_gpus_than_exist(tmp_path: Path) -> None:
    b = None
    try:
        with pytest.raises(AssertionError, match=r"resources\.gpus"):
            b = BalancerProc(tmp_path, [test_model_spec(resources={"gpus": 3})], backend={"gpus": [0, 1]})
    finally:
        reap([b], [])


def test_two_gpu_servers_disjoint_third_waits(tmp_path: Path) -> None:
    assert LocalBackend.Options is LocalOptions
    spec = test_model_spec(min_servers=3, max_servers=3, resources={"gpus": 1})
    other = test_model_spec("nogpu", command=test_model_spec()["command"], min_servers=1, max_servers=1)
    b = BalancerProc(tmp_path, [spec, other], backend={"gpus": [0, 1]})
    pids: list[int] = []
    try:
        deferred = b.wait_event("server.deferred", spec="testmodel")
        assert "GPUs" in deferred["reason"]
        regs = wait_until(lambda: len(b.events("server.registered")) >= 3 and b.events("server.registered"))
        pids = b.server_pids()
        by_spec: dict[str, list[dict[str, str]]] = {}
        for e in regs:
            spec_of = b.find("server.requested", server=e["server"])
            assert spec_of is not None
            by_spec.setdefault(spec_of["spec"], []).append({"id": e["server"], **environ(int(e["pid"]))})
        gpu_envs = by_spec["testmodel"]
        assert len(gpu_envs) == 2
        assert sorted(x["CUDA_VISIBLE_DEVICES"] for x in gpu_envs) == ["0", "1"]
        assert by_spec["nogpu"][0]["CUDA_VISIBLE_DEVICES"] == ""  # asked for none, sees none
        assert deferred["server"] not in {x["id"] for x in gpu_envs}  # the third has not started
        assert b.find("server.started", server=deferred["server"]) is None
        assert "CUDA_VISIBLE_DEVICES" not in environ(b.proc.pid)  # the balancer's own is untouched
        shown = {s["id"]: s["gpus"] for s in api(b, "/api/servers")["servers"]}  # `balancer servers`
        for x in gpu_envs:
            assert shown[x["id"]] == [{"device": x["CUDA_VISIBLE_DEVICES"]}]
        assert shown[by_spec["nogpu"][0]["id"]] is None and shown[deferred["server"]] is None
        # One GPU server goes: its device goes to the waiting one.
        gone = gpu_envs[0]
        launcher = b.find("server.started", server=gone["id"])
        assert launcher is not None
        os.killpg(int(launcher["job"]), 15)
        reg = b.wait_event("server.registered", server=deferred["server"])
        pids += b.server_pids()
        assert environ(int(reg["pid"]))["CUDA_VISIBLE_DEVICES"] == gone["CUDA_VISIBLE_DEVICES"]
    finally:
        reap([b], pids)


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
    assert server_gpus(Backend(), {}, "s2") is None and server_gpus(object(), {}, "s3") is None
    # Another backend (SLURM): the GPUs the launcher sampled through its CUDA_VISIBLE_DEVICES.
    assert server_gpus(object(), {"s3": sample}, "s3") == [
        {"device": "1", "util_pct": 87.0, "mem_used_bytes": 5, "mem_total_bytes": 9}
    ]


def test_a_restarted_balancer_keeps_its_adopted_servers_gpus(tmp_path: Path) -> None:
    """After a restart the adopted launchers keep their devices: the new balancer does not hand
    them out again, and shows them."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # the launchers know the balancer by its URL
    spec = test_model_spec(models=["forward"], min_servers=2, max_servers=3, resources={"gpus": 1})
    kw: dict[str, Any] = {"backend": {"gpus": [0, 1]}, "port": port, "lease_s": 10}
    b1 = BalancerProc(tmp_path, [spec], **kw)
    b2 = None
    pids: list[int] = []
    try:
        regs = wait_until(lambda: len(b1.events("server.registered")) >= 2 and b1.events("server.registered"))
        pids = b1.server_pids()
        before = {e["server"]: environ(int(e["pid"]))["CUDA_VISIBLE_DEVICES"] for e in regs}
        b1.kill()
        b2 = BalancerProc(tmp_path, [spec], **kw)
        wait_until(lambda: len(b2.events("server.adopted")) >= 2, 30, what="both adopted")
        shown = wait_until(lambda: (v := {s["id"]: s["gpus"] for s in api(b2, "/api/servers")["servers"]})
                           and all(v.get(k) for k in before) and v)  # fmt: skip
        assert {k: shown[k] for k in before} == {k: [{"device": d}] for k, d in before.items()}
    finally:
        reap([b1, b2], pids)
