"""What clients can make the balancer hold is bounded: the metadata and sizes caches (LRU) (the file
descriptor limit of a real ``balancer serve``: system/test_file_limit)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from balancer.calls.metadata import LRU
from tests.fakes import model_server, running, until


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
            for cache in (calls.meta.answers, calls.meta.in_sizes, calls.meta.out_sizes):
                cache.size = 5
            for i in range(30):
                doc = {"name": "forward", "input": [[float(i)]], "config": {"k": i}}
                assert await h.post("/Evaluate", doc, token=None) == (200, {"output": [[2.0 * i]]})
            assert len(calls.meta.answers) <= 5 and len(calls.meta.in_sizes) <= 5

    asyncio.run(main())
