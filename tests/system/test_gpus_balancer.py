"""GPUs per local server in a real balancer process with a configured GPU list (the allocators:
unit/test_gpus).

No GPU is needed: ``[backend] gpus = [0, 1]`` stands for two devices; what is checked is each model
server's own ``CUDA_VISIBLE_DEVICES`` (``/proc/<pid>/environ``) and the balancer's."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from balancer.backends.local import LocalBackend
from balancer.backends.options import LocalOptions
from tests.helpers import BalancerProc, reap, test_model_spec, wait_until


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


def api(b: BalancerProc, path: str) -> Any:
    req = urllib.request.Request(b.url + path, headers={"Authorization": f"Bearer {b.token()}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


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
