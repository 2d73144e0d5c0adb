"""The journal writes a call's first lines at the end of the loop pass, and everything else at once
with what waits before it (observe/journal.py): a call's lines are on disk before its answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from balancer.observe.events import Ev, EventBus
from balancer.observe.journal import Journal, read_journal


def names(path: Path) -> list[str]:
    return [e["ev"] for e in read_journal(path)] if path.exists() else []


def test_first_lines_wait_for_the_pass_and_an_answer_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"

    async def main() -> None:
        bus, journal = EventBus(), Journal(path)
        bus.subscribe(journal)
        bus.emit(Ev.CALL_RECEIVED, call=1, op="Evaluate", model="m", bytes=2)
        bus.emit(Ev.CALL_DISPATCHED, call=1, server="s1", attempt=1)
        assert names(path) == []  # held for this loop pass
        bus.emit(Ev.CALL_COMPLETED, call=1, server="s1", status=200, bytes=3)
        assert names(path) == [Ev.CALL_RECEIVED, Ev.CALL_DISPATCHED, Ev.CALL_COMPLETED]
        bus.emit(Ev.CALL_RECEIVED, call=2, op="Evaluate", model="m", bytes=2)
        await asyncio.sleep(0)  # the end of the pass
        await asyncio.sleep(0)
        assert names(path)[-1] == Ev.CALL_RECEIVED
        bus.emit(Ev.CALL_QUEUED, call=3, model="m", depth=1)
        journal.close()  # what waits is written, not lost
        assert names(path)[-1] == Ev.CALL_QUEUED

    asyncio.run(main())


def test_without_a_running_loop_every_line_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal({"ev": Ev.CALL_RECEIVED, "call": 1})
    assert names(path) == [Ev.CALL_RECEIVED]
    journal.close()
