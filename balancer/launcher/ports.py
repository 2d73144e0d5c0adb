"""Which TCP ports a model server's process tree listens on: at the probe time this tells a model
that listens on the wrong port (a hard-coded 4242 instead of ``$PORT``, a common first mistake),
which fails at once, from one that is still loading, which gets the whole start-up timeout."""

from __future__ import annotations

import psutil

_ERRORS = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError)


def listening_ports(pid: int) -> set[int] | None:
    """The TCP ports ``pid`` and its descendants listen on; None when that cannot be read."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except _ERRORS:
        return None
    ports: set[int] = set()
    for p in procs:
        try:
            conns = p.net_connections(kind="tcp")
        except _ERRORS:
            return None
        ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr)
    return ports
