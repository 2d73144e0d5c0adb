"""Typed values of a configuration table: one line naming the key for anything else.

Shared by the top-level parser (``config.parse``) and the optional sections (``config.sections``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from balancer.config.schema import ConfigError


def typed(key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ()):
        raise ConfigError(key, f"expected {what}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(key, f"expected {what}, got {value!r}")
    return value


def positive(key: str, value: Any, *, allow_zero: bool = False, integer: bool = False) -> Any:
    kind: type | tuple[type, ...] = int if integer else (int, float)
    typed(key, value, kind, "an integer" if integer else "a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def table(key: str, raw: Any, known: set[str] | frozenset[str]) -> None:
    """``raw`` is a table of only ``known`` keys: the one check every section starts with."""
    typed(key, raw, dict, "a table")
    for k in raw:
        if k not in known:
            raise ConfigError(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(known))})")


def typed_fields(key: str, cls: type, raw: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """Keys of ``raw`` checked against the dataclass ``cls``'s fields and their default's type."""
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in known:
            continue
        default = getattr(cls(), k)
        name = f"{key}.{k}"
        if isinstance(default, bool):
            out[k] = typed(name, v, bool, "true or false")
        elif isinstance(default, int):
            out[k] = positive(name, v, allow_zero=True, integer=True)
        elif isinstance(default, float):
            out[k] = float(positive(name, v, allow_zero=True))
        else:
            out[k] = typed(name, v, str, "a string")
    return out
