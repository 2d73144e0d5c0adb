"""Where a launcher says its server is, and where it asks the model's /Info (launcher/place.py).
Across real hosts (network namespaces): multinode/test_across_hosts."""

from __future__ import annotations

import pytest

from balancer.launcher.place import advertised_host, probe_host


@pytest.mark.parametrize("url", ["http://127.0.0.1:4242", "http://localhost:1", "http://[::1]:80"])
def test_a_balancer_on_this_machine_gets_loopback(url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("UMBRIDGE_BALANCER_ADVERTISE_HOST", raising=False)
    assert advertised_host(url) == "127.0.0.1"


def test_the_advertise_override_wins(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("UMBRIDGE_BALANCER_ADVERTISE_HOST", "node7-ib")
    assert advertised_host("http://10.0.0.1:4242") == "node7-ib"


@pytest.mark.parametrize(
    ("bind", "host"),
    [(None, "127.0.0.1"), ("", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"),
     ("10.77.0.11", "10.77.0.11"), ("fd00::2", "[fd00::2]")],
)  # fmt: skip
def test_the_readiness_probe_goes_where_the_model_listens(bind: str | None, host: str):
    assert probe_host(bind) == host
