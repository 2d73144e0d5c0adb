"""The CLI a newcomer meets first: ``--version``, every subcommand's ``--help`` with a description
and an example, and ``analyze`` knowing every event the balancer writes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from balancer import __version__
from balancer.cli.helptext import EXAMPLES, subparsers
from balancer.cli.main import main
from balancer.observe.events import EVENT_NAMES


def _parser(monkeypatch: Any) -> argparse.ArgumentParser:
    seen: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *a: Any, **kw: Any) -> Any:
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        main(["status"])
    return seen[0]


def test_version(capsys: Any):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"balancer {__version__}\n"


def test_every_subcommand_has_a_description_and_an_example(monkeypatch: Any):
    subs = subparsers(_parser(monkeypatch))
    assert {"serve", "ls", "stop", "status", "forecast status", "profile show"} <= {n for n, _, _ in subs}
    for name, _, sub in subs:
        assert sub.description, f"balancer {name} --help has no description"
        assert sub.epilog and "balancer " in sub.epilog, f"balancer {name} --help has no example"
    assert set(EXAMPLES) <= {n for n, _, _ in subs}  # no example of a command that is gone


def test_analyze_knows_every_event_the_balancer_writes(tmp_path: Path):
    from balancer.analysis.journal import read_journal

    path = tmp_path / "journal.jsonl"
    lines = [{"ev": "call.received", "m": 0.0, "t": 0.0, "call": 1, "op": "Evaluate", "model": "forward"}]
    lines += [
        {"ev": ev, "m": 1.0, "t": 1.0}
        for ev in sorted(EVENT_NAMES)
        if not ev.startswith(("call.", "server."))
    ]
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    run = read_journal(path, "run")
    assert not [w for w in run.warnings if "unknown type" in w], run.warnings
    with path.open("a") as fh:
        fh.write(json.dumps({"ev": "bogus.event", "m": 2.0, "t": 2.0}) + "\n")
    assert any("bogus.event" in w for w in read_journal(path, "run").warnings)  # a foreign one is still said


def test_shell_completion_with_the_completion_extra(tmp_path: Path):
    pytest.importorskip("argcomplete")
    out = tmp_path / "completions"
    line = "balancer serve --de"
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line)), "_ARGCOMPLETE": "1"}
    with out.open("w") as fh:
        subprocess.run(
            [sys.executable, "-c", "import sys; from balancer.cli.main import main; sys.exit(main())"],
            env={**env, "_ARGCOMPLETE_IFS": " ", "_ARGCOMPLETE_STDOUT_FILENAME": str(out)},
            stdout=fh, stderr=subprocess.DEVNULL, timeout=30, check=False,
        )  # fmt: skip
    assert "--detach" in out.read_text().split()
