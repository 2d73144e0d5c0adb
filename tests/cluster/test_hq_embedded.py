"""HyperQueue backend against a real embedded cluster (helper process), without the pool.

The launcher is replaced by the bare server command, so these tests exercise only the backend:
submit, status polling, process-group kill, failure reports and the helper's clean shutdown.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from balancer.backends.base import Launch
from balancer.backends.hyperqueue import backend as hqb
from balancer.backends.hyperqueue.client import HqClient
from balancer.backends.hyperqueue.embedded import EmbeddedCluster
from balancer.backends.hyperqueue.resources import HqRequest, hq_request, parse_duration, reference_job_script
from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError
from balancer.launcher.contract import ENV_SERVER_ID

pytest.importorskip("hyperqueue")

pytestmark = pytest.mark.timeout(60)


class Events:
    def __init__(self) -> None:
        self.started: dict[str, tuple[str, str]] = {}
        self.ended: dict[str, tuple[str, bool]] = {}

    def job_started(self, server_id: str, job_id: str, host: str) -> None:
        self.started[server_id] = (job_id, host)

    def job_ended(self, server_id: str, reason: str, failed: bool) -> None:
        self.ended[server_id] = (reason, failed)

    def job_deadline(self, server_id: str, deadline_wall: float) -> None:
        pass


async def until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.02)
    return v


@pytest.fixture(autouse=True)
def bare_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the server command itself instead of the launcher (the launcher is the pool's business)."""
    monkeypatch.setattr(hqb, "launcher_argv", lambda command, python=None: list(command))


@pytest.fixture
def descendants_cleanup() -> Iterator[list[psutil.Process]]:
    """Processes a test saw; anything still alive at the end is killed and fails the test."""
    seen: list[psutil.Process] = []
    yield seen
    alive = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"


def make_backend(
    tmp_path: Path, servers: list[dict[str, Any]], **backend: Any
) -> tuple[hqb.HyperQueueBackend, Events]:
    raw = {
        "balancer": {"scheduler": "hyperqueue"},
        "servers": servers,
        "backend": {"workers": 1, "cpus_per_worker": 4, "poll_interval_s": 0.1, "kill_grace_s": 3, **backend},
    }
    cfg = parse_config(raw, base_dir=tmp_path)
    events = Events()
    be = hqb.HyperQueueBackend(cfg, tmp_path / "run")
    be.bind(events)
    return be, events


def launch(be: hqb.HyperQueueBackend, sid: str, spec_idx: int = 0) -> Launch:
    return Launch(sid, be.cfg.servers[spec_idx], {ENV_SERVER_ID: sid}, be.run_dir / "logs")


def blocked_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("SigBlk:")[1].split()[0], 16)


def children_of(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_run_kill_fail_and_close(tmp_path: Path, descendants_cleanup: list[psutil.Process]) -> None:
    servers = [
        {"name": "sleeper", "command": ["sleep", "30"], "threads": 3},
        {"name": "broken", "command": ["sh", "-c", "echo oops >&2; exit 3"]},
    ]
    be, ev = make_backend(tmp_path, servers)

    async def main() -> None:
        t0 = time.perf_counter()
        await be.start()
        assert be.server.cluster is not None and be.server.cluster.pid
        assert time.perf_counter() - t0 < 10
        helper = psutil.Process(be.server.cluster.pid)
        await be.submit([launch(be, "s1"), launch(be, "s2")])
        await be.submit([launch(be, "b1", 1)])
        await until(lambda: {"s1", "s2"} <= ev.started.keys(), what="both sleepers running")
        tasks = children_of(helper.pid)
        descendants_cleanup.extend(tasks)
        by_sid = {p.environ().get(ENV_SERVER_ID): p for p in tasks}
        assert set(by_sid) >= {"s1", "s2"}
        assert by_sid["s1"].environ()["OMP_NUM_THREADS"] == "3"  # spec option `threads`
        assert by_sid["s1"].environ()["HQ_JOB_ID"] == ev.started["s1"][0]
        assert os.getpgid(by_sid["s1"].pid) == by_sid["s1"].pid  # HQ's setsid: pid == pgid
        assert blocked_signals(by_sid["s1"].pid) == 0, "a task must not inherit the helper's blocked SIGTERM"

        # A task that exits non-zero is reported failed, with HQ's error and the log path.
        await until(lambda: "b1" in ev.ended, what="failing task reported")
        reason, failed = ev.ended["b1"]
        assert failed and "exit code 3" in reason, reason
        assert "oops" in (be.run_dir / "logs" / "b1.log").read_text()

        # The kill path: SIGTERM to the task's process group; the poll sees it end.
        t0 = time.perf_counter()
        await be.cancel("s1")
        assert time.perf_counter() - t0 < 1.0  # ended by SIGTERM, not by the SIGKILL after 3 s
        assert not by_sid["s1"].is_running() or by_sid["s1"].status() == psutil.STATUS_ZOMBIE
        await until(lambda: "s1" in ev.ended, what="cancelled task reported")
        assert ev.ended["s1"] == ("cancelled", False)
        assert "s2" not in ev.ended and by_sid["s2"].is_running()
        await be.cancel("s1")  # idempotent

        await be.close()
        assert ev.ended["s2"][1] is False
        await until(lambda: not helper.is_running(), what="helper exit")

    asyncio.run(main())


def test_helper_shutdown_ends_whole_task_trees(
    tmp_path: Path, descendants_cleanup: list[psutil.Process]
) -> None:
    """HQ itself kills only a task's own process; the helper ends each task's process group."""

    async def main() -> None:
        ec = EmbeddedCluster(tmp_path / "hq", workers=2, cpus=1, log_path=tmp_path / "helper.log")
        info = await ec.start()
        client = await asyncio.to_thread(HqClient, str(info["server_dir"]))
        req = HqRequest(cpus=1)
        argv = ["sh", "-c", "sleep 100 & sleep 101 & wait"]
        ids = [
            await asyncio.to_thread(client.submit, argv, {}, str(tmp_path), req, f"t{i}") for i in range(2)
        ]
        assert ec.pid
        await until(lambda: len(children_of(ec.pid)) >= 6, what="two task trees")  # type: ignore[arg-type]
        descendants_cleanup.extend(children_of(ec.pid))
        status = await asyncio.to_thread(client.status, ids)
        assert all(not s["completed"] for s in status.values()) and set(status) == set(ids)
        del client
        t0 = time.perf_counter()
        await ec.stop()
        assert time.perf_counter() - t0 < 5
        assert ec.proc is not None and ec.proc.returncode == 0
        await until(
            lambda: all(
                not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in descendants_cleanup
            ),
            what="all task processes gone",
        )

    asyncio.run(main())


def test_helper_death_is_reported_and_tasks_are_ended(
    tmp_path: Path, descendants_cleanup: list[psutil.Process]
) -> None:
    be, ev = make_backend(tmp_path, [{"name": "tree", "command": ["sh", "-c", "sleep 100 & wait"]}])

    async def main() -> None:
        await be.start()
        assert be.server.cluster is not None and be.server.cluster.pid
        await be.submit([launch(be, "t1")])
        await until(lambda: "t1" in ev.started)
        descendants_cleanup.extend(children_of(be.server.cluster.pid))
        os.kill(be.server.cluster.pid, signal.SIGKILL)
        await until(lambda: "t1" in ev.ended, what="loss reported")
        reason, failed = ev.ended["t1"]
        assert failed and "embedded HyperQueue cluster exited" in reason
        await be.submit([launch(be, "t2")])
        assert ev.ended["t2"][1] is True  # refused at once, not queued forever
        await until(
            lambda: all(
                not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in descendants_cleanup
            ),
            what="orphaned task trees ended",
        )
        await be.close()

    asyncio.run(main())


def test_existing_server_and_cancel_while_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, descendants_cleanup: list[psutil.Process]
) -> None:
    """Mode "server" (a server dir from $HQ_SERVER_DIR); a server cancelled while still queued in HQ
    (no cancel in the Python API) exits at once when it finally starts, and is reported cancelled."""

    async def main() -> None:
        ec = EmbeddedCluster(tmp_path / "hq", workers=1, cpus=1, log_path=tmp_path / "helper.log")
        await ec.start()
        monkeypatch.setenv("HQ_SERVER_DIR", str(ec.server_dir))
        be, ev = make_backend(tmp_path, [{"name": "sleeper", "command": ["sleep", "30"]}])
        await be.start()
        assert be.server.mode == "server" and be.server.cluster is None
        await be.submit([launch(be, "a"), launch(be, "b")])  # one CPU: b waits in HQ's queue
        await until(lambda: "a" in ev.started)
        assert ec.pid
        descendants_cleanup.extend(children_of(ec.pid))
        await be.cancel("b")
        assert "b" in be.jobs and not be.jobs["b"].started
        await be.cancel("a")
        await until(lambda: {"a", "b"} <= ev.ended.keys(), what="both reported")
        assert ev.ended["a"] == ("cancelled", False) and ev.ended["b"] == ("cancelled", False)
        assert "cancelled before it started" in (be.run_dir / "logs" / "b.log").read_text()
        await be.close()
        await ec.stop()

    asyncio.run(main())


def test_impossible_requests_are_config_errors(tmp_path: Path) -> None:
    script = tmp_path / "job_model.sh"
    script.write_text("#!/bin/bash\n#HQ --resource model=1\n#HQ --time-request=1m\nexec model --port $PORT\n")
    cases = [
        ({"name": "big", "command": ["true"], "resources": {"cpus": 8}}, {}, "servers.big.resources.cpus"),
        ({"name": "gpu", "command": ["true"], "resources": {"gpus": 1}}, {}, "servers.gpu.resources"),
        ({"name": "ref", "job_script": str(script)}, {}, "servers.ref.resources"),
        ({"name": "x", "command": ["true"], "threads": 0}, {}, "servers.x.threads"),
        (
            {"name": "y", "command": ["true"]},
            {"mode": "server", "server_dir": str(tmp_path / "nope")},
            "backend.server_dir",
        ),
        ({"name": "z", "command": ["true"]}, {"colour": "blue"}, "backend.colour"),
    ]
    for spec, backend, key in cases:
        with pytest.raises(ConfigError) as err:
            be, _ = make_backend(tmp_path, [spec], **backend)  # unknown or ill-typed keys: at load
            asyncio.run(be.start())  # what needs HyperQueue: at start
        assert err.value.key == key, err.value


def test_directives_and_durations(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n\n#HQ --cpus=2 --resource gpus/nvidia=1\n#HQ --time-request 1h30m\n"
        "#HQ --time-limit=2h --stdout none\nexec server\n#HQ --cpus=64\n"
    )
    cfg = parse_config(
        {"balancer": {"scheduler": "hyperqueue"}, "servers": [{"name": "m", "job_script": str(script)}]},
        base_dir=tmp_path,
    )
    req = hq_request(cfg.servers[0])
    assert req.cpus == 2 and req.resources == (("gpus/nvidia", 1),) and req.min_time_s == 5400
    assert req.ignored == ("--time-limit=2h", "--stdout")
    durations = [parse_duration(s) for s in ("90s", "1m", "01:00:00", "2:30", "1h 5m")]
    assert durations == [90, 60, 3600, 150, 3900]
    (tmp_path / "job.sh").replace(tmp_path / "job_eigen.sh")
    assert reference_job_script(tmp_path, "eigen") == tmp_path / "job_eigen.sh"
    assert reference_job_script(tmp_path, "other") is None


def test_a_restarted_backend_adopts_the_job_of_a_server_that_outlived_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, descendants_cleanup: list[psutil.Process]
) -> None:
    """Mode "server": the HQ server is not the balancer's, so its jobs outlive a balancer restart;
    a new backend with the same run directory follows and ends them."""

    async def main() -> None:
        ec = EmbeddedCluster(tmp_path / "hq", workers=1, cpus=2, log_path=tmp_path / "helper.log")
        await ec.start()
        monkeypatch.setenv("HQ_SERVER_DIR", str(ec.server_dir))
        spec = [{"name": "sleeper", "command": ["sleep", "30"]}]
        old, ev_old = make_backend(tmp_path, spec)
        await old.start()
        await old.submit([launch(old, "a")])
        await until(lambda: "a" in ev_old.started)
        assert ec.pid
        descendants_cleanup.extend(children_of(ec.pid))
        old._poller.cancel()  # the old balancer dies: no cancel, no close
        new, ev_new = make_backend(tmp_path, spec)
        await new.start()
        job = f"{ev_old.started['a'][0]}.0"  # as the launcher reports it
        assert await new.adopt("a", job, {"host": "localhost"})
        assert ev_new.started["a"][0] == job
        await new.cancel("a")
        await until(lambda: "a" in ev_new.ended, what="the adopted job ended")
        assert ev_new.ended["a"] == ("cancelled", False)
        await new.close()
        await ec.stop()

    asyncio.run(main())
