"""``balancer serve --detach``, ``balancer stop`` (the balancer itself) and ``balancer ls``.

A login-node daemon as ``hq server start`` users expect: ``--detach`` runs the same ``serve`` in a
new session (``setsid``: the terminal's hangup never reaches it), stdio into the run directory's
``balancer.log``, and returns once it is in the registry (ready) or has exited (its last line, exit
2). A fresh interpreter rather than a double fork of this one: nothing of the parent (threads,
imports, the event loop to come) is inherited, and the parent waits on the child's pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from balancer.cli.apiclient import EXIT_USAGE, CliError, call, describe, read_private, running_entry
from balancer.control import registry

READY_WAIT_S = 300.0  # the backend's checks and a first forecast come before "ready"
STOP_WAIT_S = 600.0  # beyond the shutdown grace: servers stop, launchers report


def detach(argv: list[str], run_dir: str | None) -> int:
    """Start ``balancer serve argv`` in the background; print its URL and pid once it serves."""
    d = Path(run_dir or Path(".balancer-runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-detached-{os.getpid()}")
    old = os.umask(0o077)
    try:
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        d = d.resolve()
        log = open(d / "balancer.log", "ab")
    except OSError as exc:
        print(f"balancer: error: cannot use the run directory {d}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        os.umask(old)
    child_argv = [a for a in argv if a != "--detach"]
    if not run_dir:
        child_argv += ["--run-dir", str(d)]
    with log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "balancer.cli", *child_argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + READY_WAIT_S
    while time.monotonic() < deadline:
        entry = registry.read_entry(d / registry.RUN_FILE)  # written when it serves, with the registry's
        if entry is not None and entry.pid == proc.pid:
            print(
                f"balancer: serving UM-Bridge on {entry.url} in the background (pid {proc.pid}, "
                f"log {d / 'balancer.log'}); `balancer stop` ends it",
                flush=True,
            )
            return 0
        if proc.poll() is not None:
            print(_last_line(d / "balancer.log") or f"balancer: exited with code {proc.returncode}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        time.sleep(0.05)
    print(
        f"balancer: pid {proc.pid} not ready after {READY_WAIT_S:g} s; see {d / 'balancer.log'}",
        file=sys.stderr,
    )
    return EXIT_USAGE


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def stop_balancer(args: argparse.Namespace) -> int:
    """SIGTERM the balancer ``args`` name (or the only one running) and wait until it is gone: the
    runner's shutdown lets calls in flight finish, then stops its servers."""
    try:
        entry = running_entry(args)
    except CliError as exc:
        print(f"balancer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"balancer: stopping {describe(entry)}; calls in flight finish first", flush=True)
    try:
        os.kill(entry.pid, signal.SIGTERM)
    except OSError as exc:
        print(f"balancer: error: cannot signal pid {entry.pid}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    deadline = time.monotonic() + STOP_WAIT_S
    while registry.alive(entry):
        if time.monotonic() > deadline:
            print(f"balancer: error: pid {entry.pid} still runs after {STOP_WAIT_S:g} s", file=sys.stderr)
            return EXIT_USAGE
        time.sleep(0.05)
    print("balancer: stopped", flush=True)
    return 0


def _servers(e: registry.Entry) -> str:
    """Ready servers / all servers, from its status (a short timeout: ls never hangs on one)."""
    try:
        token = read_private(Path(e.run_dir) / "token", secret=True)
        doc = call(e.url, token, "GET", "/api/status", timeout=3)
        counts = [sp.get("servers", {}) for sp in doc.get("specs", {}).values()]
        ready = sum(c.get("ready", 0) for c in counts)
        return f"{ready} ready / {sum(sum(c.values()) for c in counts)}"
    except (CliError, AttributeError, TypeError):
        return "?"


def list_balancers(args: argparse.Namespace) -> int:
    entries = registry.running()
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no balancer is running (registry {registry.registry_dir()})")
        return 0
    rows = [["PID", "URL", "SINCE", "SERVERS", "CONFIG"]]
    for e in entries:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.started))
        rows.append([str(e.pid), e.url, since, _servers(e), e.config or "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))
    return 0


def add_ls_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ls", help="list this user's running balancers (pid, url, since, servers, config)",
        description="List this user's running balancers on this host, from the registry that every "
        "`balancer serve` writes itself into.",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the registry's entries as JSON")
    p.set_defaults(func=list_balancers)
