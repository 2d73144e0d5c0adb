"""Notifications: real mail to an in-process SMTP sink (aiosmtpd) and a webhook to a local HTTP
sink; a storm of failures is one message; a mail server that never answers delays no call."""

from __future__ import annotations

import asyncio
import contextlib
import email
import sys
from collections.abc import AsyncIterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP

from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError, NotifySettings
from balancer.observe.events import EventBus
from balancer.observe.notify import Notifier
from tests.fakes import model_server, running, until

SPEC = {"name": "t", "command": [sys.executable], "models": ["forward"], "max_start_failures": 1}
MAIL = "mailto://127.0.0.1:{port}?from=balancer@example.org&to=ops@example.org"


class _Mails:
    def __init__(self) -> None:
        self.got: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.got.append(email.message_from_bytes(envelope.content))
        return "250 OK"


def text(msg: Message) -> str:
    """The plain-text part of a mail."""
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode().replace("\r\n", "\n")  # type: ignore[union-attr]
    return ""


@contextlib.asynccontextmanager
async def smtp_sink() -> AsyncIterator[tuple[int, list[Message]]]:
    """An SMTP server on loopback in this event loop (apprise sends from its own thread)."""
    mails = _Mails()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(mails, hostname="sink"), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1], mails.got
    finally:
        server.close()


@contextlib.asynccontextmanager
async def http_sink() -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """A webhook receiver on loopback: the JSON documents posted to it."""
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], got
    finally:
        await runner.cleanup()


class _Silent(asyncio.Protocol):
    """Accepts a connection and never says a word: a mail server that hangs."""

    opened: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.opened.append(transport)


def test_mail_and_webhook_for_a_held_spec_and_the_run_summary(tmp_path: Path) -> None:
    async def main() -> None:
        async with smtp_sink() as (smtp, mails), http_sink() as (port, hooks):
            notify = {
                "urls": [MAIL.format(port=smtp), f"json://127.0.0.1:{port}/hook"],
                "on": ["spec_held", "run_finished"],
                "coalesce_s": 0.1,
                "title_prefix": "test-run",
            }
            async with running(tmp_path, [SPEC], notify=notify) as h:
                call = asyncio.ensure_future(h.evaluate(1.0))
                first = (await until(lambda: h.backend.submitted, what="a start"))[0].server_id
                h.balancer.pool.job_ended(first, "exit 1 on purpose", True)
                assert (await call)[0] == 503
                await until(lambda: len(h.of("notify.sent", kind="spec_held")) == 2, 30, "two spec_held sent")
                assert len(mails) == 1 and len(hooks) == 1
                assert mails[0]["Subject"] == "test-run: 1 spec(s) held" == hooks[0]["title"]
                assert "exit 1 on purpose" in text(mails[0]) and "exit 1 on purpose" in hooks[0]["message"]
                assert {e["target"].split(":")[0] for e in h.of("notify.sent")} == {"mailto", "json"}
            # Shutdown waited for the summary, journaled before balancer.stopped.
            names = [e["ev"] for e in h.events]
            assert names[-1] == "balancer.stopped"
            assert len(h.of("notify.sent", kind="run_finished")) == 2
            assert names.index("notify.sent", names.index("balancer.stopping")) < len(names) - 1
            assert len(mails) == 2 and len(hooks) == 2
            assert mails[1]["Subject"].startswith("test-run: run finished (1 calls, ")
            body = text(mails[1])
            assert "calls: 1 (1 failed, 0 model errors)" in body and "servers: 1 started, 1 failed" in body
            assert "server-hours: 0.00" in body and hooks[1]["message"].strip() == body.strip()

    asyncio.run(main())


def _storm(bus: EventBus, n: int, first: int = 0, spec: str = "eigen") -> None:
    for i in range(first, first + n):
        bus.emit("server.requested", server=f"s{i}", spec=spec, reason="demand")
        bus.emit("server.failed", server=f"s{i}", reason=f"lost: connection refused #{i}")


def test_a_storm_of_50_failures_is_one_message_and_the_next_waits_for_the_rate_limit() -> None:
    async def main() -> None:
        async with http_sink() as (port, hooks):
            bus = EventBus()
            events: list[dict[str, Any]] = []
            bus.subscribe(events.append)
            settings = NotifySettings(
                urls=(f"json://127.0.0.1:{port}/hook",), on=("server_failures",), failure_threshold=3,
                coalesce_s=0.2, min_interval_s=3600.0,
            )  # fmt: skip
            notifier = Notifier(settings, bus)
            bus.subscribe(notifier)
            _storm(bus, 50)
            sent = await until(lambda: [e for e in events if e["ev"] == "notify.sent"], 20, "one message")
            assert len(hooks) == 1 and sent[0]["count"] == 50
            assert hooks[0]["title"] == "umbridge-balancer: 50 server failures"
            msg = hooks[0]["message"]
            assert "50 server failures in the last" in msg and "(by spec: eigen 50)" in msg
            assert "s0 (eigen): lost: connection refused #0" in msg and "... and 45 more" in msg
            # Two more failures: below the threshold, nothing pending. Three more: the threshold is
            # crossed, one notice of all five, held back by the rate limit (an hour after the last).
            _storm(bus, 2, first=50)
            assert not notifier._pending
            _storm(bus, 3, first=52)
            assert notifier._pending["server_failures"].count == 5
            due = notifier._timers["server_failures"].when() - asyncio.get_running_loop().time()
            assert due > 3500
            await notifier.close()  # shutdown sends what is pending at once
            assert len(hooks) == 2 and hooks[1]["title"] == "umbridge-balancer: 5 server failures"
            assert [e["count"] for e in events if e["ev"] == "notify.sent"] == [50, 5]

    asyncio.run(main())


def test_spec_lost_when_its_last_ready_server_fails() -> None:
    async def main() -> None:
        async with http_sink() as (port, hooks):
            bus = EventBus()
            events: list[dict[str, Any]] = []
            bus.subscribe(events.append)
            notifier = Notifier(NotifySettings(urls=(f"json://127.0.0.1:{port}/hook",), on=("spec_lost",),
                                               coalesce_s=0.05), bus)  # fmt: skip
            bus.subscribe(notifier)
            for s in ("s1", "s2"):
                bus.emit("server.requested", server=s, spec="eigen", reason="demand")
                bus.emit("server.ready", server=s, spec="eigen", models=["m"], concurrency=1)
            bus.emit("server.failed", server="s1", reason="lost: reset")
            assert not notifier._pending  # s2 still serves
            bus.emit("server.failed", server="s2", reason="lost: refused")
            await until(lambda: hooks, 20, "spec_lost message")
            assert hooks[0]["title"] == "umbridge-balancer: all servers of eigen 1 lost"
            assert "s2 (eigen): lost: refused" in hooks[0]["message"]
            await notifier.close()
            assert len(hooks) == 1

    asyncio.run(main())


def test_a_mail_server_that_never_answers_delays_no_call(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        _Silent.opened = []
        blackhole = await loop.create_server(_Silent, "127.0.0.1", 0)
        port = blackhole.sockets[0].getsockname()[1]
        notify = {
            "urls": [MAIL.format(port=port) + "&cto=5"],  # apprise's socket timeout for mail
            "on": ["server_failures"],
            "failure_threshold": 1,
            "coalesce_s": 0.0,
        }
        spec = {**SPEC, "min_servers": 2, "max_servers": 2, "max_start_failures": 3}
        try:
            async with running(tmp_path, [spec], notify=notify) as h, model_server() as m:
                starts = await until(lambda: h.backend.submitted[1:] and h.backend.submitted, what="starts")
                a, b = starts[:2]
                h.balancer.pool.job_ended(b.server_id, "node failure", True)
                await h.register(a.server_id, m)
                await h.event("server.ready", server=a.server_id)
                await until(lambda: _Silent.opened, 20, "the mail send to connect")
                results = await asyncio.gather(*(h.evaluate(float(i)) for i in range(20)))
                assert all(status == 200 for status, _ in results)
                assert results[7][1] == {"output": [[14.0]]}
                # Every call answered while the send was still stuck on the silent server.
                assert not h.of("notify.sent") and not h.of("notify.failed")
                assert not _Silent.opened[0].is_closing()
                failed = await h.event("notify.failed", timeout=60)
                assert failed["kind"] == "server_failures" and failed["count"] == 1
                assert failed["target"].startswith("mailto://") and failed["error"]
        finally:
            blackhole.close()

    asyncio.run(main())


def test_notify_config_is_checked_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    base: dict[str, Any] = {"servers": [{"name": "a", "command": "x"}]}

    def error(notify: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as exc:
            parse_config({**base, "notify": notify})
        return str(exc.value)

    assert parse_config(base).notify.urls == ()
    assert "notify.urls[1]" in error({"urls": ["json://127.0.0.1:9/x", "nosuchservice://x"]})
    assert "unknown kind 'everything'" in error({"on": ["everything"]})
    assert "notify.coalesce_s: expected a number" in error({"coalesce_s": "soon"})
    assert "notify.failure_threshold: must be > 0" in error({"failure_threshold": 0})
    assert "notify.colour: unknown key" in error({"colour": "red"})
    ok = parse_config({**base, "notify": {"urls": [MAIL.format(port=25)], "on": ["run_finished"]}}).notify
    assert ok.on == ("run_finished",) and ok.coalesce_s == 30.0
    monkeypatch.setitem(sys.modules, "apprise", None)  # as if the extra were not installed
    assert "install umbridge-balancer[notify]" in error({"urls": [MAIL.format(port=25)]})
    assert parse_config({**base, "notify": {"on": ["spec_held"]}}).notify.urls == ()  # no URL, no apprise
