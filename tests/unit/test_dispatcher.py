"""The dispatcher's bookkeeping (calls/dispatcher.py): the free-slot index gives what a scan of the
members would, whatever the sequence of acquires, releases, joins, leaves and resizes; callback
waiters are served in order with futures and hear why when no server will come."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from balancer.calls.dispatcher import Dispatcher


@dataclass(eq=False)
class S:
    name: str
    concurrency: int = 1
    models: tuple[str, ...] = ("m",)
    outstanding: int = 0
    idle_since_m: float = 0.0
    serving: bool = False
    log: list[str] = field(default_factory=list)


def least(d: Dispatcher, model: str) -> int | None:
    """The lowest load among serving members with a free slot, by a full scan."""
    loads = [s.outstanding for s in d.by_model.get(model, ()) if s.outstanding < s.concurrency]
    return min(loads) if loads else None


@pytest.mark.parametrize("seed", range(5))
def test_the_index_agrees_with_a_scan_over_random_operations(seed: int) -> None:
    rng = random.Random(seed)
    d = Dispatcher()
    servers = [
        S(f"s{i}", rng.choice((1, 1, 2, 4)), rng.choice((("m",), ("m", "n"), ("n",)))) for i in range(30)
    ]
    held: list[S] = []
    for _ in range(3000):
        op = rng.random()
        if op < 0.15:
            s = rng.choice(servers)
            if not s.serving:
                d.add(s)
        elif op < 0.2:
            s = rng.choice(servers)
            if s.serving:
                d.remove(s)
        elif op < 0.25:
            s = rng.choice(servers)
            s.concurrency = rng.choice((1, 2, 4))
            d.resized(s)
        elif op < 0.65:
            model = rng.choice(("m", "n"))
            want = least(d, model) if not d.queues.get(model) else None
            got = d.try_acquire(model)
            assert (got.outstanding - 1 if got else None) == want
            if got is not None:
                assert got.serving and model in got.models and got.outstanding <= got.concurrency
                held.append(got)
        elif held:
            s = held.pop(rng.randrange(len(held)))
            d.release(s, 0.0)
        for s in servers:
            assert 0 <= s.outstanding


def test_equally_loaded_servers_give_the_last_freed_one_first() -> None:
    """Calls stay on a warm server; the others go idle long enough to be released."""
    d = Dispatcher()
    a, b, c = S("a"), S("b"), S("c")
    for s in (a, b, c):
        d.add(s)
    first = d.try_acquire("m")
    assert first is not None
    d.release(first, 1.0)
    assert d.try_acquire("m") is first


def test_callback_waiters_wait_in_line_with_futures_and_hear_a_failure() -> None:
    async def main() -> None:
        d = Dispatcher()
        s = S("a")
        d.add(s)
        assert d.try_acquire("m") is s  # the only slot
        got: list[tuple[str, object]] = []
        d.enqueue_cb("m", lambda srv, exc: got.append(("cb1", srv or exc)))
        fut = d.enqueue("m")
        d.enqueue_cb("m", lambda srv, exc: got.append(("cb2", srv or exc)))
        assert d.waiting("m") == 3 and got == []
        d.release(s, 1.0)  # the slot goes to the oldest waiter: the first callback, at once
        assert got == [("cb1", s)] and not fut.done() and s.outstanding == 1
        d.release(s, 2.0)
        assert fut.done() and fut.result() is s
        err = RuntimeError("held")
        assert d.fail_waiters("m", err) == 1
        assert got == [("cb1", s), ("cb2", err)] and d.waiting("m") == 0

    asyncio.run(main())


def test_no_step_scans_the_members() -> None:
    """10,000 busy servers: acquiring, queueing and releasing touch no other member (measured by
    attribute reads on the members, not by time)."""
    reads = [0]

    class Counted(S):
        def __getattribute__(self, name: str) -> object:
            if name == "outstanding":
                reads[0] += 1
            return super().__getattribute__(name)

    async def main() -> None:
        d = Dispatcher()
        servers = [Counted(f"s{i}") for i in range(10_000)]
        for s in servers:
            d.add(s)
        for _ in range(10_000):
            assert d.try_acquire("m") is not None
        reads[0] = 0
        assert d.try_acquire("m") is None
        fut = d.enqueue("m")
        d.release(servers[5000], 0.0)
        assert fut.result() is servers[5000]
        assert reads[0] < 20, reads[0]

    asyncio.run(main())
