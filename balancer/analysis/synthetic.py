"""Synthetic balancer journals with realistic event sequences, for tests and the scale benchmark.

A small discrete-event simulation of the balancer: closed-loop clients send calls, servers start up,
calls queue when every slot is busy, metadata calls are answered from the cache after the first one,
a server can be lost mid-call (its calls are re-queued) and invalid calls fail. Events are written in
time order in the journal schema of ``balancer/observe/journal.py``, and the simulation's own ground truth is
returned so tests can check the analysis against it rather than against itself.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

_OPTS = orjson.OPT_APPEND_NEWLINE
METADATA_OPS = ("Info", "ModelInfo", "InputSizes", "OutputSizes")


@dataclass
class Truth:
    """What the simulation did, independent of the analysis code."""

    evaluations: int = 0
    metadata_calls: int = 0
    failed: int = 0
    requeued: int = 0
    call_events: int = 0
    makespan: dict[int, float] = field(default_factory=dict)  # completed evaluations only
    compute: dict[int, float] = field(default_factory=dict)
    queue_wait: dict[int, float] = field(default_factory=dict)
    busy_intervals: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    startup: dict[str, float] = field(default_factory=dict)
    first_received: float = 0.0
    last_completed: float = 0.0
    end: float = 0.0


class _Writer:
    """Writes events in the journal's shape (fields, then v, ev, t, m) with a fixed clock origin."""

    def __init__(self, fh: Any, t0: float, m0: float, truth: Truth) -> None:
        self.fh, self.t0, self.m0, self.truth = fh, t0, m0, truth
        self.buf: list[bytes] = []

    def __call__(self, now: float, ev: str, **fields: Any) -> None:
        fields["v"] = 1
        fields["ev"] = ev
        fields["t"] = round(self.t0 + now, 6)
        fields["m"] = round(self.m0 + now, 9)
        self.buf.append(orjson.dumps(fields, option=_OPTS))
        if ev.startswith("call."):
            self.truth.call_events += 1
        if len(self.buf) >= 4096:
            self.flush()

    def flush(self) -> None:
        self.fh.write(b"".join(self.buf))
        self.buf.clear()


@dataclass
class _Params:
    calls: int
    clients: int
    servers: int
    concurrency: int
    service: float
    startup: float
    metadata: int
    invalid: int
    truth: bool


class _Sim:
    """The event loop of ``write_journal``: one ``on_<kind>`` method per kind of simulated event."""

    def __init__(self, p: _Params, emit: _Writer, tr: Truth, rng: random.Random) -> None:
        self.p, self.emit, self.tr, self.rng = p, emit, tr, rng
        self.heap: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.srv: dict[str, dict[str, Any]] = {}
        self.queue: deque[dict[str, Any]] = deque()
        self.calls_left = p.calls
        self.invalid_ids: set[int] = set()
        self.next_id = 0
        self.remaining_meta = {0: list(METADATA_OPS[:1] + METADATA_OPS[1:] * 8)[: p.metadata]}
        self.meta_cached = False
        self.in_flight: dict[int, dict[str, Any]] = {}
        self.invalid_every = max(p.calls // p.invalid, 1) if p.invalid else 0

    def push(self, when: float, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, kind, payload))

    def run(self) -> float:
        now = 0.0
        while self.heap:
            now, _, kind, payload = heapq.heappop(self.heap)
            getattr(self, f"on_{kind}")(now, payload)
        return now

    def start_server(self, now: float, sid: str, reason: str) -> None:
        self.emit(
            now,
            "scale.decision",
            spec="default",
            action="start",
            count=1,
            target=len(self.srv) + 1,
            reason=reason,
        )
        self.emit(now, "server.requested", server=sid, spec="default", reason="scale")
        self.srv[sid] = {"alive": False, "busy": set(), "requested": now}
        s_up = self.p.startup * self.rng.uniform(0.8, 1.2)
        self.push(now + 0.3 * s_up, "started", sid)
        self.push(now + 0.9 * s_up, "registered", sid)
        self.push(now + s_up, "ready", sid)

    def dispatch(self, now: float) -> None:
        srv, conc = self.srv, self.p.concurrency
        while self.queue:
            free = [s for s, r in srv.items() if r["alive"] and len(r["busy"]) < conc]
            if not free:
                return
            sid = min(free, key=lambda s: (len(srv[s]["busy"]), s))
            call = self.queue.popleft()
            call["attempt"] += 1
            call["server"] = sid
            call["dispatched"] = now
            call.setdefault("first_dispatch", now)
            srv[sid]["busy"].add(call["id"])
            self.emit(now, "call.dispatched", call=call["id"], server=sid, attempt=call["attempt"])
            dur = 0.002 if call["op"] != "Evaluate" else self.p.service * self.rng.lognormvariate(0.0, 0.3)
            call["service"] = dur
            self.push(now + dur + 0.0004, "done", (sid, call["id"], call["attempt"]))

    def _next_op(self, client: int) -> str | None:
        meta = self.remaining_meta.get(client)
        if meta:
            return meta.pop(0)
        if self.calls_left > 0:
            self.calls_left -= 1
            return "Evaluate"
        return None

    def _fails_invalid(self, now: float, cid: int, client: int) -> bool:
        """An invalid evaluation fails with 400 at once, and its client sends the next call."""
        every = self.invalid_every
        if not (every and cid % every == 0 and len(self.invalid_ids) < self.p.invalid):
            return False
        self.invalid_ids.add(cid)
        self.tr.failed += 1
        self.emit(now, "call.failed", call=cid, status=400, reason="invalid input")
        self.push(now + 0.001, "arrive", client)
        return True

    def on_arrive(self, now: float, client: int) -> None:
        op = self._next_op(client)
        if op is None:
            return
        cid = self.next_id
        self.next_id += 1
        if cid == 0:
            self.tr.first_received = now
        self.emit(now, "call.received", call=cid, op=op, model="forward", bytes=48 if op == "Evaluate" else 2)
        if op == "Evaluate":
            self.tr.evaluations += 1
            if self._fails_invalid(now, cid, client):
                return
        else:
            self.tr.metadata_calls += 1
            if self.meta_cached:
                self.push(now + 0.0001, "cached", (cid, client))
                return
            self.meta_cached = True
        call = {"id": cid, "op": op, "client": client, "received": now, "attempt": 0}
        self.in_flight[cid] = call
        self.queue.append(call)
        if all(not r["alive"] or len(r["busy"]) >= self.p.concurrency for r in self.srv.values()):
            self.emit(now, "call.queued", call=cid, model="forward", depth=len(self.queue))
        self.dispatch(now)

    def on_done(self, now: float, payload: tuple[str, int, int]) -> None:
        sid, cid, attempt = payload
        call = self.in_flight.get(cid)
        if call is None or call["attempt"] != attempt or call.get("server") != sid:
            return  # this attempt was lost with its server
        self.srv[sid]["busy"].discard(cid)
        del self.in_flight[cid]
        service_s = round(call["service"] + 0.0002, 6)
        self.emit(
            now,
            "call.completed",
            call=cid,
            server=sid,
            status=200,
            bytes=64,
            service_s=service_s,
            cached=False,
        )
        tr = self.tr
        if self.p.truth:
            tr.busy_intervals.setdefault(sid, []).append((call["dispatched"], now))
            if call["op"] == "Evaluate":
                tr.makespan[cid] = now - call["received"]
                tr.compute[cid] = service_s
                tr.queue_wait[cid] = call["first_dispatch"] - call["received"]
        tr.last_completed = now
        self.push(now + 0.001, "arrive", call["client"])
        self.dispatch(now)

    def on_cached(self, now: float, payload: tuple[int, int]) -> None:
        self.emit(
            now,
            "call.completed",
            call=payload[0],
            server=None,
            status=200,
            bytes=40,
            service_s=None,
            cached=True,
        )
        self.push(now + 0.001, "arrive", payload[1])

    def on_ready(self, now: float, sid: str) -> None:
        self.srv[sid]["alive"] = True
        self.emit(
            now,
            "server.ready",
            server=sid,
            spec="default",
            models=["forward"],
            concurrency=self.p.concurrency,
        )
        self.tr.startup[sid] = now - self.srv[sid]["requested"]
        self.dispatch(now)

    def on_started(self, now: float, sid: str) -> None:
        self.emit(now, "server.started", server=sid, spec="default", job=f"local-{sid}", host="node1")

    def on_registered(self, now: float, sid: str) -> None:
        port = 7000 + int(sid[1:])
        self.emit(
            now,
            "server.registered",
            server=sid,
            url=f"http://node1:{port}",
            host="node1",
            port=port,
            job=f"local-{sid}",
        )

    def on_lose(self, now: float, sid: str) -> None:
        rec = self.srv[sid]
        rec["alive"] = False
        lost = sorted(rec["busy"])
        rec["busy"].clear()
        for cid in reversed(lost):
            call = self.in_flight[cid]
            self.tr.requeued += 1
            if self.p.truth:
                self.tr.busy_intervals.setdefault(sid, []).append((call["dispatched"], now))
            self.emit(
                now, "call.requeued", call=cid, server=sid, attempt=call["attempt"], reason="server lost"
            )
            call["server"] = None
            self.queue.appendleft(call)
        self.emit(now, "server.failed", server=sid, reason="process exited")
        self.start_server(now, f"s{len(self.srv) + 1}", "replace lost server")
        self.dispatch(now)

    def finish(self, now: float) -> float:
        end = now + 0.05
        self.emit(end, "balancer.stopping", reason="signal")
        alive = [sid for sid, rec in self.srv.items() if rec["alive"]]
        for sid in alive:
            self.emit(end, "server.draining", server=sid, reason="shutdown")
        for sid in alive:
            self.emit(end + 0.01, "server.stopped", server=sid, reason="shutdown")
        self.emit(end + 0.02, "balancer.stopped")
        self.emit.flush()
        return end + 0.02


def write_journal(
    path: str | Path,
    *,
    calls: int = 200,
    clients: int = 4,
    servers: int = 2,
    concurrency: int = 1,
    service: float = 0.05,
    startup: float = 0.4,
    metadata: int = 3,
    invalid: int = 0,
    lose_server_at: float | None = None,
    seed: int = 0,
    t0: float = 1.7e9,
    m0: float = 5000.0,
    truth: bool = True,
) -> Truth:
    """Simulate a run and write its journal to ``path``; returns the ground truth.

    ``calls`` evaluations are spread over ``clients`` closed-loop clients; the first client starts
    with ``metadata`` metadata calls (the first waits for a server, the rest are cached); ``invalid``
    evaluations fail with 400; ``lose_server_at`` kills server s1 at that time (its calls are
    re-queued and a replacement is started).
    """
    tr = Truth()
    params = _Params(calls, clients, servers, concurrency, service, startup, metadata, invalid, truth)
    with open(path, "wb") as fh:
        emit = _Writer(fh, t0, m0, tr)
        emit(
            0.0,
            "balancer.started",
            url="http://127.0.0.1:4242",
            host="127.0.0.1",
            port=4242,
            scheduler="local",
            pid=4242,
            run_dir="/tmp/run",
        )
        sim = _Sim(params, emit, tr, random.Random(seed))
        for i in range(servers):
            sim.start_server(0.001 * i, f"s{i + 1}", "initial pool")
        for c in range(clients):
            sim.push(0.01 + 0.001 * c, "arrive", c)
        if lose_server_at is not None:
            sim.push(lose_server_at, "lose", "s1")
        tr.end = sim.finish(sim.run())
    return tr
