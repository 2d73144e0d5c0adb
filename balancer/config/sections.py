"""The optional tables of a configuration: ``[forecast]``, ``[notify]`` and ``[profiles]``.

Each is checked whole at load (and at a reload): a bad key is one line naming it, an apprise URL is
checked by apprise itself, sizes and times are parsed now rather than when they are first used.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from balancer.config.schema import (
    NOTIFY_KINDS,
    POLICIES,
    ConfigError,
    ForecastRules,
    ForecastSettings,
    NotifySettings,
    ProfileSettings,
)
from balancer.config.values import table, typed, typed_fields
from balancer.units import parse_memory, parse_time_limit

_RULE_KEYS = {f.name for f in fields(ForecastRules)}
_FORECAST_KEYS = {f.name for f in fields(ForecastSettings)} - {"rules"}


def parse_forecast(raw: Any) -> ForecastSettings:
    """The ``[forecast]`` table, rule keys included; every key typed, unknown keys refused."""
    table("forecast", raw, _FORECAST_KEYS | _RULE_KEYS)
    policy = raw.get("policy", ForecastRules.policy)
    if policy not in POLICIES:
        raise ConfigError("forecast.policy", f"{policy!r} is not one of {', '.join(POLICIES)}")
    rules = ForecastRules(**typed_fields("forecast", ForecastRules, raw, set()))
    top = typed_fields("forecast", ForecastSettings, {k: v for k, v in raw.items() if k in _FORECAST_KEYS},
                        {"rules", "history", "partition", "forecaster"})  # fmt: skip
    for k in ("history", "partition", "forecaster"):
        if k in raw:
            top[k] = typed(f"forecast.{k}", raw[k], str, "a string")
    for k in ("collect_interval_s", "grid_s", "horizon_s", "train_every_s", "retention_days"):
        if k in top and top[k] <= 0:
            raise ConfigError(f"forecast.{k}", f"must be > 0, got {raw[k]!r}")
    settings = ForecastSettings(rules=rules, **top)
    if settings.horizon_s < settings.grid_s:
        raise ConfigError("forecast.horizon_s", f"shorter than the grid ({settings.grid_s:g} s)")
    return settings


def parse_notify(raw: Any) -> NotifySettings:
    """The ``[notify]`` table; each URL is checked by apprise itself, which must be installed."""
    table("notify", raw, {f.name for f in fields(NotifySettings)})
    top = typed_fields("notify", NotifySettings, raw, {"urls", "on", "title_prefix"})
    if "title_prefix" in raw:
        top["title_prefix"] = typed("notify.title_prefix", raw["title_prefix"], str, "a string")
    on = raw.get("on", list(NotifySettings.on))
    if not (isinstance(on, list) and all(isinstance(k, str) for k in on)):
        raise ConfigError("notify.on", f"expected a list of notice kinds, got {on!r}")
    for k in on:
        if k not in NOTIFY_KINDS:
            raise ConfigError("notify.on", f"unknown kind {k!r} (known: {', '.join(NOTIFY_KINDS)})")
    urls = raw.get("urls", [])
    if not (isinstance(urls, list) and all(isinstance(u, str) and u for u in urls)):
        raise ConfigError("notify.urls", "expected a list of apprise URLs (strings)")
    if urls:
        _check_apprise_urls(urls)
    for k in ("failure_threshold", "failure_window_s"):
        if k in top and top[k] <= 0:
            raise ConfigError(f"notify.{k}", f"must be > 0, got {raw[k]!r}")
    return NotifySettings(urls=tuple(urls), on=tuple(dict.fromkeys(on)), **top)


def parse_profiles(raw: Any) -> ProfileSettings:
    """The ``[profiles]`` table; sizes and times are checked now, not when a spec is sized."""
    table("profiles", raw, {f.name for f in fields(ProfileSettings)})
    text = {"path", "min_memory", "max_time_limit", "default_memory", "default_time_limit"}
    top = typed_fields("profiles", ProfileSettings, raw, text)
    for k in text & set(raw):
        top[k] = str(typed(f"profiles.{k}", raw[k], (str, int) if "memory" in k else str, "a string"))
    for k in ("min_memory", "default_memory"):
        if k in top:
            try:
                parse_memory(top[k])
            except ValueError:
                msg = f'expected a size such as "512M", got {raw[k]!r}'
                raise ConfigError(f"profiles.{k}", msg) from None
    for k in ("max_time_limit", "default_time_limit"):
        if k in top:
            try:
                ok = parse_time_limit(top[k]) is not None
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"profiles.{k}", f'expected a time such as "01:00:00", got {raw[k]!r}')
    for k in ("memory_headroom", "time_headroom"):
        if k in top and top[k] < 1:
            raise ConfigError(f"profiles.{k}", f"must be >= 1, got {raw[k]!r}")
    for k in ("flush_s", "default_cpus", "mismatch_samples"):
        if k in top and top[k] <= 0:
            raise ConfigError(f"profiles.{k}", f"must be > 0, got {raw[k]!r}")
    return ProfileSettings(**top)


def _check_apprise_urls(urls: list[str]) -> None:
    try:
        import apprise
    except ImportError:
        msg = "sending notifications needs apprise: install umbridge-balancer[notify]"
        raise ConfigError("notify.urls", msg) from None
    import logging

    for i, url in enumerate(urls):
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
            plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            why = captured.getvalue().strip().splitlines()  # apprise masks secrets in what it says
            detail = why[-1] if why else "not a URL apprise knows"
            raise ConfigError(f"notify.urls[{i}]", detail)
