"""The one place where servers, specs and recent events become the plain dicts the endpoints send.

``/api/status`` (control), ``/api/servers`` and the status's ``specs`` (operator API) and the
dashboard's stream all build their rows here, so a field is named and computed once. Pure
functions of the objects they are given (the pool's types are imported for type checking only).

Server keys: ``server_view`` is the canonical row (``/api/servers`` and ``/api/status``; it holds
the model server's URL, so only token-holders get it). The dashboard carries no token, so its row
(``dashboard_row``) leaves the URL out and keeps the page's short names, aliases of canonical keys:
``left_s`` = ``time_left_s`` in whole seconds, ``busy`` = ``outstanding``, ``slots`` = ``concurrency``;
it adds ``util`` (busy time / (time ready x slots)) and has ``gpus`` only where a server has some.
Spec keys: ``spec_view`` (the status's ``specs``); ``dashboard_spec`` (``held``, ``models``, and
``max`` = the configured ``max_servers``, the badges' ``paused``/``held_reason``/``removed``);
``held_reasons`` (the status's ``held``). ``cost``: server-hours and core-hours so far, per spec.
Loopback host names become ``localhost`` on the page (a local server is ``localhost`` while it
starts and ``127.0.0.1`` once its URL is known: one name per server).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from balancer.observe.events import Ev, Event
from balancer.ops.reload import reload_decision

if TYPE_CHECKING:
    from balancer.policy.types import SpecLimits
    from balancer.pool.pool import Pool
    from balancer.pool.servers import Server
    from balancer.pool.specs import SpecRuntime


def _time_left(s: Server, now: float) -> float | None:
    """Seconds until the server's job reaches its time limit; None without a limit."""
    return s.deadline_wall - now if s.deadline_wall is not None else None


LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def host_name(host: str | None) -> str | None:
    """One name per machine: every loopback spelling is ``localhost``."""
    return "localhost" if host in LOOPBACK else host


def server_view(s: Server, now_m: float, now: float, gpus: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The canonical server row (``balancer servers``, ``/api/status``)."""
    left = _time_left(s, now)
    return {
        "id": s.id,
        "spec": s.spec.name,
        "state": s.state.value,
        "url": s.url,
        "host": s.host,
        "job": s.job,
        "models": list(s.models),
        "outstanding": s.outstanding,
        "concurrency": s.concurrency,
        "calls": s.calls,
        "age_s": round(now_m - s.requested_m, 1),
        "time_left_s": round(left, 1) if left is not None else None,
        "drain_reason": s.drain_reason,
        "preemptible": s.preemptible,
        "gpus": gpus,
    }


def dashboard_row(s: Server, now_m: float, now: float, gpus: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The dashboard's server row: no URL (the page has no token), the page's short key names."""
    left = _time_left(s, now)
    life = (now_m - s.ready_m) * s.concurrency if s.ready_m is not None else 0.0
    row: dict[str, Any] = {
        "id": s.id,
        "spec": s.spec.name,
        "state": s.state.value,
        "job": s.job,
        "host": host_name(s.host),
        "left_s": round(left) if left is not None else None,
        "calls": s.calls,
        "util": round(min(1.0, s.busy_s / life), 4) if life > 0 else None,
        "busy": s.outstanding,
        "slots": s.concurrency,
        "models": list(s.models),
    }
    if s.preemptible:  # a harvest job (the table marks it); its state may become "preempted"
        row["preemptible"] = True
    if gpus:  # no GPU column on a CPU-only page
        row["gpus"] = gpus
    return row


def state_counts(pool: Pool) -> dict[str, dict[str, int]]:
    """Servers per spec and state: ``{spec: {state: n}}``, every spec present."""
    counts: dict[str, dict[str, int]] = {n: {} for n in pool.specs}
    for s in pool.servers.values():
        c = counts.setdefault(s.spec.name, {})
        c[s.state.value] = c.get(s.state.value, 0) + 1
    return counts


def spec_view(
    rt: SpecRuntime, lim: SpecLimits, counts: dict[str, int], workload: dict[str, Any] | None
) -> dict[str, Any]:
    """A spec in ``/api/status``'s ``specs``: its limits as they are now, its states and servers."""
    return {
        "min_servers": lim.min_servers,
        "max_servers": lim.max_servers,
        "backlog": lim.backlog,
        "paused": rt.paused,
        "removed": bool(rt.removed),
        "held": rt.held,
        "held_reason": rt.held_reason or None,
        "models": sorted(rt.models),
        "cwd": rt.spec.cwd,  # where its servers start (the config file's directory by default)
        "servers": counts,
        "workload": workload,
    }


def dashboard_spec(rt: SpecRuntime) -> dict[str, Any]:
    """A spec in the dashboard's snapshot and ticks (its badges change with an operator's action)."""
    return {
        "held": rt.held,
        "held_reason": rt.held_reason or None,
        "paused": rt.paused,
        "removed": bool(rt.removed),
        "models": sorted(rt.models),
        "max": rt.spec.max_servers,
        "cpus": rt.spec.resources.cpus,
    }


def cost(pool: Pool, now_m: float) -> dict[str, Any]:
    """Server-hours and core-hours so far, in total and per spec: each server from its job's start
    to now (live) or to its end (``Pool.gone_s``), times its spec's CPUs. What a cluster account is
    charged, roughly."""
    run = dict(pool.gone_s)
    for s in pool.servers.values():
        if s.started_m is not None:
            run[s.spec.name] = run.get(s.spec.name, 0.0) + max(0.0, now_m - s.started_m)
    specs: dict[str, dict[str, float]] = {}
    server_s = core_s = 0.0
    for name, sec in run.items():
        rt = pool.specs.get(name)
        cpus = rt.spec.resources.cpus if rt is not None else 1
        specs[name] = {"server_h": round(sec / 3600, 4), "core_h": round(sec * cpus / 3600, 4)}
        server_s += sec
        core_s += sec * cpus
    return {"server_h": round(server_s / 3600, 4), "core_h": round(core_s / 3600, 4), "specs": specs}


def store_paths(cfg: Any) -> dict[str, Any]:
    """``/api/status``'s ``stores``: where the profiles and the capacity history are, and that both
    are shared by the user's configurations (on purpose: see each path's function). Imported
    here, when asked: the history's module brings numpy, which the balancer's start need not load."""
    from balancer.capacity.history import history_path
    from balancer.profiling.store import profiles_path

    return {
        "profiles": str(profiles_path(cfg.profiles)),
        "history": str(history_path(cfg.forecast)),
        "shared": "one per user: profiles keyed by spec and command, history by cluster",
    }


def held_reasons(pool: Pool) -> dict[str, str | None]:
    """``/api/status``'s ``held``: each held spec with why."""
    return {n: rt.held_reason for n, rt in pool.specs.items() if rt.held}


# -- recent events as the dashboard's lines ---------------------------------------------------------
def strip(e: Event) -> dict[str, Any]:
    """An event's fields without the bus's stamps the page does not use."""
    return {k: v for k, v in e.items() if k not in ("v", "m", "ev")}


def as_decision(e: Event) -> dict[str, Any]:
    """An ``operator.action`` as a line among the scaler's decisions: "operator  t: pause by ann"."""
    what = e["action"] if e.get("spec") is None else f"{e['action']} {e['target']}"
    return {
        "t": e["t"],
        "spec": e.get("spec") or e["target"],
        "action": "operator",
        "reason": f"{what} by {e.get('who') or e.get('remote') or 'unknown'}",
    }


def decision_line(e: Event) -> dict[str, Any]:
    """A scale decision, an operator's change or a config reload as one line of the decisions list."""
    ev = e["ev"]
    if ev == Ev.OPERATOR_ACTION:
        return as_decision(e)
    if ev == Ev.CONFIG_RELOADED:
        return reload_decision(e)
    return strip(e)


def decision_lines(events: Iterable[Event]) -> list[dict[str, Any]]:
    return [decision_line(e) for e in events]
