"""The launcher's probe time (launcher/contract.py): how long a started model has to answer /Info."""

from __future__ import annotations

import os

from balancer.launcher.contract import probe_time


def test_probe_time_is_short_by_default_and_the_spec_env_wins() -> None:
    assert probe_time(120.0, None) == 30.0  # looked at after 30 s (it fails then only on a wrong port)
    assert probe_time(10.0, None) == 10.0  # never beyond the start-up timeout
    assert probe_time(600.0, None) == 30.0
    assert probe_time(120.0, "2") == 2.0 and probe_time(120.0, "500") == 120.0  # env, capped
    assert probe_time(120.0, "soon") == 30.0  # not a number: the default


def test_listening_ports_sees_a_model_that_listens_on_another_port() -> None:
    import socket

    from balancer.launcher.ports import listening_ports

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        ports = listening_ports(os.getpid())
        assert ports is not None and srv.getsockname()[1] in ports
    finally:
        srv.close()
    assert listening_ports(2**22 + 12345) is None  # no such process: unknown, not "none"
