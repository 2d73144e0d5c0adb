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


def write_journal(path: str | Path, *, calls: int = 200, clients: int = 4, servers: int = 2,
                  concurrency: int = 1, service: float = 0.05, startup: float = 0.4, metadata: int = 3,
                  invalid: int = 0, lose_server_at: float | None = None, seed: int = 0,
                  t0: float = 1.7e9, m0: float = 5000.0, truth: bool = True) -> Truth:
    """Simulate a run and write its journal to ``path``; returns the ground truth.

    ``calls`` evaluations are spread over ``clients`` closed-loop clients; the first client starts
    with ``metadata`` metadata calls (the first waits for a server, the rest are cached); ``invalid``
    evaluations fail with 400; ``lose_server_at`` kills server s1 at that time (its calls are
    re-queued and a replacement is started).
    """
    rng = random.Random(seed)
    tr = Truth()
    heap: list[tuple[float, int, str, Any]] = []
    seq = 0

    def push(when: float, kind: str, payload: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (when, seq, kind, payload))

    srv: dict[str, dict[str, Any]] = {}
    queue: deque[dict[str, Any]] = deque()
    calls_left = calls
    invalid_ids: set[int] = set()
    next_id = 0
    remaining_meta = {0: list(METADATA_OPS[:1] + METADATA_OPS[1:] * 8)[:metadata]}
    meta_cached = False
    in_flight: dict[int, dict[str, Any]] = {}
    invalid_every = max(calls // invalid, 1) if invalid else 0

    with open(path, "wb") as fh:
        emit = _Writer(fh, t0, m0, tr)
        emit(0.0, "balancer.started", url="http://127.0.0.1:4242", host="127.0.0.1", port=4242,
             scheduler="local", pid=4242, run_dir="/tmp/run")

        def start_server(now: float, sid: str, reason: str) -> None:
            emit(now, "scale.decision", spec="default", action="start", count=1, target=len(srv) + 1,
                 reason=reason)
            emit(now, "server.requested", server=sid, spec="default", reason="scale")
            srv[sid] = {"alive": False, "busy": set(), "requested": now}
            s_up = startup * rng.uniform(0.8, 1.2)
            push(now + 0.3 * s_up, "started", sid)
            push(now + 0.9 * s_up, "registered", sid)
            push(now + s_up, "ready", sid)

        def dispatch(now: float) -> None:
            while queue:
                free = [s for s, r in srv.items() if r["alive"] and len(r["busy"]) < concurrency]
                if not free:
                    return
                sid = min(free, key=lambda s: (len(srv[s]["busy"]), s))
                call = queue.popleft()
                call["attempt"] += 1
                call["server"] = sid
                call["dispatched"] = now
                call.setdefault("first_dispatch", now)
                srv[sid]["busy"].add(call["id"])
                emit(now, "call.dispatched", call=call["id"], server=sid, attempt=call["attempt"])
                dur = 0.002 if call["op"] != "Evaluate" else service * rng.lognormvariate(0.0, 0.3)
                call["service"] = dur
                push(now + dur + 0.0004, "done", (sid, call["id"], call["attempt"]))

        def arrive(now: float, client: int) -> None:
            nonlocal next_id, calls_left, meta_cached
            meta = remaining_meta.get(client)
            if meta:
                op = meta.pop(0)
            elif calls_left > 0:
                op = "Evaluate"
                calls_left -= 1
            else:
                return
            cid = next_id
            next_id += 1
            if cid == 0:
                tr.first_received = now
            emit(now, "call.received", call=cid, op=op, model="forward", bytes=48 if op == "Evaluate" else 2)
            if op == "Evaluate":
                tr.evaluations += 1
                if invalid_every and cid % invalid_every == 0 and len(invalid_ids) < invalid:
                    invalid_ids.add(cid)
                    tr.failed += 1
                    emit(now, "call.failed", call=cid, status=400, reason="invalid input")
                    push(now + 0.001, "arrive", client)
                    return
            else:
                tr.metadata_calls += 1
                if meta_cached:
                    push(now + 0.0001, "cached", (cid, client))
                    return
                meta_cached = True
            call = {"id": cid, "op": op, "client": client, "received": now, "attempt": 0}
            in_flight[cid] = call
            queue.append(call)
            busy = all(not r["alive"] or len(r["busy"]) >= concurrency for r in srv.values())
            if busy:
                emit(now, "call.queued", call=cid, model="forward", depth=len(queue))
            dispatch(now)

        for i in range(servers):
            start_server(0.001 * i, f"s{i + 1}", "initial pool")
        for c in range(clients):
            push(0.01 + 0.001 * c, "arrive", c)
        if lose_server_at is not None:
            push(lose_server_at, "lose", "s1")

        now = 0.0
        while heap:
            now, _, kind, payload = heapq.heappop(heap)
            if kind == "arrive":
                arrive(now, payload)
            elif kind == "done":
                sid, cid, attempt = payload
                call = in_flight.get(cid)
                if call is None or call["attempt"] != attempt or call.get("server") != sid:
                    continue  # this attempt was lost with its server
                srv[sid]["busy"].discard(cid)
                del in_flight[cid]
                service_s = round(call["service"] + 0.0002, 6)
                emit(now, "call.completed", call=cid, server=sid, status=200, bytes=64, service_s=service_s,
                     cached=False)
                if truth:
                    tr.busy_intervals.setdefault(sid, []).append((call["dispatched"], now))
                    if call["op"] == "Evaluate":
                        tr.makespan[cid] = now - call["received"]
                        tr.compute[cid] = service_s
                        tr.queue_wait[cid] = call["first_dispatch"] - call["received"]
                tr.last_completed = now
                push(now + 0.001, "arrive", call["client"])
                dispatch(now)
            elif kind == "cached":
                emit(now, "call.completed", call=payload[0], server=None, status=200, bytes=40,
                     service_s=None, cached=True)
                push(now + 0.001, "arrive", payload[1])
            elif kind == "ready":
                srv[payload]["alive"] = True
                emit(now, "server.ready", server=payload, spec="default", models=["forward"],
                     concurrency=concurrency)
                tr.startup[payload] = now - srv[payload]["requested"]
                dispatch(now)
            elif kind == "started":
                emit(now, "server.started", server=payload, spec="default", job=f"local-{payload}",
                     host="node1")
            elif kind == "registered":
                port = 7000 + int(payload[1:])
                emit(now, "server.registered", server=payload, url=f"http://node1:{port}", host="node1",
                     port=port, job=f"local-{payload}")
            elif kind == "lose":
                rec = srv[payload]
                rec["alive"] = False
                lost = sorted(rec["busy"])
                rec["busy"].clear()
                for cid in reversed(lost):
                    call = in_flight[cid]
                    tr.requeued += 1
                    if truth:
                        tr.busy_intervals.setdefault(payload, []).append((call["dispatched"], now))
                    emit(now, "call.requeued", call=cid, server=payload, attempt=call["attempt"],
                         reason="server lost")
                    call["server"] = None
                    queue.appendleft(call)
                emit(now, "server.failed", server=payload, reason="process exited")
                start_server(now, f"s{len(srv) + 1}", "replace lost server")
                dispatch(now)

        end = now + 0.05
        emit(end, "balancer.stopping", reason="signal")
        alive = [sid for sid, rec in srv.items() if rec["alive"]]
        for sid in alive:
            emit(end, "server.draining", server=sid, reason="shutdown")
        for sid in alive:
            emit(end + 0.01, "server.stopped", server=sid, reason="shutdown")
        emit(end + 0.02, "balancer.stopped")
        emit.flush()
    tr.end = end + 0.02
    return tr
