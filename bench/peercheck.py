"""What the owner-only check costs per new connection, with many sockets open (a login node).

1. The lookup alone, for one connection: netlink sock_diag (one socket asked for by its address
   pair) against /proc/net/tcp (every socket read and parsed), median of many, with no extra
   sockets and then with ``--sockets`` idle loopback connections open (twice as many sockets:
   this process holds the accepted ends, a child the client ends; if the machine allows fewer,
   the count used is printed).
2. The whole cost of a new connection through the real frontend: connect, one ``GET /Info``,
   answer, close; against two listeners in one server process, one with the check and one
   without, measured side by side (alternating) so machine noise hits both alike. The server
   also times the check itself.

    .venv/bin/python bench/peercheck.py [--sockets 10000] [--rounds 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from balancer.http.messages import HttpLimits, Request, json_reply  # noqa: E402
from balancer.http.peer import NetlinkLookup, proc_uid  # noqa: E402
from balancer.http.router import Router  # noqa: E402
from balancer.http.server import FrontServer  # noqa: E402
from balancer.observe.events import EventBus  # noqa: E402
from balancer.ops.access import PeerGate  # noqa: E402


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for lim in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim, lim))
            return lim
        except (ValueError, OSError):
            continue
    return soft


def open_connections(n: int) -> tuple[list[socket.socket], subprocess.Popen[bytes], int]:
    """``n`` idle loopback connections: this process accepts, a child holds the client ends (one
    process may not hold both ends of 10,000 under a 20,000 descriptor limit)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    holder = (
        "import socket, sys\n"
        f"s = [socket.create_connection(('127.0.0.1', {ls.getsockname()[1]})) for _ in range({n})]\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE)
    socks = [ls]
    try:
        for _ in range(n):
            socks.append(ls.accept()[0])
    except OSError as exc:
        print(f"  could accept only {len(socks) - 1} connections: {exc}")
    return socks, child, len(socks) - 1


def median_us(fn: object, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def lookups(label: str) -> tuple[float, float]:
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        with socket.create_connection(ls.getsockname()):
            a, _ = ls.accept()
            with a:
                local, peer = a.getsockname(), a.getpeername()
                nl = NetlinkLookup()
                assert nl.uid(peer, local) == os.geteuid() == proc_uid(peer, local)
                t_nl = median_us(lambda: nl.uid(peer, local), 3000)
                t_proc = median_us(lambda: proc_uid(peer, local), 30)
                nl.close()
    rows = sum(1 for _ in open("/proc/net/tcp")) - 1 + sum(1 for _ in open("/proc/net/tcp6")) - 1
    print(
        f"  {label}: {rows} rows in /proc/net/tcp{{,6}}; netlink {t_nl:.1f} us, /proc {t_proc:.0f} us "
        f"({t_proc / t_nl:.0f}x)"
    )
    return t_nl, t_proc


# -- the server process: two frontends, with and without the check ---------------------------
async def serve() -> None:
    check_s: list[float] = []
    gate = PeerGate(EventBus())

    def timed(transport: object) -> object:
        t = time.perf_counter()
        r = gate(transport)  # type: ignore[arg-type]
        check_s.append(time.perf_counter() - t)
        return r

    async def info(req: Request) -> object:
        return json_reply({"protocolVersion": 1.0, "models": ["forward"]})

    async def stats(req: Request) -> object:
        med = statistics.median(check_s) * 1e6 if check_s else None
        return json_reply({"check_us": med, "n": len(check_s)})

    r = Router()
    r.add("GET", "/Info", info)
    r.add("GET", "/stats", stats)
    on = FrontServer(r, HttpLimits(), admit=timed)  # type: ignore[arg-type]
    off = FrontServer(r, HttpLimits())
    ports = (await on.listen("127.0.0.1", 0), await off.listen("127.0.0.1", 0))
    print(f"{gate.lookup.method} {ports[0]} {ports[1]}", flush=True)
    await asyncio.get_running_loop().create_future()


def one_connection(port: int, path: bytes = b"/Info") -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    return out


def per_connection(rounds: int, label: str) -> None:
    p = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        method, on, off = p.stdout.readline().split()
        on_port, off_port = int(on), int(off)
        assert b" 200 " in one_connection(on_port) and b" 200 " in one_connection(off_port)
        t_on, t_off = [], []
        for i in range(rounds):
            for port, acc in ((on_port, t_on), (off_port, t_off))[:: 1 if i % 2 else -1]:
                t = time.perf_counter()
                one_connection(port)
                acc.append(time.perf_counter() - t)
        stats = one_connection(off_port, b"/stats").split(b"\r\n\r\n", 1)[1].decode()
        m_on, m_off = statistics.median(t_on) * 1e6, statistics.median(t_off) * 1e6
        print(
            f"  {label}: connect + GET /Info + close, median of {rounds}: check on {m_on:.0f} us, "
            f"off {m_off:.0f} us (+{m_on - m_off:.0f} us, {m_on / m_off:.3f}x); "
            f"the check itself ({method}) in the server: {stats}"
        )
    finally:
        p.kill()
        p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sockets", type=int, default=10000, help="idle loopback connections to hold open")
    ap.add_argument("--rounds", type=int, default=3000, help="connections per listener")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    print(f"{os.cpu_count()} cores, Linux {os.uname().release}")
    lookups("no extra sockets")
    per_connection(args.rounds, "no extra sockets")
    raise_nofile(args.sockets + 1024)
    socks, child, n = open_connections(args.sockets)
    print(f"  {n} idle loopback connections open ({2 * n} sockets)")
    lookups(f"{n} connections open")
    per_connection(args.rounds, f"{n} connections open")
    for s in socks:
        s.close()
    child.kill()
    child.wait()


if __name__ == "__main__":
    main()
