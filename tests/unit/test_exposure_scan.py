"""Registrations share the kernel-table scans of control/exposure.py: many at once, few scans, and
never a scan that began before the registration asked."""

from __future__ import annotations

import asyncio
import socket

import pytest

from balancer.control import exposure
from balancer.control.exposure import ExposureScan, exposed_addresses


def test_concurrent_checks_share_scans_and_each_sees_a_fresh_one(monkeypatch: pytest.MonkeyPatch) -> None:
    scans: list[int] = []

    def fake() -> dict[int, list[str]]:
        scans.append(len(scans))
        return {80: ["10.0.0.1"], 7: [f"scan{len(scans)}"]}

    monkeypatch.setattr(exposure, "listeners", fake)

    async def main() -> None:
        scan = ExposureScan()
        first = await asyncio.gather(*(scan.exposed(80) for _ in range(100)))
        assert first == [["10.0.0.1"]] * 100 and len(scans) == 1
        # One asks while a scan runs: it gets the next scan, not the running one.
        a = asyncio.ensure_future(scan.exposed(7))
        await asyncio.sleep(0)
        b = asyncio.ensure_future(scan.exposed(7))
        assert (await a, await b) == (["scan2"], ["scan3"])

    asyncio.run(main())


def test_a_socket_on_all_addresses_is_seen_and_one_on_loopback_is_not() -> None:
    with socket.socket() as wide, socket.socket() as narrow:
        wide.bind(("0.0.0.0", 0))
        wide.listen()
        narrow.bind(("127.0.0.1", 0))
        narrow.listen()
        assert exposed_addresses(wide.getsockname()[1]) == ["0.0.0.0"]
        assert exposed_addresses(narrow.getsockname()[1]) == []
