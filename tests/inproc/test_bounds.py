"""What clients can make the balancer hold is bounded: the metadata and sizes caches (LRU), and the
file descriptors (the soft limit is raised to the hard one at start)."""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
import sys
from pathlib import Path

from balancer.calls.path import LRU
from tests.fakes import model_server, running, until
from tests.helpers import ROOT, wait_until


def test_lru_forgets_the_least_recently_used():
    c = LRU(size=2)
    c["a"], c["b"] = 1, 2
    assert c.get("a") == 1  # now "b" is the oldest
    c["c"] = 3
    assert list(c) == ["a", "c"] and c.get("b") is None


def test_distinct_configs_do_not_grow_the_caches(tmp_path: Path):
    spec = {"name": "t", "command": ["true"], "models": ["forward"], "min_servers": 1}

    async def main() -> None:
        async with running(tmp_path, [spec]) as h, model_server() as m:
            sid = (await until(lambda: h.backend.submitted))[0].server_id
            await h.register(sid, m)
            calls = h.balancer.calls
            for cache in (calls._meta, calls._in_sizes, calls._out_sizes):
                cache.size = 5
            for i in range(30):
                doc = {"name": "forward", "input": [[float(i)]], "config": {"k": i}}
                assert await h.post("/Evaluate", doc, token=None) == (200, {"output": [[2.0 * i]]})
            assert len(calls._meta) <= 5 and len(calls._in_sizes) <= 5

    asyncio.run(main())


def test_serve_raises_the_soft_file_limit_to_the_hard_one(tmp_path: Path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[balancer]\nport = 0\nrun_dir = "{tmp_path}/run"\n[[servers]]\ncommand = "x"\n')
    p = subprocess.Popen(
        [sys.executable, "-m", "balancer.cli", "serve", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)),
    )
    try:
        assert p.stdout is not None
        assert b"serving UM-Bridge" in p.stdout.readline()

        def limits() -> list[str]:
            text = Path(f"/proc/{p.pid}/limits").read_text()
            return next(line for line in text.splitlines() if line.startswith("Max open files")).split()

        fields = wait_until(limits, 10)
        assert fields[3] == fields[4] == str(hard)  # soft raised from 256 to the hard limit
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(30)
