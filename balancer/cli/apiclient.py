"""The operator commands' side of the API: find the running balancer, call it with its token.

The balancer writes its URL and token into its run directory (0700); a command takes the newest
run under ``.balancer-runs`` (or ``--run-dir``, or ``--url`` with ``UMBRIDGE_BALANCER_TOKEN``), so
its owner types no token. The token goes only to a URL given on the command line or read from a
file we own that nobody else can write, in a directory only we can enter: a run directory another
user planted is never used (``newest_run_dir`` skips it, ``--run-dir`` refuses it). Every failure,
a malformed answer of the API included, is a ``CliError``: one readable line, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from balancer.launcher.contract import UnsafeFile, dir_problem, read_bounded

EXIT_USAGE = 2
MAX_ANSWER = 64 << 20  # bytes of one API answer; /api/servers of 10,000 servers is a few MiB
MAX_RUN_FILE = 64 << 10  # a run directory's url or token file


class CliError(Exception):
    pass


# One command: (args, url, token) -> (the API's answer, the screen that shows it).
Command = Callable[[argparse.Namespace, str, str], tuple[Any, str]]


def command(fn: Command) -> Callable[[argparse.Namespace], int]:
    """``fn`` as an argparse ``func``: finds the balancer, prints its screen (or JSON with ``--json``);
    a ``CliError`` or a malformed answer is one line on stderr and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        url = "?"
        try:
            url, token = target(args)
            doc, text = fn(args, url, token)
        except CliError as exc:
            print(f"balancer: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # The screen of an answer without the keys or types it needs: one line, no traceback.
            why = f"{type(exc).__name__}: {exc}"[:200]
            print(f"balancer: error: malformed answer from the balancer at {url}: {why}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(doc, indent=2) if args.json else text)
        return 0

    return run


def target_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--run-dir", help="the balancer's run directory (default: newest in .balancer-runs)")
    q.add_argument("--url", help="the balancer's URL (token from UMBRIDGE_BALANCER_TOKEN or the run dir)")
    q.add_argument("--json", action="store_true", help="print the API's JSON answer")


def target(args: argparse.Namespace) -> tuple[str, str]:
    """(URL, token) of the balancer ``args`` name, or of the newest run of ours."""
    run_dir = Path(args.run_dir) if args.run_dir else newest_run_dir()
    token = os.environ.get("UMBRIDGE_BALANCER_TOKEN", "")
    url = args.url
    if run_dir is not None and not (url and token):
        why = not_private(run_dir)
        if why:
            raise CliError(f"will not use the run directory {run_dir}: {why}")
        url = url or read_private(run_dir / "url", secret=False)
        token = token or read_private(run_dir / "token", secret=True)
    if not url:
        raise CliError("no balancer found: give --run-dir or --url")
    if not token:
        raise CliError("no token: set UMBRIDGE_BALANCER_TOKEN or give --run-dir")
    return url.rstrip("/"), token


def not_private(d: Path) -> str | None:
    """Why the directory ``d`` is not ours alone (None when it is): another user could have planted
    its files, or could read the token. A CliError when it cannot be looked at."""
    try:
        os.stat(d)
    except OSError as exc:  # as before: the url file cannot be read
        raise CliError(f"cannot read the balancer's url in {d}: {exc.strerror}") from None
    return dir_problem(d, forbid=0o077)


def read_private(path: Path, secret: bool) -> str:
    """A run directory's small file, only if it is a regular file of ours that nobody else can write
    (nor read: ``secret``); a symlink, a FIFO or a huge file is refused without blocking."""
    only = "read" if secret else "write"
    try:
        data = read_bounded(path, MAX_RUN_FILE, owned=True, forbid=0o077 if secret else 0o022)
    except UnsafeFile as exc:
        why = (
            str(exc)
            if str(exc).startswith("larger")
            else f"not a regular file of ours that only we can {only}"
        )
        raise CliError(f"will not use {path}: {why}") from None
    except OSError as exc:
        raise CliError(f"cannot read the balancer's {path.name} in {path.parent}: {exc.strerror}") from None
    try:
        return data.decode().strip()
    except UnicodeDecodeError:
        raise CliError(f"will not use {path}: not text") from None


def newest_run_dir() -> Path | None:
    """The newest run directory under ``.balancer-runs`` that is ours alone (others are skipped)."""
    root = Path(".balancer-runs")
    dirs = []
    for d in root.glob("*") if root.is_dir() else ():
        with contextlib.suppress(OSError, CliError):
            if not_private(d) is None:
                dirs.append((os.stat(d / "url", follow_symlinks=False).st_mtime, d))
    return max(dirs)[1] if dirs else None


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
            data = resp.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        try:
            doc = json.loads(exc.read(MAX_ANSWER))
            err = doc.get("error", doc)
            msg = err.get("message", exc.reason) if isinstance(err, dict) else exc.reason
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            msg = exc.reason
        raise CliError(f"the balancer refused: {exc.code} {str(msg)[:500]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the balancer at {url}: {reason}") from None
    except http.client.HTTPException as exc:  # a truncated answer, a bad status line
        raise CliError(f"malformed answer from the balancer at {url}: {type(exc).__name__}") from None
    if len(data) > MAX_ANSWER:
        raise CliError(f"malformed answer from the balancer at {url}: larger than {MAX_ANSWER} bytes")
    try:
        doc = json.loads(data or b"{}")
    except ValueError as exc:  # not JSON, not UTF-8
        raise CliError(f"malformed answer from the balancer at {url}: not JSON ({str(exc)[:100]})") from None
    if not isinstance(doc, dict):
        raise CliError(
            f"malformed answer from the balancer at {url}: a JSON {type(doc).__name__}, not an object"
        )
    return doc
