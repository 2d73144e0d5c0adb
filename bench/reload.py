"""Live config reload under load, side by side with what a user had to do before: restart the balancer.

One real ``balancer serve`` (local scheduler, run dir in a temp dir, port 0) with N test model servers
(``models/testmodel.py``, ``TEST_DELAY`` ms per call, ``TEST_FACTOR`` tells old servers from new
ones), min_servers = max_servers = N. A load generator in a separate process (raw aiohttp, keep-alive)
keeps K calls in flight for the whole run and records every call: completion time (monotonic, the
journal's ``m`` clock), latency, outcome. After a steady phase before each, the script applies:

1. a changed ``env`` of the spec (``balancer reload``): rolling replacement of all N servers;
2. a second spec serving the same model, added and then removed again;
3. min/max_servers raised to N+2, then lowered back to N (both, so the size is the scaler's at once);
4. the alternative: SIGINT, then ``balancer serve`` again with the changed config on the same port
   (the load generator retries refused connections and counts them).

Server events come from the journal (RUN_DIR/journal.jsonl). It prints one table row per change and a
restart-vs-reload line. "before" is the steady phase at N servers just before the change (for N+2 -> N,
the one before N -> N+2); "time to complete" runs from ``config.reloaded`` to the last old server's
``server.stopped`` (rollout, removal, shrink) or to N+2 ready (growth); for the restart from the SIGINT
to N ready servers. "seconds without service" is the longest gap between two answers.

Targets: 0 calls lost in every reload; fewest ready servers >= N during a
rolling replacement; throughput during a reload >= 0.8 of the steady phase before it. Nothing timed is
asserted; the exit status is 1 only when a reload lost a call or a rollout dipped below N ready (so the
script doubles as a smoke check).

    python bench/reload.py [--seconds 4] [--servers 4] [--inflight 8] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = b'{"name": "forward", "input": [[1.0]], "config": {}}'
MAIN = "main"  # the spec under test
EXTRA = "extra"  # the spec added and removed in change 2
GONE = ("server.draining", "server.stopping", "server.failed", "server.stopped")

# (monotonic completion, latency s, "ok" | "fail" | "error" | "refused", answer or HTTP status)
Rec = tuple[float, float, str, float]
Event = dict[str, Any]


# ---------------------------------------------------------------- load generator (its own process)


def read_url(url_file: Path, default: str = "") -> str:
    return url_file.read_text().strip() or default


async def loadgen(url_file: Path, inflight: int) -> list[Rec]:
    """K workers post /Evaluate back to back until SIGTERM; refused connections are retried after 20 ms
    (re-reading the URL file), other errors are counted. Returns every call's record."""
    import aiohttp

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    recs: list[Rec] = []
    url = [read_url(url_file)]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:

        async def one() -> Rec:
            t = time.monotonic()
            try:
                async with http.post(url[0] + "/Evaluate", data=BODY) as r:
                    body = await r.read()
                done = time.monotonic()
                if r.status != 200:
                    return done, done - t, "fail", float(r.status)
                return done, done - t, "ok", float(json.loads(body)["output"][0][0])
            except aiohttp.ClientConnectorError:
                url[0] = read_url(url_file, url[0])
                return time.monotonic(), time.monotonic() - t, "refused", 0.0
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                return time.monotonic(), time.monotonic() - t, "error", 0.0

        async def worker() -> None:
            while not stop.is_set():
                rec = await one()
                recs.append(rec)
                if rec[2] in ("refused", "error"):
                    await asyncio.sleep(0.02)

        await asyncio.gather(*(worker() for _ in range(inflight)))
    return recs


# ---------------------------------------------------------------- the balancer and its journal


@dataclass
class Spec:
    name: str
    servers: int
    factor: int


class Bench:
    """The balancer process, its config file and journal, and the load generator."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-reload-"))
        self.cfg = self.tmp / "bench.toml"
        self.run_dir = self.tmp / "run"
        self.journal = self.run_dir / "journal.jsonl"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.load: subprocess.Popen[bytes] | None = None
        self.recs_file = self.tmp / "calls.json"
        self._read = 0  # journal bytes parsed so far
        self._events: list[Event] = []

    def write_config(self, specs: list[Spec], port: int = 0) -> None:
        """The config file; ``port`` stays 0 for reloads (it cannot change live), the restart pins it."""
        text = f'[balancer]\nport = {port}\nrun_dir = "{self.run_dir}"\n'
        for s in specs:
            text += (
                f'[[servers]]\nname = "{s.name}"\n'
                f'command = ["{sys.executable}", "{ROOT}/models/testmodel.py"]\n'
                f'models = ["forward"]\nmin_servers = {s.servers}\nmax_servers = {s.servers}\n'
                f'env = {{ TEST_DELAY = "{self.args.delay_ms}", TEST_FACTOR = "{s.factor}" }}\n'
            )
        self.cfg.write_text(text)

    def events(self) -> list[Event]:
        """The journal so far, read on from where the last call stopped, without the per-call events
        (tens of thousands here: re-parsing them at every poll would take the balancer's CPU)."""
        if not self.journal.exists():
            return self._events
        with open(self.journal, "rb") as fh:
            fh.seek(self._read)
            chunk = fh.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read next time
        self._read += len(whole)
        for line in whole.splitlines():
            if b'"ev":"call.' in line and b'"ev":"call.failed"' not in line:
                continue
            self._events.append(json.loads(line))
        return self._events

    def wait(self, what: str, pred: Callable[[list[Event]], float | None], timeout: float = 90) -> float:
        """Poll the journal until ``pred`` returns a monotonic time; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = pred(self.events())
            if m is not None:
                return m
            time.sleep(0.05)
        raise SystemExit(f"bench: timed out waiting for {what} (journal {self.journal})")

    def serve(self) -> float:
        """Start ``balancer serve``; return the journal time of its ``balancer.started``."""
        since = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "balancer.cli", "serve", "--config", str(self.cfg)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
        )
        started = self.wait("balancer.started", lambda evs: _first(evs, "balancer.started", since))
        if not self.port:
            self.port = int(self.wait("port", lambda evs: _last_started(evs)["port"]))
        return started

    def stop(self) -> float:
        """SIGINT the balancer; return when it was sent (monotonic)."""
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(90)
        return t

    def reload(self) -> float:
        """``balancer reload`` (the CLI); return the journal time of its ``config.reloaded``."""
        before = sum(e["ev"] == "config.reloaded" for e in self.events())
        subprocess.run(
            [sys.executable, "-m", "balancer.cli", "reload", "--run-dir", str(self.run_dir)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            check=True,
        )
        return self.wait("config.reloaded", lambda evs: _nth(evs, "config.reloaded", before))

    def start_load(self) -> None:
        self.load = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--loadgen",
                str(self.run_dir / "url"),
                "--inflight",
                str(self.args.inflight),
                "--out",
                str(self.recs_file),
            ],
        )

    def stop_load(self) -> list[Rec]:
        assert self.load is not None
        self.load.send_signal(signal.SIGTERM)
        self.load.wait(60)
        return [tuple(r) for r in json.loads(self.recs_file.read_text())]  # type: ignore[misc]

    def close(self) -> None:
        for p in (self.load, self.proc):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT if p is self.proc else signal.SIGTERM)
                p.wait(60)


def _first(evs: list[Event], ev: str, since: float) -> float | None:
    return next((e["m"] for e in evs if e["ev"] == ev and e["m"] >= since), None)


def _nth(evs: list[Event], ev: str, n: int) -> float | None:
    ms = [e["m"] for e in evs if e["ev"] == ev]
    return ms[n] if len(ms) > n else None


def _last_started(evs: list[Event]) -> Event:
    return [e for e in evs if e["ev"] == "balancer.started"][-1]


def this_run(evs: list[Event]) -> list[Event]:
    """The events of the latest balancer process (server ids restart at s1 after a restart)."""
    starts = [i for i, e in enumerate(evs) if e["ev"] == "balancer.started"]
    return evs[starts[-1] :] if starts else evs


def spec_of(evs: list[Event]) -> dict[str, str]:
    return {e["server"]: e["spec"] for e in evs if e["ev"] == "server.requested"}


def ready_at(evs: list[Event], spec: str, t: float) -> set[str]:
    """The spec's servers that are ready (not yet draining, stopping, failed or stopped) at time ``t``."""
    specs, ready, gone = spec_of(evs), set(), set()
    for e in evs:
        if e["m"] > t or specs.get(e.get("server", "")) != spec:
            continue
        if e["ev"] == "server.ready" and e["server"] not in gone:
            ready.add(e["server"])
        elif e["ev"] in GONE:
            ready.discard(e["server"])
            gone.add(e["server"])
    return ready


def fewest_ready(evs: list[Event], spec: str, t0: float, t1: float) -> int:
    """The journal walk: ready +1, draining/stopping/failed/stopped of a ready server -1; the minimum
    over [t0, t1]."""
    specs = spec_of(evs)
    ready = ready_at(evs, spec, t0)
    low = len(ready)
    for e in evs:
        if not t0 < e["m"] <= t1 or specs.get(e.get("server", "")) != spec:
            continue
        if e["ev"] == "server.ready":
            ready.add(e["server"])
        elif e["ev"] in GONE and e["server"] in ready:
            ready.discard(e["server"])
            low = min(low, len(ready))
    return low


def live(evs: list[Event], spec: str) -> set[str]:
    """The spec's servers requested and not yet stopped or failed."""
    specs = spec_of(evs)
    done = {e["server"] for e in evs if e["ev"] in ("server.stopped", "server.failed")}
    return {s for s, sp in specs.items() if sp == spec} - done


def stopped_all(evs: list[Event], servers: set[str]) -> float | None:
    """The time of the last ``server.stopped`` of ``servers``, once all of them stopped."""
    ms = {e["server"]: e["m"] for e in evs if e["ev"] in ("server.stopped", "server.failed")}
    return max(ms[s] for s in servers) if servers and servers <= ms.keys() else None


def n_ready_since(evs: list[Event], spec: str, n: int, t: float) -> float | None:
    """When ``n`` servers of ``spec`` were ready at once (checked at each event after ``t``)."""
    for e in evs:
        if e["m"] > t and e["ev"] == "server.ready" and len(ready_at(evs, spec, e["m"])) >= n:
            return e["m"]
    return None


# ---------------------------------------------------------------- the measurements


@dataclass
class Window:
    """The calls completed in [t0, t1)."""

    recs: list[Rec]
    t0: float
    t1: float

    @property
    def calls(self) -> list[Rec]:
        return [r for r in self.recs if self.t0 <= r[0] < self.t1]

    @property
    def ok(self) -> list[Rec]:
        return [r for r in self.calls if r[2] == "ok"]

    def lost(self) -> int:
        return sum(r[2] in ("fail", "error") for r in self.calls)

    def refused(self) -> int:
        return sum(r[2] == "refused" for r in self.calls)

    def rate(self) -> float:
        return len(self.ok) / max(self.t1 - self.t0, 1e-9)

    def pct(self, q: float) -> float:
        lat = sorted(r[1] for r in self.ok)
        return lat[min(int(len(lat) * q), len(lat) - 1)] if lat else float("nan")

    def gap(self) -> float:
        """The longest time without an answer (from t0 to the first, between answers, to t1)."""
        ts = [self.t0, *sorted(r[0] for r in self.ok), self.t1]
        return max(b - a for a, b in itertools.pairwise(ts))


@dataclass
class Row:
    change: str
    before: Window
    during: Window
    fewest: str
    took: float


def print_table(rows: list[Row], n: int) -> None:
    print(
        f"{'change':<28} {'calls during':>12} {'lost':>5} {'thr during/before':>17} "
        f"{'p50 before/during':>19} {'p99 before/during':>19} {'fewest ready/N':>14} "
        f"{'time to complete':>16}"
    )
    for r in rows:
        b, d = r.before, r.during
        print(
            f"{r.change:<28} {len(d.calls) - d.refused():>12} {d.lost():>5} "  # refused: not a call
            f"{f'{d.rate():.0f}/{b.rate():.0f}={d.rate() / b.rate():.2f}':>17} "
            f"{f'{b.pct(0.5) * 1e3:.1f}/{d.pct(0.5) * 1e3:.1f} ms':>19} "
            f"{f'{b.pct(0.99) * 1e3:.1f}/{d.pct(0.99) * 1e3:.1f} ms':>19} "
            f"{f'{r.fewest}/{n}':>14} {f'{r.took:.2f} s':>16}"
        )


def run(args: argparse.Namespace) -> int:
    n, steady = args.servers, args.seconds
    b = Bench(args)
    marks: dict[str, float] = {}
    try:
        b.write_config([Spec(MAIN, n, 2)])
        b.serve()
        b.wait(f"{n} ready", lambda evs: n_ready_since(this_run(evs), MAIN, n, 0))
        b.start_load()
        time.sleep(1.0)  # connections open, queue settled

        # 1. rolling replacement
        marks["s1"] = time.monotonic()
        time.sleep(steady)
        old = live(b.events(), MAIN)
        b.write_config([Spec(MAIN, n, 3)])
        marks["r1"] = b.reload()
        marks["d1"] = b.wait("old servers stopped", lambda evs: stopped_all(evs, old), 120)
        b.wait(f"{n} new ready", lambda evs: n_ready_since(evs, MAIN, n, marks["r1"]))

        # 2. add a spec, let it serve, remove it
        marks["s2"] = time.monotonic()
        time.sleep(steady)
        b.write_config([Spec(MAIN, n, 3), Spec(EXTRA, 1, 5)])
        marks["r2"] = b.reload()
        b.wait("extra ready", lambda evs: n_ready_since(evs, EXTRA, 1, marks["r2"]))
        time.sleep(steady / 2)
        extra = live(b.events(), EXTRA)
        b.write_config([Spec(MAIN, n, 3)])
        marks["r2b"] = b.reload()
        marks["d2"] = b.wait("extra stopped", lambda evs: stopped_all(evs, extra))

        # 3. pool size up, then down
        marks["s3"] = time.monotonic()
        time.sleep(steady)
        b.write_config([Spec(MAIN, n + 2, 3)])
        marks["r3"] = b.reload()
        marks["d3"] = b.wait(f"{n + 2} ready", lambda evs: n_ready_since(evs, MAIN, n + 2, marks["r3"]))
        time.sleep(steady / 2)
        b.write_config([Spec(MAIN, n, 3)])
        marks["r3b"] = b.reload()
        marks["d3b"] = b.wait(f"{n} live", lambda evs: _size_is(evs, n, marks["r3b"]))
        reload_events = list(b.events())  # a copy: the restart appends to the same journal

        # 4. the alternative: restart with the changed config, same port
        marks["s4"] = time.monotonic()
        time.sleep(steady)
        b.write_config([Spec(MAIN, n, 7)], port=b.port)  # a user restarts on the same port
        marks["r4"] = b.stop()
        b.serve()
        marks["d4"] = b.wait(
            f"{n} ready after restart", lambda evs: n_ready_since(this_run(evs), MAIN, n, marks["r4"])
        )
        time.sleep(1.0)
        marks["end"] = time.monotonic()
        recs = b.stop_load()
        restart_events = [e for e in b.events() if e["m"] >= marks["r4"]]
    finally:
        b.close()
    status = report(args, recs, reload_events, marks)
    print_restart(restart_events, marks["r4"], args.servers)
    if status or args.keep:
        print(f"run dir (journal, logs): {b.run_dir}")
    else:
        shutil.rmtree(b.tmp, ignore_errors=True)
    return status


def _size_is(evs: list[Event], n: int, since: float) -> float | None:
    """Once the spec is down to ``n`` live servers: when the last surplus one stopped."""
    if len(live(evs, MAIN)) != n:
        return None
    return max(
        (e["m"] for e in evs if e["ev"] in ("server.stopped", "server.failed") and e["m"] > since),
        default=since,
    )


def report(args: argparse.Namespace, recs: list[Rec], evs: list[Event], m: dict[str, float]) -> int:
    n = args.servers

    def win(a: str, z: str) -> Window:
        return Window(recs, m[a], m[z])

    rows = [
        Row(
            "env changed: roll N",
            win("s1", "r1"),
            win("r1", "d1"),
            str(fewest_ready(evs, MAIN, m["r1"], m["d1"])),
            m["d1"] - m["r1"],
        ),
        Row(
            "spec added, then removed",
            win("s2", "r2"),
            win("r2", "d2"),
            str(fewest_ready(evs, MAIN, m["r2"], m["d2"])),
            m["d2"] - m["r2"],
        ),
        Row(
            f"servers {n} -> {n + 2}",
            win("s3", "r3"),
            win("r3", "d3"),
            str(fewest_ready(evs, MAIN, m["r3"], m["d3"])),
            m["d3"] - m["r3"],
        ),
        Row(
            f"servers {n + 2} -> {n}",
            win("s3", "r3"),
            win("r3b", "d3b"),  # before: at N servers
            str(fewest_ready(evs, MAIN, m["r3b"], m["d3b"])),
            m["d3b"] - m["r3b"],
        ),
        Row("restart (SIGINT + serve)", win("s4", "r4"), win("r4", "d4"), "0", m["d4"] - m["r4"]),
    ]
    print(
        f"live config reload vs restart: {n} servers x {args.delay_ms} ms calls, "
        f"{args.inflight} in flight, {args.seconds:g} s steady before each change, {os.cpu_count()} CPUs"
    )
    print_table(rows, n)

    roll, restart = rows[0].during, Window(recs, m["r4"] - 1.0, m["end"])  # from the last answer before
    old_after = sum(r[3] == 2.0 for r in Window(recs, m["d1"], m["r4"]).ok)
    print(
        f"restart vs reload: calls failed {restart.lost()} vs {roll.lost()}, connections refused "
        f"{restart.refused()} vs {roll.refused()}, seconds without service {restart.gap():.3f} vs "
        f"{roll.gap():.3f} (x{restart.gap() / roll.gap():.0f}), time to {n} ready servers of the new "
        f"config {rows[4].took:.2f} vs {rows[0].took:.2f} s"
    )
    broken = [f"{r.change}: {r.during.lost()} calls lost" for r in rows[:4] if r.during.lost()]
    every = Window(recs, m["s1"], m["s4"])
    if every.lost() and not broken:
        broken.append(f"{every.lost()} calls lost between the changes")
    failed = [e for e in evs if e["ev"] == "call.failed" and m["s1"] <= e["m"] < m["s4"]]
    if failed:
        broken.append(f"{len(failed)} call.failed in the journal during the reloads, first: {failed[0]}")
    if int(rows[0].fewest) < n:
        broken.append(f"rolling replacement went down to {rows[0].fewest} ready servers of {n}")
    if old_after:
        broken.append(f"{old_after} answers from old servers after the last old one stopped")
    for line in broken:
        print("BROKEN:", line)
    return 1 if broken else 0


def print_restart(evs: list[Event], t0: float, n: int) -> None:
    """Where the restart's time goes, from the journal (seconds after the SIGINT)."""

    def at(ev: str) -> float:
        return next((e["m"] - t0 for e in evs if e["ev"] == ev), float("nan"))

    ready = sorted(e["m"] - t0 for e in evs if e["ev"] == "server.ready") + [float("nan")] * n
    print(
        f"restart, s after SIGINT: balancer.stopped {at('balancer.stopped'):.2f}, new balancer.started "
        f"{at('balancer.started'):.2f}, first server.requested {at('server.requested'):.2f} (a restart in "
        f"the same run dir waits for the old servers to re-register first), first ready "
        f"{ready[0]:.2f}, {n} ready {ready[n - 1]:.2f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="steady phase before each change")
    ap.add_argument("--servers", type=int, default=4, help="N: min_servers = max_servers")
    ap.add_argument("--inflight", type=int, default=8, help="K: calls the load generator keeps in flight")
    ap.add_argument("--delay-ms", type=int, default=20, help="TEST_DELAY of the model: ms per call")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (journal, logs) and print it")
    ap.add_argument("--loadgen", type=Path, help=argparse.SUPPRESS)  # the load generator process: URL file
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        args.out.write_text(json.dumps(asyncio.run(loadgen(args.loadgen, args.inflight))))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
