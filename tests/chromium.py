"""Headless Chromium for dashboard tests: Debian's ``chromium`` package driven by Playwright.

Like the SLURM test cluster (``tests/slurm/fixture.py``), the browser is a Debian package that the
test setup installs with apt-get when it is missing and we are root; it skips, with the reason,
only when it cannot be had. Playwright's Python API drives it through ``executable_path``: no
browser is ever downloaded (never ``playwright install``).

``chromium`` (function scope) is the launched browser; ``new_page`` pages record their console
messages and uncaught errors in ``page.console`` and ``page.errors``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium"))
VIEWPORT = {"width": 1280, "height": 800}


class BrowserUnavailable(RuntimeError):
    """No headless Chromium can run here (not root and not installed, apt-get failed, no Playwright)."""


def ensure_chromium(timeout: float = 600.0) -> Path:
    """The Chromium binary, installed from Debian's ``chromium`` package when missing (root only)."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.geteuid() != 0:
        raise BrowserUnavailable(f"{CHROMIUM} is missing and installing the chromium package needs root")
    apt = shutil.which("apt-get")
    if apt is None:
        raise BrowserUnavailable(f"{CHROMIUM} is missing and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [apt, "install", "-y", "--no-install-recommends", "chromium"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:  # stale package lists: update once and try again
        subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=timeout)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 or not CHROMIUM.is_file():
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise BrowserUnavailable(f"apt-get install chromium failed: {' '.join(tail)}")
    return CHROMIUM


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A headless Chromium for one test (a Playwright ``Browser``). Function scope, not session:
    while Playwright's sync API is open its event loop counts as running in this thread, and every
    later test's ``asyncio.run`` would fail."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no headless browser: the playwright package is not installed (pip install playwright)")
    try:
        path = ensure_chromium()
    except BrowserUnavailable as exc:
        pytest.skip(f"no headless browser: {exc}")
    with sync_playwright() as p:
        # As root Chromium's own sandbox cannot start; the page is our own, on loopback.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=str(path), headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any) -> Any:
    """A 1280x800 page in its own context; ``page.console`` holds (type, text), ``page.errors`` the
    uncaught exceptions, as they happen."""
    ctx = browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    page.console = []
    page.errors = []
    page.on("console", lambda m: page.console.append((m.type, m.text)))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return page
