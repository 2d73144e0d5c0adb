"""The owner's pool is the owner's: the status API wants the token (files, permissions and loopback
listeners of a real balancer process: system/test_security)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.fakes import running


def test_the_status_api_wants_the_token(tmp_path: Path):
    async def main() -> None:
        async with running(tmp_path, [{"name": "t", "command": ["x"], "models": ["forward"]}]) as h:
            denied = await h.get("/api/status", token=None)
            assert denied["error"]["type"] == "Unauthorized"
            assert (await h.get("/api/status", token="wrong"))["error"]["type"] == "Unauthorized"
            assert "servers" in await h.get("/api/status")
            await h.event("auth.refused", path="/api/status")

    asyncio.run(main())
