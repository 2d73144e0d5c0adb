"""Backend options as typed dataclasses, validated when the configuration is loaded.

Each backend declares two frozen dataclasses: ``Options`` for the ``[backend]`` table (subclassing
``BackendOptions``, which holds what every backend shares) and ``ServerOptions`` for the extra keys
of a ``[[servers]]`` table (partition, threads, ...). ``parse_options`` turns a TOML table into one
by the declared field types, so an unknown or ill-typed key is a ``ConfigError`` naming it before
any port is bound, for every backend, local included. Field metadata adds what a type cannot say:
``positive`` (> 0), ``choices`` (one of a few strings), ``pattern`` (a string matching a regular
expression), ``split`` (a string is split like a shell command line into a list) and ``duration``
(a number of seconds, or a string such as "15m" or "00:30:00"). Checks that
need the scheduler (a partition exists, a binary is on PATH) belong in ``Backend.start``.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from balancer.config.schema import ConfigError
from balancer.units import parse_duration


def positive(default: Any) -> Any:
    """A number field that must be > 0."""
    return field(default=default, metadata={"positive": True})


def args(default: tuple[str, ...] = ()) -> Any:
    """A list of strings; a single string is split like a command line."""
    return field(default=default, metadata={"split": True})


def one_of(default: str | None, *choices: str) -> Any:
    """A string that must be one of ``choices``."""
    return field(default=default, metadata={"choices": choices})


def word(default: str | None = None, pattern: str = r"[^\s,]+", hint: str = "one word, no commas") -> Any:
    """A string the scheduler takes as one argument (a partition, a job name prefix)."""
    return field(default=default, metadata={"pattern": (pattern, hint)})


@dataclass(frozen=True)
class BackendOptions:
    """``[backend]`` keys of every backend."""

    # Drain a server this long before its job's time limit (the scheduler reports the limit).
    time_limit_margin_s: float = positive(60.0)


def duration(default: float | None = None) -> Any:
    """A duration in seconds: a number, or a string such as "15m", "1h 30m" or "00:30:00"."""
    return field(default=default, metadata={"duration": True, "positive": True})


def devices() -> Any:
    """A list of devices (non-negative integers or strings such as GPU UUIDs), kept as strings."""
    return field(default=None, metadata={"devices": True})


@dataclass(frozen=True)
class LocalOptions(BackendOptions):
    """``[backend]`` keys of the local backend."""

    # The GPUs to hand out, one set per server through its CUDA_VISIBLE_DEVICES (balancer/profiling/gpus.py);
    # None: those NVML finds, or none. An empty list: none, even where NVML finds some.
    gpus: tuple[str, ...] | None = devices()


@dataclass(frozen=True)
class ServerOptions:
    """Per-server keys of every backend beyond the common ``[[servers]]`` keys (none by default)."""


@dataclass(frozen=True)
class ThreadsOption(ServerOptions):
    """Per-server ``threads``: ``OMP_NUM_THREADS`` of the model (default: its CPUs)."""

    threads: int | None = positive(None)


def _describe(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        return "a list of strings"
    if origin is dict:
        return "a table"
    return str(tp)


def _duration(key: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _check(key: str, value: Any, tp: Any, meta: Any) -> Any:
    """``value`` as type ``tp`` (a field's annotation), or ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        kinds = [t for t in typing.get_args(tp) if t is not type(None)]
        if value is None and len(kinds) < len(typing.get_args(tp)):
            return None
        tp = kinds[0] if len(kinds) == 1 else tp
        origin = typing.get_origin(tp)
    ok = True
    if meta.get("duration") and isinstance(value, str):
        value = _duration(key, value)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is int or tp is str or tp is bool:
        ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
    elif origin in (tuple, list):
        if isinstance(value, str) and meta.get("split"):
            value = shlex.split(value)
        elif isinstance(value, str) and meta.get("wrap"):
            value = [value]  # one entry given as a string
        elif isinstance(value, list) and meta.get("devices"):  # indices (0, 1) or UUIDs, as strings
            value = [str(x) if type(x) is int and x >= 0 else x for x in value]
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
        value = tuple(value) if ok else value
    elif origin is dict:
        ok = isinstance(value, dict) and all(
            isinstance(v, (int, str)) and not isinstance(v, bool) for v in value.values()
        )
        value = {str(k): v for k, v in value.items()} if ok else value
    if not ok:
        raise ConfigError(key, f"expected {_describe(tp)}, got {value!r}")
    if meta.get("positive") and value <= 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(key, f"expected one of {', '.join(meta['choices'])}, got {value!r}")
    if "pattern" in meta and not re.fullmatch(meta["pattern"][0], value):
        raise ConfigError(key, f"expected {meta['pattern'][1]}, got {value!r}")
    return value


def parse_options(cls: type, raw: dict[str, Any], prefix: str, scheduler: str) -> Any:
    """An instance of the options dataclass ``cls`` from a TOML table."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for k, v in raw.items():
        f = known.get(k)
        if f is None:
            names = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"{prefix}.{k}", f"unknown key for {scheduler} (known: {names})")
        values[k] = _check(f"{prefix}.{k}", v, hints[k], f.metadata)
    return cls(**values)


@dataclass(frozen=True)
class BatchOptions(BackendOptions):
    """``[backend]`` keys of every batch scheduler."""

    poll_interval_s: float = positive(2.0)
    fast_poll_s: float = positive(0.5)
    # Cancel and fail a job pending longer than this. None (default): a queued job waits as long as
    # the queue says (issue 20: a full queue is no failed start); a spec's ``pending_timeout_s``
    # withdraws a queued start without counting it as a failure.
    pending_timeout_s: float | None = positive(None)
    command_timeout_s: float = positive(60.0)
    python: str = sys.executable  # the Python that runs the launcher on the compute nodes
    # The prefix of our jobs' names (squeue finds our jobs by name).
    job_name: str = word("umbridge", r"[A-Za-z0-9_.-]+", "letters, digits, '.', '_' and '-'")


@dataclass(frozen=True)
class BatchServerOptions(ThreadsOption):
    servers_per_job: int = positive(1)
