"""``make demo``: the balancer on the local backend with the test model, driven by the official client.

Starts ``balancer serve`` as a child process, sends a batch of evaluations with ``umbridge.HTTPModel``
from several threads, prints a one-screen summary from the client's timings and the journal, and
shuts the balancer down with SIGINT (checking that it exits cleanly).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from balancer.observe.journal import read_journal

ROOT = Path(__file__).resolve().parent.parent


def wait_started(journal: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """The URL from the journal's ``balancer.started`` event, once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: balancer exited early with code {proc.returncode}")
        if journal.exists():
            for e in read_journal(journal):
                if e["ev"] == "balancer.started":
                    return str(e["url"])
        time.sleep(0.05)
    raise SystemExit("demo: balancer did not start within 30 s")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--config", default=str(ROOT / "examples" / "demo.toml"))
    args = ap.parse_args()
    import umbridge

    run_dir = ROOT / "demo-run" / time.strftime("%Y%m%d-%H%M%S")
    journal = run_dir / "journal.jsonl"
    cmd = [sys.executable, "-m", "balancer.cli", "serve", "--config", args.config, "--port", "0"]
    cmd += ["--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        url = wait_started(journal, proc)
        t0 = time.monotonic()
        model = umbridge.HTTPModel(url, "forward")  # waits for the first server to be ready
        first_ready = time.monotonic() - t0

        def one(i: int) -> float:
            t = time.monotonic()
            out = model([[float(i)]])
            assert out == [[2.0 * i]], out
            return time.monotonic() - t

        t1 = time.monotonic()
        with ThreadPoolExecutor(args.threads) as pool:
            lat = list(pool.map(one, range(args.calls)))
        wall = time.monotonic() - t1
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    events = read_journal(journal)
    started = sum(1 for e in events if e["ev"] == "server.requested")
    service = [e["service_s"] for e in events if e["ev"] == "call.completed" and e.get("service_s")]
    med, p90 = statistics.median(lat) * 1e3, pct(lat, 0.9) * 1e3
    print()
    print("umbridge-balancer demo (local backend, test model 'forward', TEST_DELAY=20 ms)")
    print(f"  calls               {args.calls} from {args.threads} client threads, all correct")
    print(f"  first server ready  {first_ready:.2f} s after the client connected")
    print(f"  servers started     {started}")
    print(f"  wall time           {wall:.2f} s ({args.calls / wall:.0f} calls/s)")
    print(f"  per-call latency    median {med:.1f} ms, p90 {p90:.1f} ms")
    print(f"  server-side time    median {statistics.median(service) * 1e3:.1f} ms (the model sleeps 20 ms)")
    print(f"  journal             {journal}")
    print(f"  balancer exit code  {rc}")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
