"""Shared by ``bench/overhead.py`` and ``bench/haproxy.py``: the load generator, CPU time from /proc,
and one balancer started in front of one trivial test-model server.

The load generator runs in its own process (``python bench/_load.py URL INFLIGHT SECONDS`` prints one
JSON line), raw aiohttp with keep-alive connections, so that its CPU is not the measured process's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BODY = b'{"name": "forward", "input": [[1.0]], "config": {}}'


async def loadgen(url: str, inflight: int, seconds: float) -> dict:
    import aiohttp

    lat: list[float] = []
    stop = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def worker() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                async with http.post(url + "/Evaluate", data=BODY) as r:
                    await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t)

        # warm-up: open the connections
        await asyncio.gather(*(http.post(url + "/Evaluate", data=BODY) for _ in range(inflight)))
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        wall = time.monotonic() - t0
    lat.sort()
    return {
        "calls": len(lat),
        "rate": len(lat) / wall,
        "p50": lat[len(lat) // 2],
        "p99": lat[int(len(lat) * 0.99)],
    }


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def run_load(url: str, inflight: int, seconds: float) -> dict:
    """One load phase in a separate process (killed with this one on an error or Ctrl-C)."""
    out = subprocess.run(
        [sys.executable, __file__, url, str(inflight), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@contextmanager
def balancer(
    root: Path,
    concurrency: int,
    python: list[str] | None = None,
    prefix: str = "bench-overhead-",
    env: dict[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """``balancer serve`` (the package under ``root``) with one trivial test-model server (min = max = 1,
    ``concurrency`` calls at a time); yields (balancer process, the server's URL, the balancer's URL).
    ``python`` replaces ``[sys.executable, "-m", "balancer.cli"]`` (e.g. to run it on another loop).
    ``env``: more environment (e.g. ``UMBRIDGE_BALANCER_LOOP``). On leaving, SIGINT (the balancer
    stops its server), then SIGKILL to whatever of it is left."""
    from balancer.observe.journal import read_journal

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    cfg = tmp / "bench.toml"
    cfg.write_text(
        f'[balancer]\nport = 0\nrun_dir = "{tmp}/run"\n'
        f'[[servers]]\nname = "trivial"\ncommand = ["{sys.executable}", "{ROOT}/models/testmodel.py"]\n'
        f'models = ["forward"]\nmin_servers = 1\nmax_servers = 1\nconcurrency = {concurrency}\n'
    )
    proc = subprocess.Popen(
        [*(python or [sys.executable, "-m", "balancer.cli"]), "serve", "--config", str(cfg)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C reaches this process, which then stops the balancer in order
    )
    journal = tmp / "run" / "journal.jsonl"
    try:
        deadline = time.monotonic() + 60
        direct = via = None
        while time.monotonic() < deadline and not (direct and via) and proc.poll() is None:
            time.sleep(0.1)
            if journal.exists():
                for e in read_journal(journal):
                    if e["ev"] == "balancer.started":
                        via = e["url"]
                    if e["ev"] == "server.registered":
                        direct = e["url"]
        if not (direct and via):
            raise SystemExit("bench: balancer or server did not come up")
        time.sleep(0.5)  # server.ready follows registration
        yield proc, direct, via
    finally:
        stop(proc, signal.SIGINT)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    """Stop a process this bench started: ``sig``, then SIGKILL after ``timeout``; with psutil, also
    SIGKILL to any of its descendants still alive after it (a server a killed balancer left)."""
    try:
        import psutil

        kids = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    except Exception:  # no psutil, or the process is gone
        kids = []
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for k in kids:
        try:
            k.wait(5)
        except Exception:
            try:
                k.kill()
            except Exception:
                pass


if __name__ == "__main__":
    url, inflight, seconds = sys.argv[1:4]
    print(json.dumps(asyncio.run(loadgen(url, int(inflight), float(seconds)))))
