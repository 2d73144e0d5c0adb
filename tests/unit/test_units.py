"""Pure parts: request validation, config validation, CLI errors (policy and routing: test_policy.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from balancer.backends import SCHEDULERS
from balancer.calls.protocol import ProtocolError, check_sizes, parse_request
from balancer.config.load import ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent


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


BAD_MARGIN = '[backend]\ntime_limit_margin_s = "x"\n'


@pytest.mark.parametrize(
    ("scheduler", "table", "error"),
    [
        ("local", "", "error: cannot listen"),
        # Backend options are checked when the file is loaded, before the port is bound.
        *[(s, BAD_MARGIN, "error: backend.time_limit_margin_s: expected a number") for s in SCHEDULERS],
        ("local", "[backend]\npoll_interval_s = 1\n", "backend.poll_interval_s: unknown key for local"),
        ("slurm", '[backend]\njob_name = "a b"\n', "backend.job_name: expected letters, digits"),
        ("hyperqueue", '[backend]\nmode = "cloud"\n', "backend.mode: expected one of embedded, server, hq"),
    ],
)
def test_cli_port_in_use_is_one_line(tmp_path, scheduler, table, error):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[balancer]\nscheduler = "{scheduler}"\nport = {port}\nrun_dir = "{tmp_path}/run"\n{table}'
            '[[servers]]\nname = "m"\ncommand = "python x.py"\n'
        )
        r = run_cli("serve", "--config", str(cfg))
    assert r.returncode == 2 and error in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    if table:  # a bad option: nothing started, not even a run dir
        assert not (tmp_path / "run").exists()
