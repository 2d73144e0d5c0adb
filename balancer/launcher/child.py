"""The model server's process: started before the launcher imports the rest of itself.

A model takes a few hundred ms to start, and nothing of the launcher's own work (asyncio alone is
~25 ms of imports) is needed before it runs: ``python -m balancer.launcher -- CMD`` starts it first,
with this module's standard-library needs only (sockets, ``subprocess``), and the launcher then
waits for it, polls its ``/Info`` and registers it. The environment the model gets: ``PORT`` (a
free port), ``UMBRIDGE_SOCKET`` where the server is to listen on a Unix socket, ``UMBRIDGE_HOST``
(the address the balancer calls it on, nowhere wider; models/serving.py honours it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess

from balancer.launcher.contract import ENV_SOCKET, ENV_URL, MODEL_SOCKET, unix_url
from balancer.launcher.place import advertised_host, bind_address, free_port, probe_host

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the server's child before exec: its own session (the launcher ends the whole group),
    and a SIGTERM when the launcher dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Started:
    """A started model server: its process and where it is reached (a plain class: dataclasses
    would import inspect, ~5 ms, before the model starts)."""

    def __init__(
        self,
        command: list[str],
        popen: subprocess.Popen[bytes],
        port: int,
        sock: str | None,
        url: str,
        probe: str,
    ) -> None:
        self.command = command
        self.popen = popen
        self.port = port
        self.sock = sock  # the Unix socket it listens on, or None (TCP on ``port``)
        self.url = url  # where the balancer calls it
        self.probe = probe  # where the launcher asks its /Info

    @property
    def where(self) -> str:
        return f"socket {self.sock}" if self.sock else f"port {self.port}"


def start(command: list[str]) -> Started:
    """Start ``command`` as the model server (raises ``OSError`` when it cannot be executed)."""
    port = free_port()
    balancer = os.environ.get(ENV_URL, "").rstrip("/")
    host = advertised_host(balancer) if balancer else "127.0.0.1"
    env = dict(os.environ, PORT=str(port))
    sock = os.environ.get(ENV_SOCKET) or None  # isolate = "socket": no port for other users to reach
    if sock:
        env[MODEL_SOCKET] = sock
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)  # a stale socket of an earlier server would look ready
    bind = bind_address(host)  # the model listens where the balancer calls it, nowhere wider:
    if bind:  # loopback for a balancer on this machine, else our address on its route
        env.setdefault("UMBRIDGE_HOST", bind)  # (models/serving.py)
    popen = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    if sock:
        url = probe = unix_url(sock)
    else:
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"  # IPv6 in brackets
        probe = f"http://{probe_host(env.get('UMBRIDGE_HOST'))}:{port}"
    return Started(command, popen, port, sock, url, probe)


def start_from_argv(argv: list[str]) -> Started | OSError | None:
    """``-- CMD ...`` (what job scripts run): the model started, or why it could not be; None for
    any other command line (help, a usage error), which the launcher's parser answers."""
    if len(argv) < 2 or argv[0] != "--":
        return None
    try:
        return start(argv[1:])
    except OSError as exc:
        return exc
