"""The Python API (``balancer.open_pool``) as a notebook user meets it: a real balancer in this
process, real model servers, the official ``umbridge`` client through ``pool.url``."""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomli_w
import umbridge

import balancer
from balancer.config.schema import ConfigError
from balancer.session import PoolError, StartError
from tests.helpers import pid_alive, test_model_spec, wait_until


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(pid_alive(int(p)) and os.getpgid(int(p)) == pgid for p in os.listdir("/proc") if p.isdigit())


def test_a_pool_opened_from_python_serves_the_official_client_scales_and_closes_cleanly(
    tmp_path: Path,
) -> None:
    config = tmp_path / "balancer.toml"  # the same file `balancer serve --config` reads
    config.write_text(tomli_w.dumps({"servers": [test_model_spec(env={"TEST_DELAY": "300"})]}))
    with balancer.open_pool(config, port=0, run_dir=str(tmp_path / "run")) as pool:
        model = umbridge.HTTPModel(pool.url, "forward")
        assert model([[3.0]]) == [[6.0]]

        limits = pool.scale("testmodel", min=2, max=2)
        assert (limits["min_servers"], limits["max_servers"]) == (2, 2)
        assert pool.wait_for_servers(2, timeout=30) == 2
        status = pool.status()
        assert status["specs"]["testmodel"]["servers"]["ready"] == 2
        assert status["config"]["path"] == str(config)  # `balancer reload` re-reads it, as for serve
        launchers = [int(s["job"]) for s in status["servers"]]  # a local server's job: its launcher's group
        assert len(launchers) == 2 and all(_group_alive(p) for p in launchers)
        with pytest.raises(PoolError, match="404 no server spec 'nope'"):
            pool.scale("nope", min=1)

        script = pool.job_script("testmodel")  # SLURM's script, previewed on a machine without SLURM
        assert script.startswith("#!/bin/bash\n# preview, submitted as: sbatch --parsable ")
        assert "--cpus-per-task=1" in script and "export UMBRIDGE_BALANCER_TASK_INDEX=$first" in script
        assert script.rstrip().endswith(f"-m balancer.launcher -- {' '.join(test_model_spec()['command'])}")
        local = pool.job_script(scheduler="local")
        assert "local: no batch script" in local and "-m balancer.launcher --" in local

        # close() lets a call in flight finish: one slow call, in flight when the block ends.
        answer: list[object] = []
        caller = threading.Thread(target=lambda: answer.append(model([[5.0]])))
        caller.start()
        wait_until(lambda: pool.status()["inflight"] >= 1, timeout=10, what="a call in flight")
    caller.join(timeout=30)
    assert answer == [[[10.0]]]
    assert pool.closed
    wait_until(lambda: not any(_group_alive(p) for p in launchers), timeout=10, what="servers gone")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{pool.url}/Info", timeout=5)
    assert not [t for t in threading.enumerate() if t.name in ("balancer-pool", "console")]
    journal = (tmp_path / "run" / "journal.jsonl").read_text()
    assert '"balancer.started"' in journal


def test_a_bad_configuration_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    threads = threading.active_count()
    cases = [
        (
            (),
            {"servers": [{"name": "x"}]},
            "servers.x.command: give exactly one of 'command' or 'job_script'",
        ),
        (({"servers": []},), {}, "servers: no server defined"),
        ((tmp_path / "missing.toml",), {}, "missing.toml: cannot read"),
        ((), {"servers": [test_model_spec()], "scheduler": "pbs"}, "balancer.scheduler: expected one of"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ConfigError, match="config error: ") as info:
            balancer.open_pool(*args, **kwargs)
        assert message in str(info.value) and "\n" not in str(info.value)
        assert info.traceback[-1].name == "open_pool"  # raised at the call, not deep in the parser
    with pytest.raises(ConfigError, match="config error: console: expected one of off, quiet"):
        balancer.open_pool(servers=[test_model_spec()], console="loud")
    with socket.socket() as taken:  # a port in use: StartError, one line, and nothing left running
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartError, match=f"cannot listen on 127.0.0.1:{port}: ") as start:
            balancer.open_pool(servers=[test_model_spec()], port=port, run_dir=str(tmp_path / "run"))
        assert "address already in use" in str(start.value).lower() and "\n" not in str(start.value)
    assert threading.active_count() == threads


def test_a_file_a_dict_and_keywords_give_the_same_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from balancer.session import pool_config

    monkeypatch.chdir(tmp_path)  # a dict's relative paths count from here, a file's from its folder
    spec = test_model_spec(max_servers=3)
    doc = {"balancer": {"port": 0, "run_dir": "run"}, "servers": [spec]}
    (tmp_path / "balancer.toml").write_text(tomli_w.dumps(doc))
    from_file = pool_config(tmp_path / "balancer.toml")
    from_dict = pool_config(doc)
    from_keywords = pool_config(servers=[spec], port=0, run_dir="run")
    assert from_file.servers == from_dict.servers == from_keywords.servers
    assert from_file.port == from_dict.port == from_keywords.port == 0
    assert pool_config(servers=[spec]).port == 0  # no port given: a free one, not 4242
    assert pool_config(doc, scheduler="slurm").scheduler == "slurm"  # keywords win, as on the CLI


def test_the_api_lives_under_the_package_name_only() -> None:
    """No top-level ``analysis`` (or any other name) beside ``balancer``: a user's own ``analysis/``
    folder must neither shadow ours nor be shadowed; ``import balancer`` does not load the API."""
    import fnmatch
    import subprocess
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - 3.10 only
        import tomli as tomllib

    root = Path(__file__).resolve().parents[2]
    find = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    included = {
        d.name
        for d in root.iterdir()
        if (d / "__init__.py").is_file() and any(fnmatch.fnmatch(d.name, pat) for pat in find["include"])
    }
    assert included == {"balancer"}, included  # tests/, models/ ... are packages too: never shipped
    code = "import sys, balancer; print('balancer.session' in sys.modules, callable(balancer.open_pool))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "True"]
