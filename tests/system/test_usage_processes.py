"""Resource monitoring on real processes: the usage sampler on real process trees and its failure
modes, and ``server.usage`` journaled from a real launcher (sample cleaning, GPUs: unit/test_usage)."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import psutil
import pytest
import umbridge

from balancer.launcher.usage import UsageSampler, tree_pids
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
