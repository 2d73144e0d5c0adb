"""The operator commands' side of the API: find the running balancer, call it with its token.

The balancer writes its URL and token into its run directory (0700) and enters itself in the
user's registry of running balancers (``control/registry.py``); a command takes the one running
balancer from there, from any directory (or ``--pid``, ``--run-dir``, or ``--url`` with
``UMBRIDGE_BALANCER_TOKEN``; with none registered, the newest run under ``.balancer-runs``), so its
owner types no token. The token goes only to a URL given on the command line or read from a
file we own that nobody else can write, in a directory only we can enter: a run directory another
user planted is never used (``newest_run_dir`` skips it, ``--run-dir`` refuses it). Every failure,
a malformed answer of the API included, is a ``CliError``: one readable line, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
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

from balancer.control import registry
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


def target_args(q: argparse.ArgumentParser, json_flag: bool = True) -> None:
    q.add_argument(
        "--run-dir", help="the balancer's run directory (default: the one running, see `balancer ls`)"
    )
    q.add_argument("--pid", type=int, help="the running balancer with this pid (see `balancer ls`)")
    q.add_argument("--url", help="the balancer's URL (token from UMBRIDGE_BALANCER_TOKEN or the run dir)")
    if json_flag:
        q.add_argument("--json", action="store_true", help="print the API's JSON answer")


def describe(e: registry.Entry) -> str:
    return f"pid {e.pid} {e.url} ({e.config or 'no config file'})"


def running_entry(args: argparse.Namespace) -> registry.Entry:
    """The registry's entry ``args`` name (``--pid``, ``--run-dir``), or the only one running; a
    CliError that lists them when several run and none is named."""
    entries = registry.running()
    pid, run_dir = getattr(args, "pid", None), getattr(args, "run_dir", None)
    if pid is not None:
        entries = [e for e in entries if e.pid == pid]
    if run_dir:
        entries = [e for e in entries if Path(e.run_dir) == Path(run_dir).resolve()]
    if len(entries) == 1:
        return entries[0]
    if not entries:
        which = f" with pid {pid}" if pid is not None else f" in {run_dir}" if run_dir else ""
        raise CliError(f"no running balancer{which} (`balancer ls` lists the running ones)")
    listed = "; ".join(describe(e) for e in entries)
    raise CliError(f"{len(entries)} balancers are running, say which with --pid or --run-dir: {listed}")


def find_run_dir(args: argparse.Namespace) -> Path | None:
    """The run directory of the one running balancer (the registry), else the newest run here."""
    url = (getattr(args, "url", None) or "").rstrip("/")
    if getattr(args, "pid", None) is not None or (registry.running() and not url):
        return Path(running_entry(args).run_dir)
    for e in registry.running() if url else ():
        if e.url.rstrip("/") == url:  # --url without a token: the token of that balancer's run
            return Path(e.run_dir)
    return newest_run_dir()  # a balancer that could not write the registry


def target(args: argparse.Namespace) -> tuple[str, str]:
    """(URL, token) of the balancer ``args`` name, or of the one running balancer of ours."""
    run_dir = Path(args.run_dir) if args.run_dir else None
    token = os.environ.get("UMBRIDGE_BALANCER_TOKEN", "")
    url = args.url
    if run_dir is None and not (url and token):
        run_dir = find_run_dir(args)
    if run_dir is not None and not (url and token):
        why = not_private(run_dir)
        if why:
            raise CliError(f"will not use the run directory {run_dir}: {why}")
        url = url or read_private(run_dir / "url", secret=False)
        token = token or read_private(run_dir / "token", secret=True)
    if not url:
        raise CliError("no balancer found: none is running (`balancer ls`); give --run-dir or --url")
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
        reason = exc.strerror
        if exc.errno == errno.ENOENT and path.name == "url":  # removed when it stopped or failed to start
            reason = "no balancer runs from it (it stopped, or its start failed; see `balancer ls`)"
        raise CliError(f"cannot read the balancer's {path.name} in {path.parent}: {reason}") from None
    try:
        return data.decode().strip()
    except UnicodeDecodeError:
        raise CliError(f"will not use {path}: not text") from None


def newest_run_dir() -> Path | None:
    """The newest run directory under ``.balancer-runs`` that is ours alone (others are skipped), and
    not of a dead balancer (a failed start leaves no ``url``)."""
    root = Path(".balancer-runs")
    dirs = []
    for d in root.glob("*") if root.is_dir() else ():
        with contextlib.suppress(OSError, CliError):
            e = registry.read_entry(d / registry.RUN_FILE)
            if e is not None and not registry.alive(e):
                continue  # its balancer was killed: never taken for a running one
            if not_private(d) is None:
                dirs.append((os.stat(d / "url", follow_symlinks=False).st_mtime, d))
    return max(dirs)[1] if dirs else None


def fig(v: float) -> str:
    """A figure as people read it: 0.0566747 -> 0.06, 3.0 -> 3, 12.34 -> 12.3, 1234.5 -> 1234."""
    digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2
    text = f"{v:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def call(
    url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30
) -> dict[str, Any]:
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
        with urllib.request.urlopen(req, timeout=timeout) as resp:
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
