"""Issue 21's smaller items in-process: refused-token counts flushed at the stop, a reload of a FIFO, a
huge or a hung file rejected without holding the reload lock, IPv6 client URLs in brackets, and scale
limits capped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from balancer.config.parse import parse_config
from balancer.ops import reload as reload_mod
from balancer.ops.api import SCALE_MAX
from balancer.runner import Runner
from tests.fakes import TOKEN, FakeScheduler, running

SPEC = {"name": "t", "command": [sys.executable, "-c", "pass"], "models": ["forward"], "max_servers": 3}


def test_refused_tokens_pending_at_the_stop_are_journaled_with_their_count(tmp_path: Path):
    async def main() -> list[dict[str, Any]]:
        async with running(tmp_path, [SPEC]) as h:
            for _ in range(100):
                status, _ = await h.post("/api/servers/register", {"server": "s1"}, token="wrong")
                assert status == 401
            events = h.events
        return events

    events = asyncio.run(main())
    refused = [e for e in events if e["ev"] == "auth.refused"]
    assert sum(e["count"] for e in refused) == 100, refused
    names = [e["ev"] for e in events]
    assert names.index("balancer.stopped") > max(i for i, n in enumerate(names) if n == "auth.refused")


def test_a_reload_of_a_fifo_or_a_huge_file_is_rejected_at_once(tmp_path: Path):
    fifo = tmp_path / "zz.toml"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.toml"
    huge.write_text("# x\n" * (1 << 19))  # 2 MiB of comments

    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            for path, why in ((fifo, "not a regular file"), (huge, "larger than")):
                try:
                    ok, out = await asyncio.wait_for(h.balancer.reloader.reload(str(path)), 5)
                except TimeoutError:
                    _release(fifo)  # before the fix: the reader thread waits for a writer
                    raise
                assert not ok and why in str(out), out
            assert not h.balancer.reloader._lock.locked()

    asyncio.run(main())


def _release(fifo: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_hung_config_read_gives_up_and_frees_the_reload_lock(tmp_path: Path, monkeypatch: Any):
    release = threading.Event()

    def hung(path: str, **overrides: Any) -> Any:
        release.wait(30)  # a read stuck in the kernel (a hung NFS server)
        raise OSError("late")

    monkeypatch.setattr(reload_mod, "read_config", hung)
    monkeypatch.setattr(reload_mod, "READ_TIMEOUT_S", 0.3)
    good = tmp_path / "b.toml"
    good.write_text("[[servers]]\nname = 't'\ncommand = ['true']\nmodels = ['forward']\n")

    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            ok, out = await asyncio.wait_for(h.balancer.reloader.reload(str(good)), 5)
            assert not ok and "no answer within" in str(out), out
            assert not h.balancer.reloader._lock.locked()
            assert h.of("config.rejected")

    try:
        asyncio.run(main())
    finally:
        release.set()


def test_an_ipv6_wildcard_host_gives_a_bracketed_url(tmp_path: Path):
    async def main() -> None:
        cfg = parse_config({"balancer": {"host": "::", "port": 0}, "servers": [SPEC]}, tmp_path)
        runner = Runner(cfg, FakeScheduler, run_dir=tmp_path, token=TOKEN, journal=False)
        await runner.open()
        try:
            await runner.start()
            assert runner.url == f"http://[::]:{runner.port}"
            assert (tmp_path / "url").read_text().strip() == runner.url
            async with aiohttp.ClientSession() as http, http.get(f"http://[::1]:{runner.port}/Info") as r:
                assert r.status == 200
        finally:
            await runner.stop("test over")

    try:
        asyncio.run(main())
    except OSError as exc:  # pragma: no cover - a machine without IPv6
        pytest.skip(f"no IPv6 here: {exc}")


def test_scale_limits_are_capped(tmp_path: Path):
    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            for key in ("max_servers", "min_servers", "backlog"):
                status, doc = await h.call("POST", "/api/specs/t/scale", {key: 9223372036854775807})
                assert status == 400 and f"<= {SCALE_MAX}" in doc["error"]["message"], doc
            status, doc = await h.call("POST", "/api/specs/t/scale", {"max_servers": SCALE_MAX})
            assert status == 200 and doc["max_servers"] == SCALE_MAX
            assert len(h.of("operator.action")) == 1

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_serve_refuses_a_fifo_or_a_huge_config_at_once(tmp_path: Path, kind: str):
    """``balancer serve --config`` reads the file as a reload does: exit 2 with one line, never a
    read blocked on a FIFO without a writer or a 2 MiB file parsed."""
    path = tmp_path / "c.toml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("# x\n" * (1 << 19))  # 2 MiB of comments
    code = "import sys; from balancer.cli.main import main; sys.exit(main())"
    argv = [sys.executable, "-c", code, "serve", "--config", str(path), "--run-dir", str(tmp_path / "run")]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        _release(path)  # before the fix: the start waits for a writer
        raise
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert ("not a regular file" if kind == "fifo" else "larger than") in lines[0]
