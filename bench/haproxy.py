"""The balancer next to HAProxy: one trivial model server called directly, through HAProxy and through the
balancer, in one run, with the same load generator (``bench/_load.py``, as ``bench/overhead.py``).

One balancer starts one trivial UM-Bridge test-model server (``models/testmodel.py``, concurrency 64, as
``bench/overhead.py``); that server is the "direct" column and HAProxy's only backend. HAProxy is
Debian's ``haproxy`` (installed with apt-get when missing), run as a subprocess with a generated config:
``nbthread 1``, ``mode http``, ``balance leastconn``, ``http-reuse always``, no logging, on a free
loopback port. The balancer runs on its default loop (uvloop where installed: a default dependency);
a second balancer (with its own server of the same model) runs on asyncio's own loop
(``UMBRIDGE_BALANCER_LOOP=asyncio``) for one more column.

Per column and calls in flight: the proxy's CPU per call (its process's user+sys CPU seconds over the
phase, from /proc, / calls), p50 latency, p50 added to direct's in the same round, calls/s, and the
ratios balancer / HAProxy (for added p50: the difference), each as the range over the rounds (the
order of the columns alternates between rounds). Targets (issue 23): CPU per call at most 1.5x
HAProxy's at 64 in flight and 2x at 1; added p50 at 1 in flight at most HAProxy's + 0.1 ms.

``--compare REV`` adds a column for the balancer of an earlier git revision (a temporary worktree, on
the loop that revision chose), in the same rounds: before and after beside HAProxy in one run.

    python bench/haproxy.py [--seconds 3] [--rounds 3] [--inflight 1,64] [--concurrency 64] [--compare REV]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _load import balancer, cpu_seconds, run_load, stop  # noqa: E402  (next to this file)

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench
    bind 127.0.0.1:{port}
    default_backend model

backend model
    balance leastconn
    http-reuse always
    server model {host}:{server_port} maxconn {concurrency}
"""

ENV_LOOP = "UMBRIDGE_BALANCER_LOOP"  # balancer/cli/eventloop.py
DIRECT, HAPROXY, BALANCER, ASYNCIO = "direct", "HAProxy", "balancer", "balancer on asyncio's loop"


def haproxy_exe() -> str:
    """Debian's haproxy, installed with apt-get when missing."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("bench: haproxy is not installed (apt-get install haproxy, as root)")
    print("bench: installing haproxy (apt-get install -y haproxy)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = subprocess.run(["apt-get", "install", "-y", "haproxy"], capture_output=True, text=True, env=env)
    found = shutil.which("haproxy", path="/usr/sbin:/usr/bin:/usr/local/sbin")
    if not found:
        raise SystemExit(f"bench: apt-get install haproxy failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    # Should the package have started its service, it is left alone: this bench runs its own instance.
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def haproxy(server_url: str, concurrency: int, tmp: Path) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """HAProxy in front of ``server_url``; yields (its process, its URL, its version)."""
    exe = haproxy_exe()
    version = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    version = " ".join(version.split()[:3])  # "HAProxy version 2.6.12-1+deb12u3"
    server = urlsplit(server_url)
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(
        HAPROXY_CFG.format(port=port, host=server.hostname, server_port=server.port, concurrency=concurrency)
    )
    err = tmp / "haproxy.err"
    with open(err, "wb") as fh:  # -db: foreground, one process (no master-worker): its CPU is the proxy's
        proc = subprocess.Popen(
            [exe, "-db", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fh,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"bench: haproxy exited ({proc.returncode}):\n{err.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: haproxy did not listen on {port}:\n{err.read_text()}") from None
                time.sleep(0.05)
        yield proc, f"http://127.0.0.1:{port}", version
    finally:
        stop(proc, signal.SIGTERM, 10)


def phase(url: str, pid: int | None, inflight: int, seconds: float) -> dict:
    """One load phase; with ``pid``, that proxy's CPU seconds per call over it."""
    c0 = cpu_seconds(pid) if pid else 0.0
    r = run_load(url, inflight, seconds)
    r["cpu"] = (cpu_seconds(pid) - c0) / r["calls"] if pid else None
    return r


def measure(columns: list[tuple[str, str, int | None]], args: argparse.Namespace) -> dict:
    """{(inflight, column): [result per round]}; the order of the columns alternates between rounds."""
    res: dict[tuple[int, str], list[dict]] = {}
    for rnd in range(args.rounds):
        order = columns if rnd % 2 == 0 else columns[::-1]
        for inflight in args.inflight:
            for name, url, pid in order:
                r = phase(url, pid, inflight, args.seconds)
                res.setdefault((inflight, name), []).append(r)
                cpu = f"{r['cpu'] * 1e6:6.0f} us/call" if r["cpu"] is not None else " " * 13
                print(
                    f"  round {rnd + 1} {inflight:>3} in flight {name:<18} {r['rate']:7.0f} calls/s "
                    f"p50 {r['p50'] * 1e3:6.3f} ms  {cpu}",
                    file=sys.stderr,
                    flush=True,
                )
    return res


def span(values: list[float], fmt: str, unit: str) -> str:
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    sep = " to " if fmt.startswith("+") else "-"  # "+0.12 to +0.30 ms", "29-34 us"
    return f"{lo}{unit}" if lo == hi else f"{lo}{sep}{hi}{unit}"


FIGURES = [  # (figure, value of one round's result (with "added" set), format, unit)
    ("proxy CPU per call", lambda r: r["cpu"] and r["cpu"] * 1e6, ".0f", " us"),
    ("p50 latency", lambda r: r["p50"] * 1e3, ".2f", " ms"),
    ("added p50", lambda r: r["added"] * 1e3, ".2f", " ms"),
    ("calls/s", lambda r: r["rate"], ".0f", ""),
]


def table(res: dict, names: list[str], inflights: list[int]) -> list[str]:
    """The issue's table, markdown: a row per (in flight, figure), ranges over rounds, ratios per round."""
    proxies = [n for n in names if n not in (DIRECT, HAPROXY)]
    head = ["in flight", "figure", *names, *(f"{n} / HAProxy" for n in proxies)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for inflight in inflights:
        direct = res[(inflight, DIRECT)]
        for name in names:
            for r, d in zip(res[(inflight, name)], direct, strict=True):
                r["added"] = r["p50"] - d["p50"]
        for figure, get, fmt, unit in FIGURES:
            cells = [str(inflight), figure]
            for name in names:
                vals = [get(r) for r in res[(inflight, name)]]
                skip = name == DIRECT and figure in ("proxy CPU per call", "added p50")
                cells.append("-" if skip or None in vals else span(vals, fmt, unit))
            for name in proxies:
                pairs = list(zip(res[(inflight, name)], res[(inflight, HAPROXY)], strict=True))
                if figure == "added p50":  # the target is a difference (HAProxy's + 0.1 ms), not a ratio
                    cells.append(span([get(r) - get(h) for r, h in pairs], "+.2f", " ms"))
                    continue
                ratios = [get(r) / get(h) for r, h in pairs if get(h)]
                cells.append(span(ratios, ".2f", "x") if ratios else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdicts(res: dict, inflights: list[int]) -> list[str]:
    """The issue's targets, worst round."""
    out = []
    for inflight, limit in ((64, 1.5), (1, 2.0)):
        if inflight in inflights:
            pairs = zip(res[(inflight, BALANCER)], res[(inflight, HAPROXY)], strict=True)
            worst = max(b["cpu"] / max(h["cpu"], 1e-9) for b, h in pairs)
            ok = "met" if worst <= limit else "not met"
            out.append(
                f"target: balancer CPU per call <= {limit}x HAProxy's at {inflight} in flight: "
                f"worst round {worst:.2f}x ({ok})"
            )
    if 1 in inflights:
        pairs = zip(res[(1, BALANCER)], res[(1, HAPROXY)], strict=True)
        worst = max(b["added"] - h["added"] for b, h in pairs) * 1e3
        ok = "met" if worst <= 0.1 else "not met"
        out.append(
            f"target: balancer added p50 at 1 in flight <= HAProxy's + 0.1 ms: "
            f"worst round {worst:+.3f} ms ({ok})"
        )
    return out


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per phase (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, column order alternating (default 3)")
    ap.add_argument("--inflight", default="1,64", help="calls in flight, comma-separated (default 1,64)")
    ap.add_argument("--concurrency", type=int, default=64, help="the server's and the proxies' cap (64)")
    ap.add_argument("--compare", metavar="REV", help="a column for the balancer of git revision REV")
    args = ap.parse_args()
    args.inflight = [int(x) for x in args.inflight.split(",") if x.strip()]

    # SIGTERM unwinds like Ctrl-C: every `finally` below stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    uvloop = has_uvloop()
    t0 = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-haproxy-")))
        bal, direct, via = stack.enter_context(balancer(ROOT, args.concurrency, prefix="bench-haproxy-bal-"))
        hap, hap_url, version = stack.enter_context(haproxy(direct, args.concurrency, tmp))
        columns: list[tuple[str, str, int | None]] = [
            (DIRECT, direct, None),
            (HAPROXY, hap_url, hap.pid),
            (BALANCER, via, bal.pid),
        ]
        if uvloop:
            plain, _, plain_via = stack.enter_context(
                balancer(ROOT, args.concurrency, prefix="bench-haproxy-aio-", env={ENV_LOOP: "asyncio"})
            )
            columns.append((ASYNCIO, plain_via, plain.pid))
        if args.compare:
            tree = tmp / "before"
            git = ["git", "-C", str(ROOT), "worktree"]
            subprocess.run([*git, "add", "-q", "--detach", str(tree), args.compare], check=True)
            stack.callback(subprocess.run, [*git, "remove", "--force", str(tree)], check=False)
            before = balancer(tree, args.concurrency, prefix="bench-haproxy-old-")
            old, _, old_via = stack.enter_context(before)
            columns.append((f"balancer at {args.compare[:8]}", old_via, old.pid))
        res = measure(columns, args)
    names = [c[0] for c in columns]
    print(
        f"one trivial umbridge server (models/testmodel.py, concurrency {args.concurrency}); {version}, "
        f"nbthread 1, leastconn, http-reuse always, maxconn {args.concurrency} to the server"
    )
    print(
        f"{args.seconds:g} s per phase, {args.rounds} round{'s' * (args.rounds != 1)} (column order "
        f"alternating), {os.cpu_count()} CPUs, load generator: bench/_load.py (its own process, aiohttp "
        "keep-alive); "
        f"balancer's loop: {'uvloop (asyncio its own column)' if uvloop else 'asyncio (no uvloop)'}; "
        "figures: range over rounds"
    )
    print()
    print("\n".join(table(res, names, args.inflight)))
    print()
    print("\n".join(verdicts(res, args.inflight)))
    print(f"wall {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything started is stopped by then
        sys.exit("bench: interrupted")
