"""``balancer serve``'s console (observe/console.py): which events each level shows, what a failed
start says, the shutdown summary; and the reason a launcher's exit report becomes (control/api.py)."""

from __future__ import annotations

import io

from balancer.control.api import exit_reason
from balancer.observe.console import NORMAL, QUIET, VERBOSE, Console
from balancer.observe.events import Ev, EventBus

FAILED = (
    "model server exited with code 1 before it answered /Info; its stderr ends: ImportError: no mesh; "
    "log: /run/logs/s1.log"
)


def run_events(level: int) -> tuple[str, Console]:
    """A server that fails to start, a spec held, a scale decision, a call that fails, a reload
    refused, a server that serves, then the stop; as the console at ``level`` writes them."""
    out = io.StringIO()
    console = Console(level, out=out, clock=lambda t: "12:00:00", threaded=False)
    bus = EventBus()
    console.attach(bus)
    bus.emit(Ev.SCALE_DECISION, spec="m", action="start", target=1, reason="demand")
    bus.emit(Ev.SERVER_REQUESTED, server="s1", spec="m", reason="demand")
    bus.emit(Ev.SERVER_STARTED, server="s1", spec="m", job="77", host="localhost")
    bus.emit(
        Ev.SERVER_FAILED, server="s1", reason=FAILED, log="/run/logs/s1.log", stderr=["ImportError: no mesh"]
    )
    bus.emit(Ev.SPEC_HELD, spec="m", failures=3, reason=FAILED)
    bus.emit(Ev.CALL_FAILED, call=4, status=503, reason="ServiceUnavailable: no server")
    bus.emit(Ev.CONFIG_REJECTED, path="b.toml", reason="servers.m.concurrency: expected >= 1")
    bus.emit(Ev.SERVER_REQUESTED, server="s2", spec="m", reason="retry")
    bus.emit(Ev.SERVER_STARTED, server="s2", spec="m", job="78", host="localhost")
    bus.emit(Ev.SERVER_READY, server="s2", spec="m", models=["forward"], concurrency=1)
    bus.emit(Ev.CALL_COMPLETED, call=5, server="s2", status=200, bytes=10)
    bus.emit(Ev.BALANCER_STOPPING, reason="SIGINT", inflight=0)
    bus.emit(Ev.BALANCER_STOPPED)
    return out.getvalue(), console


def test_default_level_says_the_life_cycle_and_the_failure_with_stderr_and_log() -> None:
    text, _ = run_events(NORMAL)
    lines = text.splitlines()
    assert all(line.startswith("12:00:00 ") for line in lines)
    assert "12:00:00 server s1 (m): requested (demand)" in lines
    assert "12:00:00 server s1 (m): started, job 77 localhost" in lines
    assert f"12:00:00 ERROR server s1 (m) failed: {FAILED}" in lines  # the spec from the request
    held = next(line for line in lines if "held" in line)
    assert "after 3 failed starts" in held and "`balancer resume m`" in held
    assert any(
        line.startswith("12:00:00 server s2 (m): ready after ") and "models forward" in line for line in lines
    )
    assert any("config reload refused, nothing changed: servers.m.concurrency" in line for line in lines)
    assert lines[-1].startswith("12:00:00 summary: 1 calls answered, 1 failed; servers: 2 started, 1 failed;")
    assert "scale m" not in text and "call 4 failed" not in text  # -v only


def test_quiet_keeps_warnings_and_errors_verbose_adds_decisions_and_failed_calls() -> None:
    quiet, _ = run_events(QUIET)
    assert "requested" not in quiet and "ready" not in quiet and "summary" not in quiet
    assert "ERROR server s1 (m) failed" in quiet and "held after 3" in quiet and "reload refused" in quiet
    verbose, _ = run_events(VERBOSE)
    assert "12:00:00 scale m: start 1 (demand)" in verbose.splitlines()
    assert "12:00:00 call 4 failed (503): ServiceUnavailable: no server" in verbose.splitlines()


def test_summary_counts_server_hours_of_servers_still_running() -> None:
    c = Console(NORMAL, out=io.StringIO(), threaded=False)
    c({"ev": Ev.SERVER_STARTED, "server": "s1", "spec": "m", "t": 0.0, "m": 0.0})
    c({"ev": Ev.SERVER_STOPPED, "server": "s1", "reason": "idle", "t": 0.0, "m": 1800.0})
    c({"ev": Ev.SERVER_STARTED, "server": "s2", "spec": "m", "t": 0.0, "m": 0.0})
    assert c.summary(3600.0).endswith("servers: 2 started, 0 failed; 1.5 server-hours")


def test_threaded_writer_writes_every_line_by_close() -> None:
    out = io.StringIO()
    c = Console(NORMAL, out=out, clock=lambda t: "t")
    for i in range(50):
        c({"ev": Ev.SERVER_REQUESTED, "server": f"s{i}", "spec": "m", "reason": "demand", "t": 0.0, "m": 0.0})
    c.close()
    assert len(out.getvalue().splitlines()) == 50


def test_exit_reason_before_ready_is_the_launchers_with_stderr_and_log() -> None:
    why = "model server exited with code 1 before it answered /Info"
    doc = {"code": 1, "why": why, "ready": False, "log": "/r/logs/s3.log", "stderr": ["a", "KeyError: 'x'"]}
    reason, detail = exit_reason(doc)
    assert reason == f"{why}; its stderr ends: a | KeyError: 'x'; log: /r/logs/s3.log"
    assert detail == {"log": "/r/logs/s3.log", "stderr": ["a", "KeyError: 'x'"]}
    long = exit_reason({**doc, "stderr": ["x" * 1000]})[0]
    assert "..." + "x" * 240 + "; log:" in long and len(long) < 400  # clipped to the last characters
    # A ready server's exit (or an old launcher's report) keeps the old wording.
    assert (
        exit_reason({"code": 0, "why": "signal SIGTERM"})[0]
        == "model server exited with code 0 after signal SIGTERM"
    )
    assert exit_reason({"code": 3, "stderr": "not a list", "log": 5}) == (
        "model server exited with code 3",
        {"log": None, "stderr": []},
    )
