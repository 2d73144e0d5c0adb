"""Cost of an event on the per-call path: the bus with the journal subscribed vs a direct journal write.

The per-call path emits four events (received, dispatched, completed, plus queued when it waits).
Before the event bus, the journal was written directly (``direct`` below: the same dict stamping,
``orjson.dumps`` and one ``os.write``). Printed: microseconds per event for the direct write, the
bus with the journal, the bus with the journal and two more (no-op) subscribers, and the bus with
no subscriber, each the best of several rounds, measured side by side in one run.

    python bench/events.py [--events 200000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from balancer.observe.events import Ev, EventBus  # noqa: E402
from balancer.observe.journal import Journal  # noqa: E402

_OPTS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY


def direct_writer(fd: int):  # type: ignore[no-untyped-def]
    """The journal as it was written before the bus: stamp, dump, one write, in the emitter."""

    def event(ev: str, **fields):  # type: ignore[no-untyped-def]
        fields["v"] = 1
        fields["ev"] = ev
        fields["t"] = time.time()
        fields["m"] = time.monotonic()
        os.write(fd, orjson.dumps(fields, option=_OPTS, default=str))

    return event


def per_event_us(emit, n: int, rounds: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(n):
            emit(Ev.CALL_COMPLETED, call=i, server="s1", status=200, bytes=20, service_s=0.001)
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    n = ap.parse_args().events
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    fd = os.open(tmp / "direct.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    direct = per_event_us(direct_writer(fd), n)
    os.close(fd)
    bus = EventBus()
    journal = Journal(tmp / "bus.jsonl")
    bus.subscribe(journal)
    with_journal = per_event_us(bus.emit, n)
    bus.subscribe(lambda e: None)
    bus.subscribe(lambda e: None)
    with_three = per_event_us(bus.emit, n)
    journal.close()
    empty = per_event_us(EventBus().emit, n)
    print(f"per event, best of 5 rounds of {n}:")
    print(f"  direct journal write (before the bus) {direct:6.2f} us")
    print(f"  bus -> journal                        {with_journal:6.2f} us  ({with_journal / direct:.2f}x)")
    print(f"  bus -> journal + 2 no-op subscribers  {with_three:6.2f} us  ({with_three / direct:.2f}x)")
    print(f"  bus, no subscriber                    {empty:6.2f} us")


if __name__ == "__main__":
    main()
