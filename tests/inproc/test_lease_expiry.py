"""The balancer's side of the lease: a server whose launcher stops polling (its node died or went
off the network with its processes alive) is given up after ``lease_s``, its call in flight is
aborted and retried on another server, and the old launcher is told to stop if it comes back.
Across real hosts (a link taken down): multinode/test_node_failures."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.fakes import model_server, running

LEASE_S = 0.5
TOP = {"port": 0, "scale_interval_s": 0.05, "lease_s": LEASE_S}
DELAY_MS = 1500  # the model's time per call: the first call is still in flight when the lease expires


def test_a_silent_launchers_server_is_given_up_and_its_call_retried(tmp_path: Path):
    async def main() -> None:
        spec = {"name": "t", "command": ["x"], "models": ["forward"], "min_servers": 1, "max_servers": 1}
        async with (
            model_server(TEST_DELAY=str(DELAY_MS)) as model,
            running(
                tmp_path, [spec], balancer={"port": 0, "scale_interval_s": 0.05, "lease_s": LEASE_S}
            ) as h,
        ):
            h.serve(model)  # every start registers with the model server; none polls its lease...
            first = (await h.event("server.ready"))["server"]
            assert await h.post(f"/api/servers/{first}/lease", {"wait": 0}) == (200, {"stop": False})
            t0 = time.monotonic()  # ...but the first server's launcher polls once, then falls silent
            call = asyncio.ensure_future(h.evaluate(3.0))
            await h.event("call.dispatched", server=first)
            failed = await h.event("server.failed", server=first)
            assert failed["reason"].startswith("lease expired")
            assert LEASE_S <= time.monotonic() - t0 < 4 * LEASE_S
            await h.event("call.requeued", server=first)  # aborted, not left waiting on a silent peer
            assert await call == (200, {"output": [[6.0]]})  # answered by the replacement
            assert h.of("call.completed")[-1]["server"] != first
            # The old launcher comes back: its lease poll and its registration are told to stop.
            assert await h.post(f"/api/servers/{first}/lease", {"wait": 0}) == (200, {"stop": True})
            assert (await h.register(first, model))[1]["stop"] is True

    asyncio.run(main())
