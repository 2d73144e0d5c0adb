"""Pure parts: scaling policy, routing, request validation, config validation, CLI errors."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from balancer.config import ConfigError, parse_config
from balancer.protocol import ProtocolError, check_sizes, parse_request
from balancer.scaling import SpecState, decide, pick_server, start_backoff_s

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class S:
    outstanding: int
    concurrency: int = 1


def test_pick_server_least_outstanding_with_free_slot():
    a, b, c = S(2, 2), S(1, 4), S(3, 4)
    assert pick_server([a, b, c]) is b
    assert pick_server([S(1, 1), S(2, 2)]) is None
    assert pick_server([]) is None


def spec(**kw) -> SpecState:
    base = dict(
        name="m",
        min_servers=0,
        max_servers=4,
        backlog=2,
        concurrency=1,
        idle_timeout_s=10,
        startup_timeout_s=30,
    )
    base.update(kw)
    return SpecState(**base)


def test_demand_starts_servers_within_backlog_and_max():
    (a,) = decide([spec(waiting=10)], now=0)
    assert (a.kind, a.count, a.reason) == ("start", 2, "demand")  # backlog 2 at once
    (a,) = decide([spec(waiting=10, starting=1)], now=0)
    assert a.count == 1
    assert decide([spec(waiting=10, starting=2)], now=0) == []
    (a,) = decide([spec(waiting=10, ready=3)], now=0)
    assert a.count == 1 and a.target == 4  # max_servers
    (a,) = decide([spec(waiting=3, concurrency=2)], now=0)
    assert a.count == 2  # ceil(3 / 2)


def test_min_servers_and_held_specs():
    (a,) = decide([spec(min_servers=3, backlog=5)], now=0)
    assert (a.count, a.reason) == (3, "min_servers")
    assert decide([spec(waiting=5, start_blocked=True)], now=0) == []


def test_idle_stop_longest_idle_first_never_below_min():
    acts = decide([spec(ready=3, min_servers=1, idle=(("s1", 5.0), ("s2", 1.0), ("s3", 9.5)))], now=20)
    assert [(a.kind, a.server) for a in acts] == [("stop", "s2"), ("stop", "s1")]
    assert decide([spec(ready=2, idle=(("s1", 15.0),))], now=20) == []  # not idle long enough
    assert decide([spec(ready=2, waiting=1, idle=(("s1", 0.0),))], now=20)[0].kind == "start"


def test_startup_timeout_and_replacement():
    acts = decide([spec(starting=1, starts=(("s9", 0.0),))], now=31)
    assert [(a.kind, a.server, a.reason) for a in acts] == [("stop", "s9", "startup_timeout")]
    (a,) = decide([spec(ready=1, unreplaced_draining=1)], now=0)
    assert (a.kind, a.reason, a.count) == ("start", "replace", 1)


def test_backoff_grows_and_caps():
    assert [start_backoff_s(n) for n in range(5)] == [0, 1, 2, 4, 8]
    assert start_backoff_s(30) == 60


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


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "balancer.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[servers]]\nname = "m"\ncommand = "x"\nconcurrency = 0\n')
    r = run_cli("serve", "--config", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "servers.m.concurrency" in r.stderr
    r = run_cli("serve", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    bad.write_text("[[servers]\n")
    r = run_cli("serve", "--config", str(bad))
    assert r.returncode == 2 and "invalid TOML" in r.stderr


def test_cli_bad_flags_exit_2():
    r = run_cli("serve", "--config", "x.toml", "--scheduler", "pbs")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    lb = Path(sys.executable).parent / "load-balancer"  # the installed console script
    r = subprocess.run([str(lb), "--delay-ms=-5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "delay-ms" in r.stderr


def test_cli_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[balancer]\nport = {port}\nrun_dir = "{tmp_path}/run"\n[[servers]]\ncommand = "python x.py"\n'
        )
        r = run_cli("serve", "--config", str(cfg))
    assert r.returncode == 2 and "cannot listen" in r.stderr and "Traceback" not in r.stderr
