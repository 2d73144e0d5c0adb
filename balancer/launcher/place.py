"""Where this launcher runs: its job's and server's ids, a free port, the host name the balancer
should call, and its own log (stderr, shared with the model's) with the model's last lines in it.
What the scheduler's job script and the environment say, read in one place."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import sys
from urllib.parse import urlparse

from balancer.launcher.contract import ENV_JOB_ID, ENV_SERVER_ID, ENV_TASK_INDEX

TAIL_LINES = 3  # the model's last stderr lines sent with a failed start's report
TAIL_BYTES = 4096
OWN_LINE = re.compile(r"\[(launch|usage) \d\d:\d\d:\d\d\] ")  # the launcher's lines, not the model's


def own_log() -> tuple[str | None, list[str]]:
    """This launcher's log file (its stderr, shared with the model's, as every backend sets it up)
    and the model's last lines in it: a failed start's report names both, so the user sees the
    model's own error and where the rest is. (None, []) where stderr is no regular file."""
    try:
        if not os.path.isfile(f"/proc/self/fd/{sys.stderr.fileno()}"):
            return None, []
        path = os.readlink(f"/proc/self/fd/{sys.stderr.fileno()}")
        with open(f"/proc/self/fd/{sys.stderr.fileno()}", "rb") as f:
            start = max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES)
            f.seek(start)
            text = f.read(TAIL_BYTES).decode(errors="replace")
    except (OSError, ValueError):
        return None, []
    lines = text.splitlines()[1 if start else 0 :]  # a cut first line is no line
    lines = [ln.rstrip() for ln in lines if ln.strip() and not OWN_LINE.match(ln)]
    return path, [ln[:300] for ln in lines[-TAIL_LINES:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def job_id() -> str:
    """The job's id as its scheduler writes it (``7_0``, ``7``, ``12.0``), exported by the backend's
    job script; this process's pid where no backend set one (the local backend's job id)."""
    return os.environ.get(ENV_JOB_ID) or str(os.getpid())


def server_id() -> str:
    """One id, or a comma list (job arrays, several servers per job) indexed by the task index the
    backend's job script exports."""
    ids = [x for x in os.environ.get(ENV_SERVER_ID, "").split(",") if x]
    if len(ids) <= 1:
        return ids[0] if ids else ""
    return ids[int(os.environ.get(ENV_TASK_INDEX) or 0)]


def advertised_host(balancer_url: str) -> str:
    """The address the balancer should use: loopback for a local balancer, else our host name."""
    if os.environ.get("UMBRIDGE_BALANCER_ADVERTISE_HOST"):
        return os.environ["UMBRIDGE_BALANCER_ADVERTISE_HOST"]
    host = urlparse(balancer_url).hostname or ""
    with contextlib.suppress(ValueError):
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return "127.0.0.1"
    return socket.getfqdn()
