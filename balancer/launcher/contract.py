"""What the balancer and the launcher on a compute node agree on: the environment variables a backend
sets around the launcher, the launcher's command line, and the registration files (``control.filereg``
on the balancer side).

A contract module: it imports nothing of the balancer, so ``python -m balancer.launcher`` loads no
configuration, policy or backend code on the compute node, and the backends import these names from
here instead of the launcher importing them from the backends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from pathlib import Path
from urllib.parse import quote, unquote

# Environment the launcher reads (set by the backend around the launcher process).
ENV_URL = "UMBRIDGE_BALANCER_URL"
ENV_TOKEN = "UMBRIDGE_BALANCER_TOKEN"
ENV_SERVER_ID = "UMBRIDGE_BALANCER_SERVER_ID"  # one id, or a comma list indexed by array task id
ENV_LEASE = "UMBRIDGE_BALANCER_LEASE_S"
ENV_STARTUP = "UMBRIDGE_BALANCER_STARTUP_TIMEOUT_S"
# The probe time: a started model that has not answered /Info by then is looked at. One listening on
# another port than $PORT fails at once; one listening on nothing yet (still loading?) is logged and
# waits for the start-up timeout. A spec's ``env`` may set it, and then a start fails at that time
# ("nothing answers /Info on port N after T s"). Unset: PROBE_S, at most the start-up timeout.
ENV_PROBE = "UMBRIDGE_BALANCER_PROBE_S"
PROBE_S = 30.0


def probe_time(startup_s: float, probe: str | None) -> float:
    """The launcher's probe time (``ENV_PROBE``) for a start-up timeout of ``startup_s``."""
    try:
        if probe:
            return min(float(probe), startup_s)
    except ValueError:
        pass
    return min(PROBE_S, startup_s)


ENV_CONCURRENCY = "UMBRIDGE_SERVER_CONCURRENCY"  # tells the model how many calls run at once
ENV_REGISTRATION_DIR = "UMBRIDGE_BALANCER_REGISTRATION_DIR"  # register through files there, not HTTP
ENV_SPEC = "UMBRIDGE_BALANCER_SPEC"  # the server's spec, sent with registration (re-adoption)
ENV_MONITOR = "UMBRIDGE_BALANCER_MONITOR_S"  # usage sample period (launcher/usage.py); 0: no sampling
# "1": the job is preemptible; a SIGTERM the balancer did not ask for is then a preemption notice:
# the launcher reports it (POST /api/servers/<id>/preempted) and keeps its server for calls in flight.
ENV_PREEMPTIBLE = "UMBRIDGE_BALANCER_PREEMPTIBLE"
# Set by a backend's job script (the launcher knows no scheduler's own variables):
ENV_TASK_INDEX = "UMBRIDGE_BALANCER_TASK_INDEX"  # which id of a comma list in ENV_SERVER_ID is ours
ENV_JOB_ID = "UMBRIDGE_BALANCER_JOB_ID"  # the job's id as the scheduler writes it, for url-<job>.txt

# isolate = "socket" (local backend): the launcher has its model listen on this Unix socket, in an
# owner-only directory, instead of on a loopback port any local user can connect to.
ENV_SOCKET = "UMBRIDGE_BALANCER_SOCKET"
MODEL_SOCKET = "UMBRIDGE_SOCKET"  # what the launcher exports to the model (models/serving.py)
UNIX_SCHEME = "http+unix://"  # a server URL on a Unix socket: the socket path percent-encoded as host

ALIVE = "balancer.alive"  # touched by the balancer every third of the lease


def unix_url(path: Path | str) -> str:
    """The server URL of a model listening on the Unix socket ``path``."""
    return UNIX_SCHEME + quote(str(path), safe="")


def unix_path(url: str) -> str | None:
    """The socket path of an ``http+unix://`` URL; None for any other URL (TCP)."""
    if not url.startswith(UNIX_SCHEME):
        return None
    return unquote(url[len(UNIX_SCHEME) :].partition("/")[0])


def write_atomic(path: Path, data: str) -> None:
    """Readers never see half a file: write a temporary one, then rename it. The temporary file is
    created 0600 from its first byte (it may hold the token), with a fresh name and ``O_EXCL |
    O_NOFOLLOW``: a file or symlink planted under its name is never written through."""
    import secrets  # here: the launcher's first imports (child.py) start the model, and need none

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, path)  # replaces a symlink at ``path`` itself, never its target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def dir_problem(path: Path, forbid: int = 0o022) -> str | None:
    """Why the directory ``path`` is unsafe (None when it is safe): another user owns it or has the
    ``forbid`` mode bits in it. A registration directory must not be writable by others (they could
    plant stop or exit files, or symlinks); a run directory the CLI reads the token from must not be
    open to them at all (``forbid=0o077``)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot stat it: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & forbid:
        what = "write in it" if forbid == 0o022 else "in"
        return f"mode {stat.S_IMODE(st.st_mode):04o} lets other users {what} (chmod 700 it)"
    return None


def ours(st: os.stat_result) -> bool:
    """A regular file of this user (lstat/fstat): anything else in the directory is ignored."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def launch_env(
    *,
    url: str,
    token: str,
    server_id: str,
    spec: str,
    lease_s: float,
    startup_timeout_s: float,
    concurrency: int,
    monitor_interval_s: float,
    registration_dir: Path | str | None = None,
) -> dict[str, str]:
    """The variables one launcher needs to register its server and hold its lease."""
    env = {
        ENV_URL: url,
        ENV_TOKEN: token,
        ENV_SERVER_ID: server_id,
        ENV_SPEC: spec,
        ENV_LEASE: str(lease_s),
        ENV_STARTUP: str(startup_timeout_s),
        ENV_CONCURRENCY: str(concurrency),
        ENV_MONITOR: str(monitor_interval_s),
    }
    if registration_dir is not None:
        env[ENV_REGISTRATION_DIR] = str(registration_dir)
    return env


def launcher_argv(server_command: list[str], python: str | None = None) -> list[str]:
    """The command line that runs ``server_command`` under the launcher."""
    return [python or sys.executable, "-m", "balancer.launcher", "--", *server_command]


class UnsafeFile(ValueError):
    """A file refused by ``read_bounded``; the message says why, for one line to the user."""


def read_bounded(
    path: str | os.PathLike[str], limit: int, *, owned: bool = False, forbid: int = 0, follow: bool = False
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, read without blocking and without
    following a symlink: a FIFO, a device, a symlink or a huge file raises ``UnsafeFile`` (a FIFO
    would freeze the event loop's reader, a huge file its memory). ``owned``: the file must be this
    user's; ``forbid``: mode bits others must not have (0o022: written by others, 0o077: seen by
    them); ``follow``: a symlink is followed (a configuration file the user linked). OSError as
    ``os.open`` raises it (no such file, permission)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink; a socket
            raise UnsafeFile("not a regular file") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile("not a regular file")
        if owned and st.st_uid != os.geteuid():
            raise UnsafeFile(f"owned by uid {st.st_uid}, not by this user")
        if st.st_mode & forbid:
            raise UnsafeFile(f"mode {stat.S_IMODE(st.st_mode):04o} lets other users in")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFile(f"larger than {limit} bytes")
    return data
