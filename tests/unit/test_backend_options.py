"""Typed backend options: the generic validator and each backend's declared options (that
``balancer serve`` refuses bad ones before binding its port: test_units)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from balancer.backends.options import BackendOptions, args, one_of, parse_options, positive, word
from balancer.backends.registry import SCHEDULERS, backend_class
from balancer.config.parse import parse_config
from balancer.config.schema import ConfigError


@dataclass(frozen=True)
class Toy(BackendOptions):
    count: int = positive(1)
    ratio: float = 0.5
    label: str | None = None
    flag: bool = False
    extra: tuple[str, ...] = args()
    table: dict[str, int | str] = None  # type: ignore[assignment]
    mode: str | None = one_of(None, "a", "b")
    queue: str | None = word()


def toy(**raw: Any) -> Toy:
    return parse_options(Toy, raw, "backend", "toy")  # type: ignore[no-any-return]


def test_fields_are_converted_by_their_declared_type():
    t = toy(count=3, ratio=2, label="x", flag=True, extra="--a 'b c'", table={"gpus": 1}, mode="b")
    assert (t.count, t.ratio, t.label, t.flag, t.extra, t.table, t.mode) == (
        3, 2.0, "x", True, ("--a", "b c"), {"gpus": 1}, "b"
    )  # fmt: skip
    assert isinstance(t.ratio, float) and toy(extra=["x", "y"]).extra == ("x", "y")
    assert toy() == Toy() and toy().time_limit_margin_s == 60.0  # the common base's default


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        ({"colour": 1}, "backend.colour", "unknown key for toy (known: count, extra,"),
        ({"count": 1.5}, "backend.count", "expected an integer, got 1.5"),
        ({"count": True}, "backend.count", "expected an integer, got True"),  # TOML bools are not numbers
        ({"count": 0}, "backend.count", "must be > 0, got 0"),
        ({"ratio": "x"}, "backend.ratio", "expected a number, got 'x'"),
        ({"label": 3}, "backend.label", "expected a string, got 3"),
        ({"flag": 1}, "backend.flag", "expected true or false, got 1"),
        ({"extra": [1]}, "backend.extra", "expected a list of strings"),
        ({"table": {"gpus": True}}, "backend.table", "expected a table"),
        ({"mode": "c"}, "backend.mode", "expected one of a, b, got 'c'"),
        ({"queue": "a b"}, "backend.queue", "expected one word, no commas, got 'a b'"),
        ({"time_limit_margin_s": -1}, "backend.time_limit_margin_s", "must be > 0"),
    ],
)
def test_a_bad_key_is_a_config_error_naming_it(raw, key, message):
    with pytest.raises(ConfigError) as err:
        toy(**raw)
    assert err.value.key == key and message in str(err.value)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_backend_declares_options_over_the_common_base(scheduler):
    cls = backend_class(scheduler)
    assert cls.name == scheduler and issubclass(cls.Options, BackendOptions)
    cfg = parse_config({"balancer": {"scheduler": scheduler}, "servers": [{"name": "m", "command": "x"}]})
    assert isinstance(cfg.backend_options, cls.Options)
    assert isinstance(cfg.servers[0].options, cls.ServerOptions)
