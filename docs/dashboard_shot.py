"""Make ``docs/dashboard.png`` (1280x800) and ``docs/dashboard-1920.png`` (1920x1080): the
dashboard after a short, varied campaign.

A real balancer with the test model (three servers at most, idle ones stop after
15 s), a spec whose model cannot start (it is held, with the model's reason), and a synthetic
three-day capacity history (so a forecast is trained and drawn against the observed idle CPUs), a
load that rises and falls, a few calls of an unknown model (failures), then a pause in which servers
stop. Headless Chromium from Debian (``tests/chromium.py`` installs it), driven by Playwright.

    .venv/bin/python docs/dashboard_shot.py [--out docs/dashboard.png]   # ~80 s
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def history(path: Path, days: float = 3.0, step_s: float = 300.0) -> None:
    """Idle CPUs of a 2-CPU machine that is busy in the working day, every 5 minutes."""
    from balancer.capacity.history import History
    from balancer.capacity.sample import CapacitySample

    now = time.time()
    samples = []
    t = now - days * 86400
    i = 0
    while t < now - step_s:
        day = (t % 86400) / 86400
        idle = 1.1 + 0.8 * math.sin(2 * math.pi * (day - 0.3)) + 0.1 * math.sin(i * 1.7)
        samples.append(CapacitySample(t=t, source="local", partition="", total_cpus=2.0,
                                      idle_cpus=max(0.0, min(2.0, idle))))  # fmt: skip
        t += step_s
        i += 1
    with History(path) as h:
        h.add(samples)


def load(url: str, model_name: str, stop: threading.Event) -> None:
    import umbridge

    model = umbridge.HTTPModel(url, model_name)
    while not stop.is_set():
        model([[1.0]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    args = ap.parse_args()
    import requests
    from playwright.sync_api import sync_playwright

    from tests.chromium import VIEWPORT, ensure_chromium
    from tests.helpers import BalancerProc, test_model_spec, wait_until

    tmp = Path(tempfile.mkdtemp(prefix="dashboard-shot-"))
    hist = tmp / "capacity.sqlite"
    history(hist)
    spec = test_model_spec(min_servers=1, max_servers=3, idle_timeout_s=15, env={"TEST_DELAY": "30"})
    crash = "import sys; sys.exit('no such input file: mesh.h5')"  # a model that cannot start: held
    broken = {"name": "broken", "command": [sys.executable, "-c", crash], "min_servers": 1, "max_servers": 1}
    forecast = {"history": str(hist), "min_history_s": 86400.0, "collect_interval_s": 5.0, "grid_s": 300.0,
                "horizon_s": 6 * 3600.0, "cooldown_s": 5.0}  # fmt: skip
    b = BalancerProc(tmp, [spec, broken], tables={"forecast": forecast})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(ensure_chromium()), headless=True,
                args=["--no-sandbox"] if os.geteuid() == 0 else [],
            )  # fmt: skip
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.goto(b.url + "/dashboard")
            page.locator("#servers tr[data-state=ready]").first.wait_for()

            def phase(threads: int, seconds: float) -> None:
                stop = threading.Event()
                ts = [threading.Thread(target=load, args=(b.url, "forward", stop)) for _ in range(threads)]
                for t in ts:
                    t.start()
                page.wait_for_timeout(seconds * 1000)  # a campaign's shape, not a synchronisation
                stop.set()
                for t in ts:
                    t.join()

            phase(2, 12)
            phase(6, 22)
            for _ in range(3):  # an unknown model: failed calls
                requests.post(b.url + "/Evaluate", json={"name": "nosuch", "input": [[1.0]]}, timeout=10)
            phase(1, 10)
            wait_until(lambda: b.find("server.stopped"), 60, what="an idle server stops")
            page.wait_for_timeout(3000)
            page.screenshot(path=args.out)
            page.set_viewport_size({"width": 1920, "height": 1080})
            page.wait_for_timeout(1500)  # the charts' resize and one more message
            page.screenshot(path=args.out.removesuffix(".png") + "-1920.png")
            browser.close()
    finally:
        b.stop()
    print(f"wrote {args.out} and its -1920 twin")


if __name__ == "__main__":
    main()
