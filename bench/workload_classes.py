"""Run each example model under a real balancer and print its prior against its measured class.

``python bench/workload_classes.py [--seconds 15] [--interval 0.5] [model ...]``: one balancer with
one spec per model (one server each, monitor_interval_s small, lease_s 2 so samples arrive soon), a
client thread per model calling it in a loop for ``--seconds`` (x = 1; eigen: N = 300); then each
spec's ``workload.prior`` and final ``workload.classified`` from the journal, as a table.
The README's accuracy figures come from this.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import umbridge  # noqa: E402

from tests.helpers import BalancerProc, reap, wait_until  # noqa: E402

EXPECTED = {"cpu_spinner": "cpu", "mem_streamer": "memory", "io_writer": "io", "waiter": "wait",
            "testmodel": "wait", "eigen": "cpu"}  # fmt: skip
MODELS = ROOT / "models"
X = {"eigen": 300.0}  # eigen's input is its matrix size; the others scale their work by it


def spec(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"name": name, "command": [sys.executable, str(MODELS / f"{name}.py")],
                         "min_servers": 1, "max_servers": 1}  # fmt: skip
    if env:
        s["env"] = env
    return s


def drive(url: str, model: str, until: float, x: float, errors: list[str]) -> None:
    m = umbridge.HTTPModel(url, model)
    while time.monotonic() < until:
        try:
            m([[x]])
        except Exception as exc:  # reported in the table, not raised from a thread
            errors.append(f"{model}: {exc}")
            return


def run(tmp: Path, names: list[str], seconds: float, interval: float) -> list[dict[str, Any]]:
    models = {"testmodel": "forward", "eigen": "posterior"}
    env = {"testmodel": {"TEST_DELAY": "50"}}
    b = BalancerProc(tmp, [spec(n, env=env.get(n)) for n in names], monitor_interval_s=interval, lease_s=2)
    pids: list[int] = []
    try:
        wait_until(lambda: len(b.events("server.ready")) >= len(names), 60, what="servers ready")
        pids = b.server_pids()
        errors: list[str] = []
        until = time.monotonic() + seconds
        threads = [
            threading.Thread(target=drive, args=(b.url, models.get(n, n), until, X.get(n, 1.0), errors))
            for n in names
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        b.stop()  # the final verdicts are journaled at shutdown
        rows = []
        verdicts = b.events("workload.classified")
        for n in names:
            prior = b.find("workload.prior", spec=n) or {}
            last = [e for e in verdicts if e["spec"] == n and not e.get("final")]
            final = [e for e in verdicts if e["spec"] == n and e.get("final")]
            v = final[-1] if final else last[-1] if last else {}
            rows.append({"spec": n, "expected": EXPECTED.get(n), "prior": prior.get("cls"),
                         "measured": v.get("cls"), "why": v.get("why"), "figures": v.get("figures"),
                         "changes": len(last)})  # fmt: skip
        for e in errors:
            print("error:", e, file=sys.stderr)
        return rows
    finally:
        reap([b], pids)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("models", nargs="*", default=["cpu_spinner", "mem_streamer", "io_writer", "waiter"])
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = run(Path(d), a.models, a.seconds, a.interval)
    print(f"{'model':14} {'expected':9} {'prior':8} {'measured':9} why")
    for r in rows:
        cols = (r["spec"], r["expected"] or "-", r["prior"] or "-", r["measured"] or "-")
        print(f"{cols[0]:14} {cols[1]:9} {cols[2]:8} {cols[3]:9} {r['why']}")
        print(f"{'':14} {r['figures']}")
    known = [r for r in rows if r["expected"]]
    print(f"prior right: {sum(r['prior'] == r['expected'] for r in known)}/{len(known)}, "
          f"measured right: {sum(r['measured'] == r['expected'] for r in known)}/{len(known)}")  # fmt: skip


if __name__ == "__main__":
    main()
