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
    """The address the balancer should use: loopback for a balancer on this machine, else this
    node's address on the route to the balancer (the source address the kernel would pick for it),
    which the balancer can route back to. Not the host name: a node's name often resolves to
    127.0.1.1, to another interface than the cluster network's, or (in a container or a network
    namespace sharing the host's name) to another machine's address. The name only where no route
    is known."""
    if os.environ.get("UMBRIDGE_BALANCER_ADVERTISE_HOST"):
        return os.environ["UMBRIDGE_BALANCER_ADVERTISE_HOST"]
    u = urlparse(balancer_url)
    host = u.hostname or ""
    with contextlib.suppress(ValueError):
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return "127.0.0.1"
    return route_source(host, u.port or 80) or socket.getfqdn()


def route_source(host: str, port: int) -> str | None:
    """This machine's address on the route to ``host``: a UDP socket's ``connect`` picks the route
    and source address and sends nothing. None when ``host`` does not resolve or has no route."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return str(s.getsockname()[0]).partition("%")[0]
    except (OSError, IndexError, UnicodeError):
        return None


def bind_address(host: str) -> str | None:
    """``host`` when it is an IP address of this machine (a model server can listen there and
    nowhere wider), else None (a name, or an address another machine or a NAT holds)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except (ValueError, OSError):
        return None
    return host


def probe_host(bind: str | None) -> str:
    """Where the launcher asks its model's ``/Info``: the address it listens on (``UMBRIDGE_HOST``),
    loopback when that is unset or every interface; in URL form (IPv6 in brackets)."""
    if not bind or bind in ("0.0.0.0", "::", "*"):
        return "127.0.0.1"
    return f"[{bind}]" if ":" in bind else bind
