"""TOML configuration: parsed once at start-up into the frozen dataclasses of ``config.schema``.

Every key is validated: a bad key ends the program with one line naming it (``ConfigError``), never a
traceback later. The parser needs the backends' option tables (through the registry), so it is kept
apart from the schema that every layer imports.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from balancer.backends.options import parse_options
from balancer.backends.registry import SCHEDULERS, backend_class
from balancer.config.schema import (
    LOOPS,
    BalancerConfig,
    ConfigError,
    Resources,
    ServerSpec,
)
from balancer.config.sections import parse_forecast, parse_notify, parse_profiles
from balancer.config.values import positive, table, typed
from balancer.http.peer import user_uids
from balancer.launcher.contract import UnsafeFile, read_bounded
from balancer.units import parse_time_limit

_SPEC_KEYS = {f.name for f in fields(ServerSpec)} - {"options", "script_sha"}
_TOP_KEYS = {f.name for f in fields(BalancerConfig)} - {
    "servers",
    "backend_options",
    "forecast",
    "notify",
    "profiles",
}
_RES_KEYS = {f.name for f in fields(Resources)} - {"auto"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _parse_resources(key: str, raw: Any) -> Resources:
    table(key, raw, _RES_KEYS)
    auto = tuple(k for k in ("cpus", "memory", "time_limit") if raw.get(k) == "auto")
    cpus = 1 if "cpus" in auto else positive(f"{key}.cpus", raw.get("cpus", 1), integer=True)
    gpus = positive(f"{key}.gpus", raw.get("gpus", 0), integer=True, allow_zero=True)
    memory = None if "memory" in auto else raw.get("memory")
    if memory is not None:
        memory = str(typed(f"{key}.memory", memory, (str, int), 'a size such as "4G"'))
    time_limit = None if "time_limit" in auto else raw.get("time_limit")
    if time_limit is not None:
        time_limit = typed(f"{key}.time_limit", time_limit, str, 'a time such as "01:00:00"')
        try:
            parse_time_limit(time_limit)
        except ValueError:
            msg = f'expected a time such as "01:00:00", got {time_limit!r}'
            raise ConfigError(f"{key}.time_limit", msg) from None
    return Resources(cpus=cpus, memory=memory, gpus=gpus, time_limit=time_limit, auto=auto)


def _parse_command(key: str, raw: dict[str, Any], base_dir: Path) -> tuple[tuple[str, ...], str | None, str]:
    """A spec's ``command`` (string or list) or ``job_script`` (a readable file, digested so a reload
    sees an edited script): exactly one of them."""
    command = raw.get("command")
    job_script = raw.get("job_script")
    if (command is None) == (job_script is None):
        raise ConfigError(f"{key}.command", "give exactly one of 'command' or 'job_script'")
    cmd: tuple[str, ...] = ()
    script_sha = ""
    if command is not None:
        if isinstance(command, str):
            cmd = tuple(shlex.split(command))
        elif isinstance(command, list) and all(isinstance(c, str) for c in command):
            cmd = tuple(command)
        else:
            raise ConfigError(f"{key}.command", "expected a string or a list of strings")
        if not cmd:
            raise ConfigError(f"{key}.command", "is empty")
    if job_script is not None:
        typed(f"{key}.job_script", job_script, str, "a path")
        path = Path(job_script)
        if not path.is_absolute():
            path = base_dir / path
        try:
            script_sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        except OSError as exc:
            why = "no such file" if not path.exists() else f"cannot read ({exc.strerror or exc})"
            raise ConfigError(f"{key}.job_script", f"{why}: {path}") from None
        job_script = str(path)
    return cmd, job_script, script_sha


def _parse_env(key: str, env: Any) -> list[tuple[str, str]]:
    typed(f"{key}.env", env, dict, "a table of strings")
    items = []
    for k, v in env.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(f"{key}.env.{k}", f"expected a string or number, got {v!r}")
        items.append((str(k), str(v)))
    return items


def _parse_spec(idx: int, raw: Any, base_dir: Path, scheduler: str) -> ServerSpec:
    key = f"servers[{idx}]"
    typed(key, raw, dict, "a table")
    name = raw.get("name", f"server{idx}")
    typed(f"{key}.name", name, str, "a string")
    if not _NAME_RE.match(name):
        raise ConfigError(f"{key}.name", f"use letters, digits, '.', '_' and '-' only, got {name!r}")
    key = f"servers.{name}"
    opts = {k: v for k, v in raw.items() if k not in _SPEC_KEYS}  # the scheduler's own keys
    cmd, job_script, script_sha = _parse_command(key, raw, base_dir)
    models = raw.get("models", [])
    if not (isinstance(models, list) and all(isinstance(m, str) and m for m in models)):
        raise ConfigError(f"{key}.models", "expected a list of model names")
    env_items = _parse_env(key, raw.get("env", {}))
    cwd = raw.get("cwd", ".")  # as documented: the configuration file's directory (a dict's: the cwd)
    if cwd is not None:
        typed(f"{key}.cwd", cwd, str, "a directory")
        cwd_path = (Path(cwd) if Path(cwd).is_absolute() else base_dir / cwd).resolve()
        if not cwd_path.is_dir():
            raise ConfigError(f"{key}.cwd", f"no such directory: {cwd_path}")
        cwd = str(cwd_path)
    isolate = raw.get("isolate", "")
    if isolate not in ("", "socket"):
        raise ConfigError(f"{key}.isolate", f'expected "socket" (or leave it out), got {isolate!r}')
    if isolate and scheduler != "local":  # a balancer on a login node reaches its servers over the network
        raise ConfigError(f"{key}.isolate", f'"socket" needs scheduler = "local", not {scheduler!r}')
    min_servers = positive(f"{key}.min_servers", raw.get("min_servers", 0), allow_zero=True, integer=True)
    max_servers = positive(f"{key}.max_servers", raw.get("max_servers", 4), integer=True)
    if min_servers > max_servers:
        raise ConfigError(f"{key}.min_servers", f"{min_servers} exceeds max_servers = {max_servers}")
    floor = raw.get("floor")
    if floor is not None:
        floor = positive(f"{key}.floor", floor, allow_zero=True, integer=True)
        if floor > max_servers:
            raise ConfigError(f"{key}.floor", f"{floor} exceeds max_servers = {max_servers}")
    pending_timeout = raw.get("pending_timeout_s")
    if pending_timeout is not None:
        pending_timeout = float(positive(f"{key}.pending_timeout_s", pending_timeout))
    return ServerSpec(
        name=name,
        command=cmd,
        job_script=job_script,
        models=tuple(models),
        concurrency=positive(f"{key}.concurrency", raw.get("concurrency", 1), integer=True),
        min_servers=min_servers,
        max_servers=max_servers,
        backlog=positive(f"{key}.backlog", raw.get("backlog", 2), integer=True),
        idle_timeout_s=float(positive(f"{key}.idle_timeout_s", raw.get("idle_timeout_s", 60.0))),
        startup_timeout_s=float(positive(f"{key}.startup_timeout_s", raw.get("startup_timeout_s", 120.0))),
        pending_timeout_s=pending_timeout,
        floor=floor,
        max_attempts=positive(f"{key}.max_attempts", raw.get("max_attempts", 3), integer=True),
        max_start_failures=positive(
            f"{key}.max_start_failures", raw.get("max_start_failures", 3), integer=True
        ),
        env=tuple(env_items),
        cwd=cwd,
        isolate=isolate,
        resources=_parse_resources(f"{key}.resources", raw.get("resources", {})),
        options=_options(scheduler, "ServerOptions", opts, key),
        script_sha=script_sha,
    )


def _options(scheduler: str, which: str, raw: dict[str, Any], prefix: str) -> Any:
    """The scheduler's typed ``Options``/``ServerOptions`` from a table (unknown key: ConfigError)."""
    return parse_options(getattr(backend_class(scheduler), which), raw, prefix, scheduler)


def parse_config(raw: dict[str, Any], base_dir: Path | None = None, **overrides: Any) -> BalancerConfig:
    """Validate a parsed TOML document; ``overrides`` (from the CLI) win over the file."""
    base_dir = base_dir or Path.cwd()
    top = raw.get("balancer", {})
    typed("balancer", top, dict, "a table")
    for k in raw:
        if k not in ("balancer", "servers", "backend", "forecast", "notify", "profiles"):
            known = "balancer, servers, backend, forecast, notify, profiles"
            raise ConfigError(k, f"unknown section (known: {known})")
    for k in top:
        if k not in _TOP_KEYS:
            raise ConfigError(f"balancer.{k}", f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    values: dict[str, Any] = {**top, **{k: v for k, v in overrides.items() if v is not None}}
    host = typed("balancer.host", values.get("host", "127.0.0.1"), str, "a host name or address")
    port = typed("balancer.port", values.get("port", 4242), int, "a port number")
    if not 0 <= port <= 65535:
        raise ConfigError("balancer.port", f"must be within 0..65535, got {port}")
    scheduler = values.get("scheduler", "local")
    if scheduler not in SCHEDULERS:
        raise ConfigError("balancer.scheduler", f"expected one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    for k in ("journal", "run_dir", "advertise_url", "registration_dir"):
        if values.get(k) is not None:
            typed(f"balancer.{k}", values[k], str, "a string")
    control_host = typed("balancer.control_host", values.get("control_host", "127.0.0.1"), str, "an address")
    control_port = typed("balancer.control_port", values.get("control_port", 0), int, "a port number")
    if not 0 <= control_port <= 65535:
        raise ConfigError("balancer.control_port", f"must be within 0..65535, got {control_port}")
    allow_uids, allow_users = _allowed(values)
    allow_remote = typed("balancer.allow_remote", values.get("allow_remote", False), bool, "true or false")
    hosts = values.get("allow_hosts", [])
    if not (isinstance(hosts, list) and all(isinstance(n, str) and n.strip() for n in hosts)):
        raise ConfigError("balancer.allow_hosts", f"expected a list of host names, got {hosts!r}")
    registration = values.get("registration", "http")
    if registration not in ("http", "file"):
        raise ConfigError("balancer.registration", f'expected "http" or "file", got {registration!r}')
    backend = raw.get("backend", {})
    typed("backend", backend, dict, "a table")
    servers_raw = raw.get("servers", [])
    typed("servers", servers_raw, list, "an array of tables ([[servers]])")
    if not servers_raw:
        raise ConfigError("servers", "no server defined: add at least one [[servers]] table")
    specs = tuple(_parse_spec(i, s, base_dir, scheduler) for i, s in enumerate(servers_raw))
    names = [s.name for s in specs]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"servers.{n}.name", "duplicate server name")
    delay = values.get("delay_ms", 0)
    return BalancerConfig(
        host=host,
        port=port,
        scheduler=scheduler,
        journal=values.get("journal"),
        run_dir=values.get("run_dir"),
        max_body_mb=float(positive("balancer.max_body_mb", values.get("max_body_mb", 64.0))),
        lease_s=float(positive("balancer.lease_s", values.get("lease_s", 30.0))),
        shutdown_grace_s=float(
            positive("balancer.shutdown_grace_s", values.get("shutdown_grace_s", 30.0), allow_zero=True)
        ),
        scale_interval_s=float(positive("balancer.scale_interval_s", values.get("scale_interval_s", 0.25))),
        delay_ms=positive("balancer.delay_ms", delay, allow_zero=True, integer=True),
        loop=_choice("balancer.loop", values.get("loop", "auto"), LOOPS),
        advertise_url=values.get("advertise_url"),
        registration=registration,
        registration_dir=values.get("registration_dir"),
        monitor_interval_s=float(
            positive("balancer.monitor_interval_s", values.get("monitor_interval_s", 5.0), allow_zero=True)
        ),
        control_host=control_host,
        control_port=control_port,
        allow_uids=allow_uids,
        allow_users=allow_users,
        allow_remote=allow_remote,
        allow_hosts=tuple(hosts),
        servers=specs,
        backend_options=_options(scheduler, "Options", backend, "backend"),
        forecast=parse_forecast(raw.get("forecast", {})),
        notify=parse_notify(raw.get("notify", {})),
        profiles=parse_profiles(raw.get("profiles", {})),
    )


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(key, f"expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _allowed(values: dict[str, Any]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``allow_uids`` and ``allow_users``; a user name this machine does not know is an error
    now, not a silently closed door later."""
    uids = values.get("allow_uids", [])
    if not (isinstance(uids, list) and all(type(u) is int and u >= 0 for u in uids)):
        raise ConfigError("balancer.allow_uids", f"expected a list of user ids, got {uids!r}")
    users = values.get("allow_users", [])
    if not (isinstance(users, list) and all(isinstance(u, str) and u for u in users)):
        raise ConfigError("balancer.allow_users", f"expected a list of user names, got {users!r}")
    try:
        user_uids(users)
    except KeyError as exc:
        raise ConfigError("balancer.allow_users", f"no such user: {exc.args[0]!r}") from None
    return tuple(uids), tuple(users)


CONFIG_MAX_BYTES = 1 << 20  # a configuration file is a few KiB: a bigger one is a mistake


def _read_small_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file of at most CONFIG_MAX_BYTES, opened without blocking: a FIFO, a
    device or a huge file is refused at once, never read (at start as at a reload)."""
    try:
        return read_bounded(path, CONFIG_MAX_BYTES, follow=True)
    except (UnsafeFile, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(str(path), f"cannot read: {why}") from None


def read_config(path: str | os.PathLike[str], **overrides: Any) -> tuple[BalancerConfig, str]:
    """The validated configuration and the digest of the text it came from (shown by status); the
    start (``balancer serve --config``) and a reload read the file alike."""
    data = _read_small_file(path)
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None
    cfg = parse_config(raw, base_dir=Path(path).resolve().parent, **overrides)
    return cfg, hashlib.sha256(data).hexdigest()[:12]
