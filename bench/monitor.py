"""Cost of resource monitoring (issue 12): what the launcher's usage sampling costs per server.

Two measurements, printed side by side:

1. In-process: CPU seconds of one ``UsageSampler.sample()`` (process tree, node, no GPU here) for
   trees of 1 and 8 idle processes, averaged over ``--samples`` samples, and what that is as a share
   of one core at the default 5 s interval.
2. End to end: two real balancers, each with one idle ``waiter`` server, one with
   ``monitor_interval_s = 0`` (no monitoring) and one sampling every ``--interval`` seconds (short,
   to have many samples in the window); the launchers' own CPU time over ``--window`` seconds.
   The difference per sample includes the worker-thread hand-off and the samples' share of the
   lease poll; scaled to 5 s it is the overhead per server. Target: < 1% of a core.

    python bench/monitor.py [--samples 200] [--window 30] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from balancer.launcher.usage import UsageSampler  # noqa: E402
from tests.helpers import MODELS, BalancerProc  # noqa: E402

DEFAULT_S = 5.0
IDLE_TREE = """
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1e6)"]) for _ in range({n})]
print("ready", flush=True)
time.sleep(1e6)
"""


def per_sample_cpu(nprocs: int, samples: int) -> tuple[float, int]:
    """CPU seconds per sample of a tree of ``nprocs`` idle processes, measured in this process."""
    root = subprocess.Popen([sys.executable, "-c", IDLE_TREE.format(n=nprocs - 1)], stdout=subprocess.PIPE)
    try:
        assert root.stdout is not None and root.stdout.readline().strip() == b"ready"
        s = UsageSampler(root.pid, gpus=False)
        procs = s.sample()["procs"]
        t0 = time.process_time()
        for _ in range(samples):
            s.sample()
        return (time.process_time() - t0) / samples, procs
    finally:
        for p in psutil.Process(root.pid).children(recursive=True):
            p.kill()
        root.kill()
        root.wait()


def launcher_cpu(b: BalancerProc) -> float:
    """The launcher's CPU seconds, all threads: ``/proc/<pid>/task/*/schedstat`` (nanoseconds) where
    there is one, else psutil's clock ticks (10 ms: too coarse for an idle launcher)."""
    pid = int(b.wait_event("server.registered", 60)["launcher_pid"])
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system


def end_to_end(window: float, interval: float) -> tuple[float, float, int]:
    """Launcher CPU seconds over ``window`` without and with monitoring, and the samples taken."""
    cmd = [sys.executable, str(MODELS / "waiter.py")]
    spec = {"name": "w", "command": cmd, "min_servers": 1, "idle_timeout_s": 3600}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, mon in (("off", 0.0), ("on", interval)):
            d = Path(tmp) / name
            d.mkdir()
            runs[name] = BalancerProc(d, [spec], monitor_interval_s=mon)
        try:
            for b in runs.values():
                b.wait_event("server.ready", 60)
            time.sleep(2 * interval + 1)  # past the sampler's start (imports, first look)
            before = {k: launcher_cpu(b) for k, b in runs.items()}
            n0 = len(runs["on"].events("server.usage"))
            time.sleep(window)
            after = {k: launcher_cpu(b) for k, b in runs.items()}
            time.sleep(interval + 1)
            n = len(runs["on"].events("server.usage")) - n0  # samples journaled (± one poll's batch)
        finally:
            for b in runs.values():
                b.stop()
    return after["off"] - before["off"], after["on"] - before["on"], n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=0.5)
    a = p.parse_args()
    print("in-process sample() cost (process tree + node, no GPU):")
    print(f"{'procs':>6} {'CPU ms/sample':>14} {'% core at 5 s':>14}")
    for n in (1, 8):
        cpu, procs = per_sample_cpu(n, a.samples)
        print(f"{procs:>6} {cpu * 1e3:>14.3f} {cpu / DEFAULT_S * 100:>13.4f}%")
    print(f"\nlaunchers with one idle waiter server, {a.window:g} s window, sampling every {a.interval:g} s:")
    off, on, n = end_to_end(a.window, a.interval)
    expected = a.window / a.interval
    per = max(on - off, 0.0) / expected
    print(f"  launcher CPU without monitoring: {off * 1e3:.1f} ms ({off / a.window * 100:.3f}% of a core)")
    print(f"  launcher CPU with monitoring:    {on * 1e3:.1f} ms ({on / a.window * 100:.3f}% of a core)")
    ratio = f"{on / off:.1f}x" if off > 0 else "n/a (no measurable CPU without)"
    print(f"  ratio with/without: {ratio}; samples journaled ~{n} (expected ~{expected:.0f})")
    print(f"  monitoring cost: {per * 1e3:.3f} ms CPU per sample")
    print(
        f"  at the default {DEFAULT_S:g} s interval: {per / DEFAULT_S * 100:.4f}% of a core per server "
        f"(target < 1%)"
    )


if __name__ == "__main__":
    main()
