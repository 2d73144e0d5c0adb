"""Pure parts: request validation, config validation (policy and routing: test_policy.py; the CLI's
errors as a process: system/test_cli_errors)."""

from __future__ import annotations

import pytest

from balancer.calls.protocol import ProtocolError, check_sizes, parse_request
from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError


def test_parse_request_accepts_valid_and_rejects_bad():
    r = parse_request("Evaluate", b'{"name": "m", "input": [[1, 2.5]], "config": {"b": 1, "a": 2}}')
    assert r.model == "m" and r.config_key == b'{"a":2,"b":1}'
    for body in (
        b"[]",
        b'{"name": "m"}',
        b'{"name": "m", "input": [1]}',
        b'{"name": "m", "input": [[true]]}',
        b'{"name": "m", "input": [[1]], "config": []}',
    ):
        with pytest.raises(ProtocolError):
            parse_request("Evaluate", body)
    with pytest.raises(ProtocolError, match="outWrt"):
        parse_request("Gradient", b'{"name": "m", "input": [[1]], "outWrt": 0.5, "inWrt": 0, "sens": [1]}')


def test_check_sizes():
    doc = {"input": [[1.0], [1.0, 2.0]], "outWrt": 0, "inWrt": 1, "vec": [1.0, 1.0]}
    check_sizes("ApplyJacobian", doc, [1, 2], [3])
    with pytest.raises(ProtocolError, match="input\\[1\\]"):
        check_sizes("Evaluate", {"input": [[1.0], [1.0]]}, [1, 2], None)
    with pytest.raises(ProtocolError, match="vec"):
        check_sizes("ApplyJacobian", {**doc, "inWrt": 0}, [1, 2], [3])


def servers(**kw):
    return {"servers": [{"name": "m", "command": "python model.py", **kw}]}


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"servers": []}, "servers"),
        (servers(concurrency=0), "servers.m.concurrency"),
        (servers(concurrency="2"), "servers.m.concurrency"),
        (servers(min_servers=5, max_servers=2), "servers.m.min_servers"),
        (servers(colour="red"), "servers.m.colour"),
        (servers(resources={"cpus": -1}), "servers.m.resources.cpus"),
        (servers(resources={"gpu": 1}), "servers.m.resources.gpu"),
        (servers(job_script="nope.sh"), "servers.m.command"),
        ({"balancer": {"scheduler": "pbs"}, **servers()}, "balancer.scheduler"),
        ({"balancer": {"port": 70000}, **servers()}, "balancer.port"),
        ({"balancer": {"prot": 1}, **servers()}, "balancer.prot"),
        ({"server": [], **servers()}, "server"),
    ],
)
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert exc.value.key == key


def test_config_defaults():
    cfg = parse_config(servers())
    (s,) = cfg.servers
    assert (cfg.host, cfg.port, cfg.scheduler, s.concurrency, s.max_attempts) == (
        "127.0.0.1",
        4242,
        "local",
        1,
        3,
    )
    assert s.command == ("python", "model.py")
