"""Test harness: a real ``balancer serve`` process with real model servers, read through its journal."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from balancer.observe.journal import read_journal

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def wait_until(pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or pred}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie is dead for our purposes)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def test_model_spec(name: str = "testmodel", **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "command": [sys.executable, str(MODELS / "testmodel.py")]}
    spec.update(kw)
    return spec


test_model_spec.__test__ = False  # type: ignore[attr-defined]


class BalancerProc:
    """One balancer process; ``events()`` reads its journal."""

    def __init__(
        self,
        tmp: Path,
        servers: list[dict[str, Any]],
        env: dict[str, str] | None = None,
        backend: dict[str, Any] | None = None,
        tables: dict[str, Any] | None = None,
        **balancer: Any,
    ) -> None:
        self.run_dir = tmp / "run"
        self.journal = self.run_dir / "journal.jsonl"
        cfg: dict[str, Any] = {"balancer": {"port": 0, "run_dir": str(self.run_dir), **balancer}}
        if backend:
            cfg["backend"] = backend
        cfg.update(tables or {})  # other top-level tables, e.g. [forecast]
        cfg["servers"] = servers
        self.config = tmp / "balancer.toml"
        self.config.write_text(tomli_w.dumps(cfg))
        self.log = open(tmp / "balancer.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "balancer.cli", "serve", "--config", str(self.config)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        # This process's own start: a restart test shares the journal with the balancer before it.
        pid = self.proc.pid
        started = wait_until(
            lambda: self.find("balancer.started", pid=pid) or self._died(), 30, what="balancer start"
        )
        self.url: str = started["url"]
        self.control_url: str = started["control_url"]  # the launchers' listener

    def _died(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"balancer exited with {self.proc.returncode}: {self.output()}")

    def output(self) -> str:
        return (self.log.name and Path(self.log.name).read_text(errors="replace"))[-4000:]

    def events(self, ev: str | None = None) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        evs = read_journal(self.journal)
        return [e for e in evs if ev is None or e["ev"] == ev]

    def find(self, ev: str, **match: Any) -> dict[str, Any] | None:
        for e in self.events(ev):
            if all(e.get(k) == v for k, v in match.items()):
                return e
        return None

    def wait_event(self, ev: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        return wait_until(lambda: self.find(ev, **match), timeout, what=f"{ev} {match}")

    def server_pids(self) -> list[int]:
        """Launcher and model server pids of every server that registered (any backend); for the
        local backend also launchers that never registered (their job id is their pid)."""
        pids = []
        for e in self.events("server.registered"):
            pids += [int(e[k]) for k in ("pid", "launcher_pid") if e.get(k)]
        started = self.find("balancer.started")
        if started and started.get("scheduler") == "local":
            pids += [int(e["job"]) for e in self.events("server.started")]
        return sorted(set(pids))

    def call_in_background(self, model: Any, x: float) -> tuple[threading.Thread, list[Any], dict[str, Any]]:
        """Start ``model([[x]])`` in a thread; return it, the list its result lands in, and the
        call's first ``call.dispatched`` event (so a test can act while the call runs)."""
        n = len(self.events("call.dispatched"))
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(model([[x]])))
        t.start()
        dispatched = wait_until(lambda: self.events("call.dispatched")[n:], 30, what="dispatch")[0]
        return t, result, dispatched

    def token(self) -> str:
        return (self.run_dir / "token").read_text()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self.log.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def stop_and_check(b: BalancerProc, pids: list[int], servers: set[str]) -> None:
    """SIGINT the balancer; its servers (``pids``) end and the journal says these were stopped."""
    assert b.stop() == 0
    wait_until(lambda: not any(pid_alive(p) for p in pids), 20, what="servers stopped")
    assert servers <= {e["server"] for e in b.events("server.stopped")}


def reap(balancers: list[BalancerProc | None], pids: list[int]) -> None:
    """Whatever a test left running (it may have failed half-way): balancers and server groups."""
    for b in balancers:
        if b is not None:
            b.kill()
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p, signal.SIGKILL)
