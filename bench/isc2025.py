"""The ISC 2025 workload through the balancer: eigen model (N = 100), 100 evaluations, 10 and 2 clients.

Each case starts a fresh balancer (pool of ``--servers`` eigen servers started at balancer start,
one call at a time each) on the chosen backend, runs the workload with the official ``umbridge``
client in ``--clients`` threads from a cold start, then once more on the warm pool, and stops it.
Printed next to the published figures (HyperQueue logs of the ISC 2025 study, computed here with
``analysis``) and UM-Bridge's C++ balancer measured on this very setup.

Whole run (cold) = balancer process start to the last answer, so it includes the balancer's own
start, the jobs' scheduling and the servers' start-up. Makespan = call received to answered; lag =
makespan - server-side compute (journal ``service_s``): queueing at the balancer included, so with
more clients than servers it grows with the queue; overhead = lag - queue wait (what the balancer
itself adds). Targets: whole run (cold) <= 2.5 s; warm-pool median lag < 5 ms.

    python bench/isc2025.py [--backend slurm] [--clients 10 2] [--calls 100] [--servers 2] [--keep DIR]
    python bench/isc2025.py --breakdown --runs 3 --compare HEAD   # before (a git rev or a checkout) and after

``--compare`` runs the same cases with another version of the balancer (a directory holding a
checkout, or a git revision, checked out into a temporary worktree) on the same cluster, the two
alternating run by run (each first in turn), and prints both side by side. Each cold run starts at a
random offset (``--jitter``, up to 1 s): SLURM starts a submitted batch job on its next scheduling
pass (its background loop's 1 s tick, or backfill's), so runs of a fixed length would otherwise hit
the same phase of that tick every time and one version could be lucky throughout.

Python's bytecode cache: an installed balancer compiles its modules once (``__pycache__``); an
environment with ``PYTHONDONTWRITEBYTECODE=1`` (some sandboxes set it) compiles all ~270 of them at
every start, ~0.1 s of the balancer's and some of each launcher's. ``--bytecode cached`` (the
default) lets every process of the run share a cache (``PYTHONPYCACHEPREFIX`` in the work directory,
filled by one discarded warm-up run per version); ``--bytecode env`` keeps the environment as it is.

A backend is one function in ``BACKENDS``: a context manager that prepares the scheduler and yields
the balancer's ``scheduler``, ``[backend]`` table and environment.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _breakdown as bd  # noqa: E402 - bench/_breakdown.py, beside this file
import tomli_w  # noqa: E402 - after the path set-up, like the project imports below
import umbridge  # noqa: E402

from balancer.analysis import analyze_journal  # noqa: E402
from balancer.observe.journal import read_journal  # noqa: E402
from tests.helpers import wait_until  # noqa: E402

ISC_DATA = ROOT.parent / "shared" / "data" / "isc2025"
# UM-Bridge's C++ load balancer on the same local SLURM cluster (2 CPUs), eigen N = 100, 100 calls.
REFERENCE_HERE = {10: "101-103", 2: "106-108"}
DIRECT_HERE = "0.53-0.61"  # the same 100 calls straight to one eigen server, one client


@dataclass
class Setup:
    """What a backend hands the balancer."""

    scheduler: str
    backend: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    slurm_dir: Path | None = None  # the test cluster's directory (its daemons' logs), for --breakdown


@contextlib.contextmanager
def slurm_setup(workdir: Path) -> Iterator[Setup]:
    """A real one-node SLURM cluster (tests/slurm/cluster.sh) in ``workdir``, stopped afterwards."""
    from tests.slurm.fixture import SlurmCluster

    t0 = time.perf_counter()
    cluster = SlurmCluster.start(workdir / "slurm")
    print(f"slurm test cluster up in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    try:
        yield Setup("slurm", {"poll_interval_s": 2.0}, cluster.env, "local SLURM 22.05, 2 CPUs", cluster.dir)
        left = cluster.jobs()
        if left:
            raise RuntimeError(f"jobs left in squeue after the balancer stopped: {left}")
    finally:
        cluster.stop()


@contextlib.contextmanager
def local_setup(workdir: Path) -> Iterator[Setup]:
    """Servers as local processes: the same pool without a scheduler, for comparison."""
    yield Setup("local", {}, dict(os.environ), "local processes")


@contextlib.contextmanager
def hyperqueue_setup(workdir: Path) -> Iterator[Setup]:
    """HyperQueue's embedded LocalCluster (one worker with every CPU), run by the balancer itself."""
    yield Setup("hyperqueue", {"mode": "embedded"}, dict(os.environ), "embedded HyperQueue, 1 worker")


BACKENDS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Setup]]] = {
    "slurm": slurm_setup,
    "local": local_setup,
    "hyperqueue": hyperqueue_setup,
}


# -- one case ----------------------------------------------------------------------------------------
def workload(url: str, clients: int, calls: int, n: int) -> tuple[list[float], list[float]]:
    """``calls`` evaluations from ``clients`` threads, each with its own ``umbridge.HTTPModel``;
    returns the perf_counter time of every answer and every call's latency at the client."""
    counter = itertools.count()
    done: list[float] = []
    latency: list[float] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            model = umbridge.HTTPModel(url, "posterior")
            while next(counter) < calls:
                t = time.perf_counter()
                out = model([[n]])
                t_done = time.perf_counter()
                if out != [[1.0]]:
                    raise AssertionError(f"wrong answer {out}")
                done.append(t_done)
                latency.append(t_done - t)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return done, latency


def run_case(
    setup: Setup,
    clients: int,
    calls: int,
    n: int,
    servers: int,
    d: Path,
    breakdown: bool = False,
    tree: Path = ROOT,
) -> dict[str, Any]:
    """One cold run (then the same workload on the warm pool) of the balancer in ``tree`` (a
    checkout: its package goes first on the balancer's and, through the job environment, the
    launchers' PYTHONPATH)."""
    d.mkdir(parents=True, exist_ok=True)
    env = dict(setup.env)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    shim_log = bd.install_shims(d / "shims", env) if breakdown else None
    watcher = bd.PortWatcher() if breakdown else None
    journal = d / "run" / "journal.jsonl"
    cfg = {
        "balancer": {"host": "127.0.0.1", "port": 0, "scheduler": setup.scheduler, "run_dir": str(d / "run")},
        "backend": setup.backend,
        "servers": [
            {
                "name": "eigen",
                "command": [sys.executable, str(tree / "models" / "eigen.py")],
                "models": ["posterior"],
                "min_servers": servers,
                "max_servers": servers,
                "concurrency": 1,
                # One BLAS thread per 1-CPU server, whatever the backend's default: two servers with
                # two OpenBLAS threads each on two cores spin against each other (5 ms -> 10-240 ms).
                "env": {"OMP_NUM_THREADS": "1"},
            }
        ],
    }
    if not setup.backend:
        del cfg["backend"]
    (d / "balancer.toml").write_text(tomli_w.dumps(cfg))
    log = open(d / "balancer.log", "wb")
    if watcher is not None:
        watcher.start()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "balancer.cli", "serve", "--config", str(d / "balancer.toml")],
        cwd=tree,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def started() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise RuntimeError(f"balancer exited {proc.returncode}: {(d / 'balancer.log').read_text()}")
            if journal.exists():
                return next((e for e in read_journal(journal) if e["ev"] == "balancer.started"), None)
            return None

        url = wait_until(started, 30, 0.005, "balancer.started")["url"]
        t_url = time.perf_counter()
        cold, _ = workload(url, clients, calls, n)
        t_cold = max(cold)
        if watcher is not None:  # while the servers still run: their processes' start times
            watcher.stop()
            procs = bd.snapshot_procs(read_journal(journal))
        cold_last_call = max(e["call"] for e in read_journal(journal) if e["ev"] == "call.received")
        warm, warm_latency = workload(url, clients, calls, n)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    breakdown_run = None
    if watcher is not None:
        # perf_counter and monotonic are the same clock on Linux (CLOCK_MONOTONIC).
        breakdown_run = bd.analyse(
            [e for e in read_journal(journal)],
            {"t0": t0, "url": t_url, "last_answer": t_cold},
            procs,
            watcher.first,
            setup.slurm_dir,
            shim_log,
        )
    run = analyze_journal(journal)
    ev = run.calls[run.calls["evaluation"].astype(bool) & (run.calls["outcome"] == "ok")]
    ev_cold, ev_warm = ev[ev.index <= cold_last_call], ev[ev.index > cold_last_call]

    def q(s: Any, p: float) -> float:
        return float(s.quantile(p))

    return {
        "clients": clients,
        "whole_cold_s": t_cold - t0,
        "whole_cold_from_url_s": t_cold - t_url,
        "whole_warm_s": max(warm) - t_cold,
        "makespan_p50_s": q(ev_cold["makespan"], 0.5),
        "makespan_p90_s": q(ev_cold["makespan"], 0.9),
        "lag_p50_s": q(ev_cold["lag"], 0.5),
        "lag_p90_s": q(ev_cold["lag"], 0.9),
        "warm_makespan_p50_s": q(ev_warm["makespan"], 0.5),
        "warm_lag_p50_s": q(ev_warm["lag"], 0.5),
        "warm_overhead_p50_s": q(ev_warm["overhead"], 0.5),
        "warm_client_latency_p50_s": statistics.median(warm_latency),
        "compute_p50_s": q(ev["compute"], 0.5),
        "servers_started": len(run.servers),
        "calls": len(ev_cold),
        "warm_calls": len(ev_warm),
        "breakdown": breakdown_run,
    }


def direct_baseline(calls: int, n: int) -> float:
    """``calls`` evaluations straight to one local eigen server, one client: the floor."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "models" / "eigen.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            with contextlib.suppress(Exception):
                return bool(umbridge.supported_models(url))
            return False

        wait_until(up, 30, 0.005, "eigen server")
        model = umbridge.HTTPModel(url, "posterior")
        t = time.perf_counter()
        for _ in range(calls):
            model([[n]])
        return time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(10)


# -- published figures ---------------------------------------------------------------------------
def published() -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for clients in (10, 2):
        path = ISC_DATA / f"eigen_100_{clients}clients.jsonl"
        if path.exists():
            out[clients] = analyze_journal(path).summary()
    return out


def fmt_s(v: float | None, ms: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.2f} ms" if ms else f"{v:.2f} s"


def table(results: list[dict[str, Any]], pub: dict[int, dict[str, Any]], setup: Setup, direct: float) -> str:
    by = {r["clients"]: r for r in results}
    cols = sorted(by, reverse=True)
    head = [f"ours, {c} clients" for c in cols] + [f"ISC 2025, {c} clients" for c in cols if c in pub]
    head += [f"C++ ref. here, {c} clients" for c in cols if c in REFERENCE_HERE]
    rows: list[list[str]] = []

    def row(
        label: str, ours: Callable[[dict[str, Any]], str], isc: Callable[[dict[str, Any]], str], ref: str
    ):
        cells = [ours(by[c]) for c in cols] + [isc(pub[c]) for c in cols if c in pub]
        cells += [ref if ref != "*" else f"{REFERENCE_HERE[c]} s" for c in cols if c in REFERENCE_HERE]
        rows.append([label, *cells])

    row(
        "whole run, cold start incl.",
        lambda r: fmt_s(r["whole_cold_s"]),
        lambda p: fmt_s(p["whole_run_s"]),
        "*",
    )
    row("  from first client call", lambda r: fmt_s(r["whole_cold_from_url_s"]), lambda p: "-", "-")
    row("whole run, warm pool", lambda r: fmt_s(r["whole_warm_s"]), lambda p: "-", "-")
    row(
        "makespan p50 (cold run)",
        lambda r: fmt_s(r["makespan_p50_s"], True),
        lambda p: fmt_s(p["makespan_p50_s"]),
        "-",
    )
    row(
        "makespan p90 (cold run)",
        lambda r: fmt_s(r["makespan_p90_s"], True),
        lambda p: fmt_s(p["makespan_p90_s"]),
        "-",
    )
    row(
        "lag p50 (cold run)",
        lambda r: fmt_s(r["lag_p50_s"], True),
        lambda p: fmt_s(p["lag_p50_s"], True),
        "-",
    )
    row(
        "lag p90 (cold run)",
        lambda r: fmt_s(r["lag_p90_s"], True),
        lambda p: fmt_s(p["lag_p90_s"], True),
        "-",
    )
    row("makespan p50, warm pool", lambda r: fmt_s(r["warm_makespan_p50_s"], True), lambda p: "-", "-")
    row("lag p50, warm pool", lambda r: fmt_s(r["warm_lag_p50_s"], True), lambda p: "-", "-")
    row("  of it balancer overhead", lambda r: fmt_s(r["warm_overhead_p50_s"], True), lambda p: "-", "-")
    row(
        "latency at the client p50, warm",
        lambda r: fmt_s(r["warm_client_latency_p50_s"], True),
        lambda p: "-",
        "-",
    )
    row("compute p50", lambda r: fmt_s(r["compute_p50_s"], True), lambda p: fmt_s(p["compute_p50_s"]), "-")
    row(
        "servers started", lambda r: str(r["servers_started"]), lambda p: f"{p['server_starts']} workers", "-"
    )
    widths = [max(len(x) for x in col) for col in zip(["metric", *head], *rows, strict=True)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(["metric", *head], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.append("")
    lines.append(
        f"ours: {setup.note}, pool of {results[0]['servers_started']} eigen servers started with the "
        "balancer. "
        f"Straight to one eigen server, 1 client, 100 calls: {direct:.2f} s here "
        f"(C++ reference's setup: {DIRECT_HERE} s)."
    )
    return "\n".join(lines)


@contextlib.contextmanager
def checkout(spec: str) -> Iterator[Path]:
    """``spec`` as a source tree: a directory as it is, else a git revision checked out (detached)
    into a temporary worktree, removed afterwards."""
    if Path(spec).is_dir():
        yield Path(spec).resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="isc2025-base-"))
    tree = tmp / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), spec], cwd=ROOT, check=True, capture_output=True
    )
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def spread(values: list[float]) -> str:
    """median [min-max] in seconds."""
    return f"{statistics.median(values):.2f} s [{min(values):.2f}-{max(values):.2f}]"


def compare_table(runs: dict[tuple[str, int], list[dict[str, Any]]], names: list[str]) -> str:
    """Both versions side by side per client count: median [range] of the cold run's figures."""
    clients = sorted({c for _, c in runs}, reverse=True)
    rows = [("whole run, cold start incl.", lambda r: r["whole_cold_s"])]
    rows.append(("  from first client call", lambda r: r["whole_cold_from_url_s"]))

    def less_slurm(r: dict[str, Any]) -> float | None:
        b = r.get("breakdown")
        if not b:
            return None
        wait = next((v for label, v in b["path"] if "submitted -> allocated" in label), None)
        return None if wait is None else r["whole_cold_s"] - wait

    def slurm_wait(r: dict[str, Any]) -> float | None:
        b = r.get("breakdown")
        return next((v for label, v in b["path"] if "submitted -> allocated" in label), None) if b else None

    rows.append(("  less SLURM's wait for its pass", less_slurm))
    rows.append(("  SLURM's wait for its pass", slurm_wait))
    rows.append(("whole run, warm pool", lambda r: r["whole_warm_s"]))
    head = ["metric"] + [f"{n}, {c} clients" for c in clients for n in names]
    lines = []
    for label, get in rows:
        cells = [label]
        for c in clients:
            for n in names:
                vals = [v for r in runs.get((n, c), []) if (v := get(r)) is not None]
                cells.append(spread(vals) if vals else "-")
        lines.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) + " |" for r in lines]
    n_runs = max(len(v) for v in runs.values())
    out.append(f"\nmedian [min-max] over {n_runs} cold runs each, the versions alternating run by run.")
    return "\n".join(out)


def print_breakdowns(breakdowns: dict[tuple[str, int], list[dict[str, Any]]], trees: dict[str, Path]) -> None:
    """Each version's breakdown per client count, its import times, its steps measured alone."""
    for (name, clients), runs in breakdowns.items():
        print()
        print(bd.report(clients, runs, name))
    for name, root in trees.items():
        label = f" [{name}]" if name else ""
        print()
        print(bd.import_times("balancer.launcher.main", root=root) + label)
        print()
        print(bd.import_times("balancer.cli, balancer.app", top=10, root=root) + label)
        print()
        print(bd.serve_imports(root) + label)
    print()
    print(bd.import_times("numpy, umbridge, aiohttp.web", top=5))
    for name, root in trees.items():
        print()
        print(bd.standalone(root, f" [{name}]" if name else ""))
    for name in trees:
        print()
        mine = {c: runs for (n, c), runs in breakdowns.items() if n == name}
        print((f"[{name}] " if name else "") + bd.summary(mine))


def use_bytecode_cache(mode: str, workdir: Path) -> None:
    """``cached``: every process of the run (balancers, launchers, models: they inherit this
    environment through the cluster's) shares one bytecode cache in ``workdir``. Call it before the
    cluster starts."""
    if mode == "cached":
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    unset = " (PYTHONDONTWRITEBYTECODE set)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    print(f"bytecode: {mode}{unset}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=sorted(BACKENDS), default="slurm")
    p.add_argument("--clients", type=int, nargs="+", default=[10, 2])
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--n", type=int, default=100, help="matrix size of the eigen model")
    p.add_argument("--servers", type=int, default=2, help="pool size, started with the balancer")
    p.add_argument("--keep", type=Path, help="keep run directories (journals, logs) here")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="print where each cold run's time goes (journal, SLURM's logs, process start times)",
    )
    p.add_argument("--runs", type=int, default=1, help="cold runs per client count (table: the median one)")
    p.add_argument(
        "--compare",
        metavar="REV_OR_DIR",
        help="also run this version (a git revision or a checkout) and print both side by side",
    )
    p.add_argument(
        "--jitter",
        type=float,
        default=1.0,
        help="wait a random 0..JITTER s before each cold run (SLURM's 1 s tick; 0: none)",
    )
    p.add_argument("--seed", type=int, default=23, help="of the jitter")
    p.add_argument(
        "--bytecode",
        choices=("cached", "env"),
        default="cached",
        help="cached: a shared bytecode cache, as an installation has (default); env: as the environment is",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    breakdowns: dict[tuple[str, int], list[dict[str, Any]]] = {}
    every: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        workdir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="isc2025-")))
        workdir.mkdir(parents=True, exist_ok=True)
        use_bytecode_cache(args.bytecode, workdir)
        trees: dict[str, Path] = {}
        if args.compare:
            trees["before"] = stack.enter_context(checkout(args.compare))
            trees["after"] = ROOT
        else:
            trees[""] = ROOT
        names = list(trees)
        results = []
        with BACKENDS[args.backend](workdir) as setup:
            for name in names if args.bytecode == "cached" else []:  # fills the cache; not counted
                d = workdir / f"warmup-{name or 'this'}"
                run_case(setup, args.clients[0], args.calls, args.n, args.servers, d, False, trees[name])
            for clients in args.clients:
                for i in range(args.runs):
                    order = names if i % 2 == 0 else names[::-1]  # each version first in turn
                    for name in order:
                        tag = f"{name}-" if name else ""
                        d = workdir / (f"{tag}c{clients}" if args.runs == 1 else f"{tag}c{clients}-{i + 1}")
                        if args.jitter > 0:
                            time.sleep(rng.uniform(0, args.jitter))
                        r = run_case(
                            setup, clients, args.calls, args.n, args.servers, d, args.breakdown, trees[name]
                        )
                        lag_ms = r["warm_lag_p50_s"] * 1000
                        print(
                            f"{name + ': ' if name else ''}{clients} clients, run {i + 1}: whole run "
                            f"{r['whole_cold_s']:.2f} s cold, warm lag p50 {lag_ms:.2f} ms",
                            file=sys.stderr,
                        )
                        every.setdefault((name, clients), []).append(r)
                        if r["breakdown"] is not None:
                            breakdowns.setdefault((name, clients), []).append(r["breakdown"])
                for name in names:
                    mine = sorted(every[(name, clients)], key=lambda r: r["whole_cold_s"])
                    if name == names[-1]:
                        results.append(mine[len(mine) // 2])
                    if args.runs > 1:
                        cold = [r["whole_cold_s"] for r in mine]
                        print(
                            f"{name + ': ' if name else ''}{clients} clients: whole run (cold) over "
                            f"{len(cold)} runs: median {statistics.median(cold):.2f} s, "
                            f"range {min(cold):.2f}-{max(cold):.2f} s"
                        )
        direct = direct_baseline(args.calls, args.n)
        pub = published()
        print(table(results, pub, setup, direct))
        if args.compare:
            print()
            print(f"== before ({args.compare}) and after (this checkout), same cluster ==")
            print(compare_table(every, names))
        if breakdowns:
            print_breakdowns(breakdowns, trees)
    ok_cold = all(r["whole_cold_s"] <= 2.5 for r in results)
    print(f"\ntarget whole run (cold) <= 2.5 s: {'met' if ok_cold else 'MISSED'}")
    for r in results:
        lag, over = r["warm_lag_p50_s"] * 1000, r["warm_overhead_p50_s"] * 1000
        verdict = (
            "met"
            if lag < 5
            else f"not met: it is queue wait ({r['clients']} clients, {args.servers} servers)"
        )
        print(
            f"target warm median lag < 5 ms, {r['clients']} clients: {lag:.2f} ms, {verdict}; "
            f"balancer overhead {over:.2f} ms"
        )
    if args.json:
        doc = {
            "results": results,
            "runs": {f"{n or 'this'}/{c}": v for (n, c), v in every.items()},
            "published": pub,
            "direct_s": direct,
        }
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
