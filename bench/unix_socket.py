"""The cost of ``isolate = "socket"``: the balancer's upstream client (``http/upstream.py``) calling
the same model server over loopback TCP and over a Unix socket, side by side.

Starts ``models/testmodel.py`` twice (``$PORT``, ``$UMBRIDGE_SOCKET``), then alternates rounds of
sequential keep-alive POST /Evaluate on each; prints microseconds per call (median of rounds, and the
p50 of single calls) for both.

    python bench/unix_socket.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from balancer.http.upstream import Upstream  # noqa: E402

BODY = b'{"name": "forward", "input": [[1.0]], "config": {}}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def round_of(up: Upstream, calls: int) -> tuple[float, list[float]]:
    lat = []
    t0 = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        status, _, _ = await up.post("/Evaluate", BODY)
        lat.append(time.perf_counter() - t)
        assert status == 200
    return (time.perf_counter() - t0) / calls, lat


async def ready(up: Upstream) -> None:
    for _ in range(300):
        try:
            await up.post("/Evaluate", BODY)
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("model server did not start")


async def main(calls: int, rounds: int, port: int, sock: str) -> None:
    ups = {"tcp": Upstream("127.0.0.1", port), "unix": Upstream("localhost", 80, unix=sock)}
    for up in ups.values():
        await ready(up)
        await round_of(up, calls // 4)  # warm up
    per: dict[str, list[float]] = {k: [] for k in ups}
    single: dict[str, list[float]] = {k: [] for k in ups}
    for _ in range(rounds):
        for k, up in ups.items():
            mean, lat = await round_of(up, calls)
            per[k].append(mean)
            single[k] += lat
    for k in ups:
        print(
            f"{k:5s} {statistics.median(per[k]) * 1e6:7.1f} us/call (median of {rounds} rounds of "
            f"{calls}), p50 {statistics.median(single[k]) * 1e6:7.1f} us"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    sock, port = str(Path(tempfile.mkdtemp(prefix="ub-bench-")) / "m.sock"), free_port()
    model = [sys.executable, str(ROOT / "models" / "testmodel.py")]
    env = {**os.environ, "UMBRIDGE_HOST": "127.0.0.1"}
    procs = [
        subprocess.Popen(
            model, env={**env, "PORT": str(port)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
        subprocess.Popen(
            model, env={**env, "UMBRIDGE_SOCKET": sock}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
    ]
    try:
        asyncio.run(main(a.calls, a.rounds, port, sock))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
