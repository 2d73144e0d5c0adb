"""The launcher's own HTTP client against canned answers: each way an answer's body may end; and
the preemption report it sends on a preemptible job's SIGTERM."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from balancer.launcher.client import HttpError, request

ANSWERS = {
    "/length": b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"stop": 1}',
    "/chunked": b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5\r\n{"a":\r\n3\r\n 2}\r\n0\r\n\r\n',
    "/eof": b"HTTP/1.0 200 OK\r\n\r\n[1, 2]",
    "/text": b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops",
    "/cut": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}",
    "/garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
}


async def _serve(seen: list[bytes]) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = [int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length")]
        seen.append(head + (await reader.readexactly(length[0]) if length else b""))
        writer.write(ANSWERS[head.split(b" ")[1].decode()])
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def test_bodies_by_length_chunks_and_end_of_connection() -> None:
    async def main() -> None:
        seen: list[bytes] = []
        async with await _serve(seen) as server:
            base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            got = await request("POST", f"{base}/length", 5, {"wait": 1}, {"Authorization": "Bearer t"})
            assert got == (200, {"stop": 1})
            assert seen[0].startswith(b"POST /length HTTP/1.1\r\n") and b"Authorization: Bearer t" in seen[0]
            assert seen[0].endswith(b'{"wait": 1}')
            assert await request("GET", f"{base}/chunked", 5) == (401, {"a": 2})
            assert await request("GET", f"{base}/eof", 5) == (200, [1, 2])
            assert await request("GET", f"{base}/text", 5) == (500, None)
            assert await request("GET", f"{base}/text", 5, read_body=False) == (500, None)
            for path in ("/cut", "/garbage"):
                with pytest.raises(HttpError):
                    await request("GET", f"{base}{path}", 5)

    asyncio.run(main())


def test_an_unreachable_balancer_is_an_os_error() -> None:
    async def main() -> None:
        server = await _serve([])
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(OSError):
            await request("GET", f"http://127.0.0.1:{port}/x", 5)

    asyncio.run(main())


def _launcher(monkeypatch: pytest.MonkeyPatch, base: str, preemptible: bool) -> Any:
    from balancer.launcher import contract
    from balancer.launcher.main import Launcher

    monkeypatch.setenv(contract.ENV_URL, base)
    monkeypatch.setenv(contract.ENV_TOKEN, "t")
    monkeypatch.setenv(contract.ENV_SERVER_ID, "s1")
    monkeypatch.delenv(contract.ENV_REGISTRATION_DIR, raising=False)
    if preemptible:
        monkeypatch.setenv(contract.ENV_PREEMPTIBLE, "1")
    else:
        monkeypatch.delenv(contract.ENV_PREEMPTIBLE, raising=False)
    return Launcher(["model"])


@pytest.mark.parametrize("stop", [False, True])
def test_a_preemptible_launcher_reports_an_unasked_sigterm(
    monkeypatch: pytest.MonkeyPatch, stop: bool
) -> None:
    """The first SIGTERM of a preemptible job is a preemption notice: reported at once, the server
    kept for its calls in flight unless the balancer says stop; the next SIGTERM stops it."""
    body = b'{"stop": true}' if stop else b'{"stop": false}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    monkeypatch.setitem(ANSWERS, "/api/servers/s1/preempted", answer)

    async def main() -> None:
        seen: list[bytes] = []
        async with await _serve(seen) as server:
            launcher = _launcher(monkeypatch, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", True)
            launcher.on_sigterm()
            assert launcher.preempt_notice is not None
            await launcher.preempt_notice
            assert seen[0].startswith(b"POST /api/servers/s1/preempted HTTP/1.1\r\n")
            assert b"Authorization: Bearer t" in seen[0] and seen[0].endswith(b'{"signal": "SIGTERM"}')
            assert launcher.stopped.is_set() is stop and launcher.balancer_said_stop is stop
            launcher.on_sigterm()  # the job's kill (or a second notice): stop now, report nothing more
            assert launcher.stopped.is_set() and len(seen) == 1

    asyncio.run(main())


def test_sigterm_stops_a_launcher_that_is_not_preemptible(monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = _launcher(monkeypatch, "http://127.0.0.1:9", False)
    launcher.on_sigterm()
    assert launcher.stopped.is_set() and launcher.stop_reason == "signal SIGTERM"
    assert launcher.preempt_notice is None


@pytest.mark.parametrize(
    ("preempted", "now", "grace"),
    [(False, False, "GRACE_S"), (True, False, "PREEMPTED_GRACE_S"), (False, True, "PREEMPTED_GRACE_S")],
)
def test_a_preempted_server_is_ended_without_the_graceful_wait(
    monkeypatch: pytest.MonkeyPatch, preempted: bool, now: bool, grace: str
) -> None:
    """Preempted (its own notice, or the balancer's ``now``): the calls in flight went elsewhere, so
    the model gets SIGKILL after PREEMPTED_GRACE_S, not the graceful GRACE_S the CPUs would wait."""
    from balancer.launcher import main as launcher_main

    asked: list[float] = []

    async def end_child(proc: Any, grace_s: float) -> int:
        asked.append(grace_s)
        return 0

    monkeypatch.setattr(launcher_main, "end_child", end_child)
    launcher = _launcher(monkeypatch, "http://127.0.0.1:9", True)
    launcher.proc = object()
    launcher.stop_now = now

    async def main() -> None:
        if preempted:
            launcher.preempt_notice = asyncio.get_running_loop().create_future()
        await launcher._stop_server(asyncio.get_running_loop().create_future())

    asyncio.run(main())
    assert asked == [getattr(launcher_main, grace)]
    assert launcher_main.PREEMPTED_GRACE_S < launcher_main.GRACE_S
