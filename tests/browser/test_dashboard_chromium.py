"""The dashboard page in headless Chromium against a real balancer process (its files and event
stream in-process: inproc/test_dashboard)."""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any

import requests
import umbridge

from tests.chromium import chromium, new_page  # noqa: F401 - the fixture
from tests.helpers import test_model_spec, wait_until


def _load(url: str, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        model = umbridge.HTTPModel(url, "forward")
        x = 0.0
        while not stop.is_set():
            assert model([[x]]) == [[2 * x]]
            x += 1
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _status(b: Any) -> dict[str, Any]:
    r = requests.get(b.url + "/api/status", headers={"Authorization": f"Bearer {b.token()}"}, timeout=5)
    r.raise_for_status()
    return r.json()


def _number(page: Any, selector: str) -> float:
    return float(page.inner_text(selector).replace(",", "").split()[0])


def _box(page: Any, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return box


def _screens(page: Any, run_dir: Any) -> tuple[Any, Any]:
    """Both screenshots (1280x800, then 1920x1080): the charts grow with the screen, every panel
    stays on it."""
    small = run_dir / "dashboard.png"
    page.screenshot(path=str(small))
    lat = _box(page, "#c-lat")
    page.set_viewport_size({"width": 1920, "height": 1080})
    # the grid reflows at once; the chart follows on its ResizeObserver's next frame
    wait_until(lambda: _box(page, "#c-lat canvas")["width"] > lat["width"] * 1.2, 10, what="charts grow")
    big = _box(page, "#c-lat")
    assert big["height"] > lat["height"] * 1.2, (lat, big)
    for panel in ("#p-failures", "#p-decisions", "#p-specs"):  # nothing below the fold
        box = _box(page, panel)
        assert box["y"] + box["height"] <= 1080 + 1, (panel, box)
    wide = run_dir / "dashboard-1920.png"
    page.screenshot(path=str(wide))
    page.set_viewport_size({"width": 1280, "height": 800})
    return small, wide


def test_dashboard_in_headless_chromium(start_balancer: Any, chromium: Any) -> None:  # noqa: F811
    # The page's policy forbids eval, so the waits read the page through Playwright's locators
    # (its own isolated world), never page.wait_for_function.
    spec = test_model_spec(min_servers=1, max_servers=2, env={"TEST_DELAY": "20"})
    b = start_balancer([spec])
    page = new_page(chromium)
    page.goto(b.url + "/dashboard")
    ready = page.locator("#servers tr[data-state=ready]")
    ready.first.wait_for()
    assert page.inner_text("#conn") == "live"
    before = _number(page, "#t-calls")
    stop, errors = threading.Event(), []
    load = [threading.Thread(target=_load, args=(b.url, stop, errors)) for _ in range(4)]
    for t in load:
        t.start()
    try:
        # The counters rise while the load runs; the waiting calls start a second server.
        wait_until(lambda: _number(page, "#t-calls") >= before + 100, 30, what="calls counter")
        ready.nth(1).wait_for()
        wait_until(lambda: all(float(c) > 0 for c in page.locator("#servers td.calls").all_inner_texts()), 30)
        wait_until(lambda: page.inner_text("#t-p50").endswith("ms"), 10, what="latency tile")
        page.locator("#decisions li:not(.empty)").nth(1).wait_for()
        # One spec, active, with its cost so far; the cost tile adds the servers' hours up.
        assert page.inner_text("#specs tr[data-spec] .badge") == "active"
        assert float(page.inner_text("#specs tr[data-spec] td:nth-child(4)")) > 0
        assert _number(page, "#t-cost") > 0
        # A local run without a forecast: no capacity panel; loopback hosts read as one name.
        assert not page.locator("#p-cap").is_visible()
        assert set(page.locator("#servers td:nth-child(5)").all_inner_texts()) == {"localhost"}
        # Latency on a log axis: tick labels in ms (or s), never a bare 0.
        labels = (page.get_attribute("#c-lat", "data-ticks") or "").split("|")
        assert all(t.endswith(("ms", " s", "µs")) for t in labels), labels
        shot, wide = _screens(page, b.run_dir)
    finally:
        stop.set()
        for t in load:
            t.join(30)
    assert not errors, errors
    assert shot.stat().st_size > 10_000 and wide.stat().st_size > 10_000
    if os.environ.get("DASHBOARD_SCREENSHOT"):  # e.g. docs/dashboard.png; the 1920 one beside it
        out = os.environ["DASHBOARD_SCREENSHOT"]
        shutil.copyfile(shot, out)
        shutil.copyfile(wide, out.removesuffix(".png") + "-1920.png")
    assert _status(b)["dashboard"]["tabs"] == 1
    bad = [m for m in page.console if m[0] == "error"]
    assert not bad and not page.errors, (bad, page.errors)
    # A closed tab costs nothing: the feed leaves the bus, nothing is left behind, no error.
    page.context.close()
    wait_until(lambda: _status(b)["dashboard"] == {"tabs": 0, "opened": 1, "subscribed": False}, 10)
    assert not b.events("balancer.error")
    # The balancer stops: after a few failed reconnects the page says so, with the last update.
    page = new_page(chromium)
    page.goto(b.url + "/dashboard")
    page.locator("#conn.conn-live").wait_for()
    page.locator("#clock:has-text('updated')").wait_for()
    assert b.stop() == 0
    page.locator("#conn.conn-dead").wait_for(timeout=20_000)
    assert page.inner_text("#conn") == "balancer stopped"
    assert page.inner_text("#clock").startswith("last update ")
