"""Per-spec runtime state beyond the server records, and what it makes servable.

A spec is in any of three states besides running normally (``SPEC_STATES``): held after failed
starts, paused by the operator, removed by a reload. The table says what each one allows, so
``Specs.can_serve`` and the reasons a call gets read from one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from balancer.config.schema import ServerSpec


@dataclass(frozen=True)
class SpecState:
    starts: str  # what the policy may start
    serves: bool  # calls for its models wait for a server rather than fail


SPEC_STATES = {
    "held": SpecState("one retry at a time, after a growing back-off", serves=False),
    "paused": SpecState("nothing until resumed; running servers keep serving", serves=True),
    "removed": SpecState("nothing; its servers drain and it is forgotten once they are gone", serves=False),
}


@dataclass
class SpecRuntime:
    """One spec's discovered models, start failures and state (``SPEC_STATES``)."""

    spec: ServerSpec
    models: set[str] = field(default_factory=set)
    discovered: bool = False
    failures: int = 0  # consecutive failed starts
    last_failure_m: float = 0.0
    last_failure: str = ""
    last_log: str | None = None  # the log file of the last failed start, where the launcher said it
    last_stderr: list[str] = field(default_factory=list)  # ... and the model's last stderr lines
    held: bool = False
    held_reason: str = ""
    paused: bool = False  # the operator paused it: no starts until resumed
    removed: str = ""  # why a reload removed it: its servers drain, it is forgotten once they are gone

    @classmethod
    def of(cls, spec: ServerSpec) -> SpecRuntime:
        """A spec's listed models are servable at once, others once a server says them."""
        return cls(spec, set(spec.models), discovered=bool(spec.models))

    def states(self) -> list[str]:
        return [name for name in SPEC_STATES if getattr(self, name)]

    def may_serve(self, model: str) -> bool:
        """Whether a server of this spec may yet serve ``model`` (its models are not all known yet)."""
        if not all(SPEC_STATES[s].serves for s in self.states()):
            return False
        return model in self.models or not self.discovered

    def start_failed(
        self, reason: str, now: float, log: str | None = None, stderr: list[str] | None = None
    ) -> None:
        self.failures += 1
        self.last_failure_m = now
        self.last_failure = reason
        self.last_log, self.last_stderr = log, list(stderr or [])

    def failure_view(self) -> dict[str, object] | None:
        """The last failed start for the status and the dashboard: None while none failed."""
        if not self.last_failure:
            return None
        return {
            "failures": self.failures,
            "reason": self.last_failure,
            "log": self.last_log,
            "stderr": self.last_stderr,
        }


class Specs(dict[str, SpecRuntime]):
    """The pool's specs by name, with what they make servable."""

    @classmethod
    def of(cls, specs: Iterable[ServerSpec]) -> Specs:
        return cls((s.name, SpecRuntime.of(s)) for s in specs)

    def may_serve(self, model: str) -> bool:
        return any(rt.may_serve(model) for rt in self.values())

    def unservable_reason(self, model: str) -> str:
        removed = [rt.removed for rt in self.values() if rt.removed and model in rt.models]
        if removed:
            return f"no server for model '{model}': {removed[0]}"
        held = [rt.held_reason for rt in self.values() if rt.held]
        return f"no server for model '{model}' became ready" + (f" ({'; '.join(held)})" if held else "")

    def known_models(self) -> list[str]:
        seen: dict[str, None] = {}
        for rt in self.values():
            if not rt.removed:
                for m in sorted(rt.models):
                    seen[m] = None
        return list(seen)

    def all_discovered(self) -> bool:
        return all(rt.discovered or rt.held or rt.removed for rt in self.values())

    def serves(self, model: str) -> bool:
        return any(model in rt.models and not rt.removed for rt in self.values())

    def forget_removed(self, busy: set[str]) -> list[str]:
        """Removed specs with no server left (none named in ``busy``) are forgotten; their names."""
        gone = [n for n, rt in self.items() if rt.removed and n not in busy]
        for n in gone:
            del self[n]
        return gone
