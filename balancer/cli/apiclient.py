"""The operator commands' side of the API: find the running balancer, call it with its token.

The balancer writes its URL and token into its run directory (0700); a command takes the newest
run under ``.balancer-runs`` (or ``--run-dir``, or ``--url`` with ``UMBRIDGE_BALANCER_TOKEN``), so
its owner types no token. Every failure is a ``CliError`` with one readable line.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class CliError(Exception):
    pass


# One command: (args, url, token) -> (the API's answer, the screen that shows it).
Command = Callable[[argparse.Namespace, str, str], tuple[Any, str]]


def command(fn: Command) -> Callable[[argparse.Namespace], int]:
    """``fn`` as an argparse ``func``: finds the balancer, prints its screen (or JSON with ``--json``);
    a ``CliError`` is one line on stderr and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            url, token = target(args)
            doc, text = fn(args, url, token)
        except CliError as exc:
            print(f"balancer: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(doc, indent=2) if args.json else text)
        return 0

    return run


def target_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--run-dir", help="the balancer's run directory (default: newest in .balancer-runs)")
    q.add_argument("--url", help="the balancer's URL (token from UMBRIDGE_BALANCER_TOKEN or the run dir)")
    q.add_argument("--json", action="store_true", help="print the API's JSON answer")


def target(args: argparse.Namespace) -> tuple[str, str]:
    """(URL, token) of the balancer ``args`` name, or of the newest run."""
    run_dir = Path(args.run_dir) if args.run_dir else newest_run_dir()
    token = os.environ.get("UMBRIDGE_BALANCER_TOKEN", "")
    url = args.url
    if run_dir is not None:
        try:
            url = url or (run_dir / "url").read_text().strip()
            token = token or (run_dir / "token").read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read the balancer's {Path(exc.filename).name} in {run_dir}: "
                           f"{exc.strerror}") from None  # fmt: skip
    if not url:
        raise CliError("no balancer found: give --run-dir or --url")
    if not token:
        raise CliError("no token: set UMBRIDGE_BALANCER_TOKEN or give --run-dir")
    return url.rstrip("/"), token


def newest_run_dir() -> Path | None:
    root = Path(".balancer-runs")
    dirs = [d for d in root.glob("*") if (d / "url").is_file()] if root.is_dir() else []
    return max(dirs, key=lambda d: (d / "url").stat().st_mtime) if dirs else None


def call(url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One API call; the token goes in the Authorization header (never a cookie or the URL)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    try:
        req.add_header("X-Balancer-User", getpass.getuser())  # journaled with the change
    except (KeyError, OSError):
        pass
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            doc = json.loads(exc.read())
            err = doc.get("error", doc)
            msg = err.get("message", exc.reason) if isinstance(err, dict) else exc.reason
        except (ValueError, AttributeError):
            msg = exc.reason
        raise CliError(f"the balancer refused: {exc.code} {msg}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the balancer at {url}: {reason}") from None
