"""Which event loop ``serve`` runs on (cli/eventloop.py, ``[balancer] loop``)."""

from __future__ import annotations

import asyncio

import pytest

from balancer.cli.eventloop import ENV, LoopUnavailable, loop_factory, run
from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError

SERVERS = [{"name": "w", "command": "x"}]


def test_auto_takes_uvloop_where_installed_and_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    pytest.importorskip("uvloop")
    assert loop_factory("auto")[0] == "uvloop"
    assert loop_factory("asyncio")[0] == "asyncio"
    monkeypatch.setenv(ENV, "asyncio")  # the environment wins over the config
    assert loop_factory("uvloop")[0] == "asyncio"


def test_run_completes_a_coroutine_on_each_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(which(), "asyncio").startswith("asyncio")
    pytest.importorskip("uvloop")
    assert run(which(), "uvloop").startswith("uvloop")


def test_a_bad_choice_is_one_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "tokio")
    with pytest.raises(LoopUnavailable, match="expected auto, asyncio or uvloop"):
        loop_factory()
    with pytest.raises(ConfigError, match=r"balancer\.loop"):
        parse_config({"balancer": {"loop": "tokio"}, "servers": SERVERS})
    assert parse_config({"balancer": {"loop": "asyncio"}, "servers": SERVERS}).loop == "asyncio"
