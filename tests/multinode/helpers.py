"""What the multi-node tests share: a balancer on the login side of the test cluster, the official
client under load, and HTTP requests made from inside a compute node's namespace."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import umbridge

from tests.helpers import BalancerProc, reap, test_model_spec
from tests.multinode.fixture import MultiNodeCluster

LEASE_S = 3.0  # short: a lost node's servers are given up within seconds


def spec(n: int, **kw: Any) -> dict[str, Any]:
    """``n`` servers of 2 CPUs: on nodes of 2 CPUs, one server per node."""
    base = test_model_spec(models=["forward"], min_servers=n, max_servers=n, idle_timeout_s=600)
    base["resources"] = {"cpus": 2}
    base.update(kw)
    return base


def start(mn: MultiNodeCluster, tmp: Path, servers: list[dict[str, Any]], **kw: Any) -> BalancerProc:
    """A SLURM balancer on the login side: the control listener on the login node's cluster
    address, where the launchers in the compute namespaces reach it."""
    opts: dict[str, Any] = {"scheduler": "slurm", "control_host": mn.login_addr, "lease_s": LEASE_S}
    opts.update(kw)
    return BalancerProc(tmp, servers, env=mn.env, **opts)


@contextmanager
def balancer(
    mn: MultiNodeCluster, tmp: Path, servers: list[dict[str, Any]], **kw: Any
) -> Iterator[BalancerProc]:
    b = start(mn, tmp, servers, **kw)
    try:
        yield b
    finally:
        reap([b], [])


def ready_servers(b: BalancerProc) -> dict[str, dict[str, Any]]:
    """Server id -> its ``server.registered`` event, for the servers that are ready and not gone."""
    gone = {e["server"] for e in b.events("server.failed") + b.events("server.stopped")}
    ready = {e["server"] for e in b.events("server.ready")} - gone
    return {e["server"]: e for e in b.events("server.registered") if e["server"] in ready}


def hosts_of(b: BalancerProc) -> dict[str, str]:
    """Ready server id -> the host in its URL."""
    return {sid: str(urlsplit(e["url"]).hostname) for sid, e in ready_servers(b).items()}


class Load:
    """``threads`` threads calling ``forward`` through the official client until stopped; every
    answer is checked (2 * x) and every failure kept."""

    def __init__(self, url: str, threads: int = 6) -> None:
        self.url = url
        self.answered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        model = umbridge.HTTPModel(self.url, "forward")
        k = 0
        while not self._stop.is_set():
            x = float(i * 100_000 + k)
            k += 1
            try:
                out = model([[x]])
                ok = out == [[2.0 * x]]
            except Exception as exc:  # the test reports every failure, not the first
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self.answered += 1
                if not ok:
                    self.errors.append(f"wrong answer for {x}: {out}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 60) -> None:
        """Stop and wait for every call in flight to be answered (a held call fails the test)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        held = [t.name for t in self._threads if t.is_alive()]
        assert not held, f"calls still unanswered after {timeout} s: {held}"


PY_REQUEST = """
import json, sys, urllib.request, urllib.error
url, method, body, headers = sys.argv[1], sys.argv[2], sys.argv[3].encode() or None, json.loads(sys.argv[4])
req = urllib.request.Request(url, data=body, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
except OSError as e:
    print(json.dumps([0, type(e).__name__ + ": " + str(e)]))
"""


def request_from(
    mn: MultiNodeCluster, node: str, url: str, method: str = "GET", body: str = "", **headers: str
) -> tuple[int, str]:
    """One HTTP request made from inside ``node``'s namespace: (status, body); status 0 with the
    error when no connection was made."""
    res = mn.in_node(node, [sys.executable, "-c", PY_REQUEST, url, method, body, json.dumps(headers)])
    assert res.returncode == 0, res.stderr
    status, text = json.loads(res.stdout)
    return int(status), str(text)
