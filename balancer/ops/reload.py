"""Live reload of the configuration file: check all of it, then apply only what changed.

``diff_config`` is pure: which specs were added, removed or changed (and whether a change needs new
servers: command, environment, job script, resources, scheduler options), which live settings
changed, and which settings cannot change while the balancer runs. ``Reloader.reload`` runs every
check first (the file as at start, then the backend's own checks of the new and changed specs) and
only then applies the whole difference, in one step of the event loop: all or nothing. Servers of
a changed command are not touched here; they are marked outdated, and the pure policy replaces
them one by one (a successor ready before its predecessor drains).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from balancer.config.parse import read_config
from balancer.config.schema import BalancerConfig, ConfigError, ServerSpec
from balancer.observe.events import Ev, EventBus
from balancer.policy.types import Limits, SpecLimits

if TYPE_CHECKING:
    from balancer.backends.base import Backend
    from balancer.calls.path import Calls
    from balancer.capacity.history import History
    from balancer.capacity.monitor import CapacityMonitor
    from balancer.capacity.service import ForecastService
    from balancer.control.api import Control
    from balancer.control.filereg import FileRegistration
    from balancer.http.server import FrontServer
    from balancer.observe.notify import Notifications
    from balancer.ops.access import PeerGate
    from balancer.pool.pool import Pool
    from balancer.pool.scaler import Scaler
    from balancer.profiling.recorder import Profiler
    from balancer.profiling.workload import UsageAggregator

# [balancer] keys a running balancer cannot take: its listeners, its scheduler and its files.
FIXED = (
    "host", "port", "scheduler", "journal", "run_dir", "advertise_url", "registration",
    "registration_dir", "control_host", "control_port", "allow_hosts",
)  # fmt: skip
LIVE = (
    "max_body_mb", "lease_s", "shutdown_grace_s", "scale_interval_s", "delay_ms", "monitor_interval_s",
    "allow_uids", "allow_users", "allow_remote",
)  # fmt: skip
FIXED_IN = {"forecast": ("collect", "history"), "profiles": ("enabled", "path")}  # open stores, collectors
# A change of these replaces the spec's servers (rolling); any other spec key applies at once.
LAUNCH_KEYS = ("command", "job_script", "script_sha", "env", "cwd", "isolate", "resources", "options")
_SPEC_FIELDS = tuple(f.name for f in fields(ServerSpec) if f.name != "name")
_LIMIT_FIELDS = frozenset(f.name for f in fields(SpecLimits)) - {"name", "cpus", "max_time_limit_s"}
RESTART = "cannot change while running (restart the balancer to change {})"


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # spec -> its changed keys
    relaunch: tuple[str, ...] = ()  # changed specs whose servers are replaced
    settings: tuple[str, ...] = ()  # live settings changed, "section.key"
    fixed: tuple[str, ...] = ()  # settings that cannot change live but did: the reload is refused


def diff_config(old: BalancerConfig, new: BalancerConfig) -> ConfigDiff:
    """What changed from ``old`` to ``new`` (both as parsed, before "auto" resources are sized)."""
    fixed = [f"balancer.{k}" for k in FIXED if getattr(old, k) != getattr(new, k)]
    if old.scheduler == new.scheduler and old.backend_options != new.backend_options:
        fixed.append("backend")
    settings = [f"balancer.{k}" for k in LIVE if getattr(old, k) != getattr(new, k)]
    for section in ("forecast", "notify", "profiles"):
        a, b = getattr(old, section), getattr(new, section)
        for f in fields(a):
            if f.name == "rules":
                settings += [f"forecast.{r.name}" for r in fields(a.rules)
                             if getattr(a.rules, r.name) != getattr(b.rules, r.name)]  # fmt: skip
            elif getattr(a, f.name) != getattr(b, f.name):
                key = f"{section}.{f.name}"
                (fixed if f.name in FIXED_IN.get(section, ()) else settings).append(key)
    before = {s.name: s for s in old.servers}
    after = {s.name: s for s in new.servers}
    changed: dict[str, tuple[str, ...]] = {}
    relaunch = []
    for name, spec in after.items():
        was = before.get(name)
        if was is None or was == spec:
            continue
        keys = [k for k in _SPEC_FIELDS if getattr(was, k) != getattr(spec, k)]
        changed[name] = tuple(dict.fromkeys("job_script" if k == "script_sha" else k for k in keys))
        if any(k in LAUNCH_KEYS for k in keys):
            relaunch.append(name)
    return ConfigDiff(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=changed,
        relaunch=tuple(relaunch),
        settings=tuple(settings),
        fixed=tuple(fixed),
    )


def reload_decision(e: dict[str, Any]) -> dict[str, Any]:
    """A ``config.reloaded`` as a line among the scaler's decisions: "a, b  operator  reload by ann"."""
    specs = ", ".join(dict.fromkeys([*e.get("added", ()), *e.get("removed", ()), *e.get("changed", {})]))
    by = e.get("who") or e.get("remote") or e.get("trigger")
    return {"t": e["t"], "spec": specs or "config", "action": "operator", "reason": f"reload by {by}"}


def merge_limits(current: Limits, cfg: BalancerConfig, diff: ConfigDiff, keep: set[str]) -> Limits:
    """The scaler's limits after a reload: a new spec's from the file; a changed spec's current ones
    (an operator's ``scale`` included) with only the keys the file changed; ``keep``: removed specs
    whose servers still drain, held at zero."""
    fresh = {lim.name: lim for lim in Limits.from_config(cfg).specs}
    now = {lim.name: lim for lim in current.specs}
    out = []
    for s in cfg.servers:
        lim = now.get(s.name)
        if lim is None or s.name in diff.added:
            out.append(fresh[s.name])
            continue
        keys = set(diff.changed.get(s.name, ())) & _LIMIT_FIELDS
        if "resources" in diff.changed.get(s.name, ()):
            keys |= {"cpus", "max_time_limit_s"}
        out.append(dataclasses.replace(lim, **{k: getattr(fresh[s.name], k) for k in keys}))
    for name in keep:
        if name in now:
            out.append(dataclasses.replace(now[name], min_servers=0, max_servers=0))
    return Limits(tuple(out), cfg.backend_options.time_limit_margin_s, cfg.rules)


@dataclass(frozen=True)
class ConfigSource:
    """The file a balancer was started from, as parsed ("auto" resources unsized: what the next
    file is compared with), its digest and the command-line options that win over every reload.
    No path: started without a file (tests, ``load-balancer``)."""

    parsed: BalancerConfig
    path: str | None = None
    digest: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reloadable:
    """The parts a reload changes; each takes its new settings through its own ``reconfigure``."""

    bus: EventBus
    pool: Pool
    backend: Backend
    scaler: Scaler
    calls: Calls
    control: Control
    gate: PeerGate
    forecast: ForecastService
    workload: UsageAggregator
    notify: Notifications
    listeners: Callable[[], Sequence[FrontServer]]  # the client and control listeners (body limit)
    files: FileRegistration | None = None
    monitor: CapacityMonitor | None = None
    history: History | None = None
    profiler: Profiler | None = None


class Reloader:
    """One reload at a time, from the operator API or SIGHUP; keeps the file's path, digest and age,
    and the configuration in force (``cfg``)."""

    def __init__(self, parts: Reloadable, cfg: BalancerConfig, source: ConfigSource) -> None:
        self.parts = parts
        self.cfg = cfg  # in force: "auto" resources sized
        self.raw = source.parsed  # as parsed, "auto" unsized: what the next file is compared with
        self.path = source.path
        self.digest = source.digest
        self.overrides = source.overrides  # serve's command-line options win over every reload too
        self.loaded_at = time.time()
        self.reloads = 0
        self.rejected = 0
        self.last_rejected: str | None = None
        self._lock = asyncio.Lock()

    def status(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "hash": self.digest,
            "loaded_at": round(self.loaded_at, 3),
            "age_s": round(time.time() - self.loaded_at, 1),
            "reloads": self.reloads,
            "rejected": self.rejected,
            "last_rejected": self.last_rejected,
        }

    async def reload(
        self, path: str | None = None, trigger: str = "api", who: str | None = None, remote: str | None = None
    ) -> tuple[bool, dict[str, Any] | str]:
        """(True, what was applied) or (False, the reason, one line); both journaled."""
        async with self._lock:
            where = path or self.path
            try:
                doc = await self._reload(path, {"trigger": trigger, "who": who, "remote": remote})
            except ConfigError as exc:
                reason = str(exc)
            except Exception as exc:  # a check that broke (a scheduler command, the profile store)
                reason = f"reload failed: {type(exc).__name__}: {exc}"
            else:
                return True, {"ok": True, **doc}
            self.rejected += 1
            self.last_rejected = reason
            self.parts.bus.emit(
                Ev.CONFIG_REJECTED, path=where, trigger=trigger, who=who, remote=remote, reason=reason
            )
            return False, reason

    async def _reload(self, path: str | None, who: dict[str, Any]) -> dict[str, Any]:
        from balancer.profiling.autosize import size_specs
        from balancer.profiling.workload import journal_priors

        path = path or self.path
        if path is None:
            msg = "the balancer was started without a configuration file: give one (reload --config PATH)"
            raise ConfigError("reload", msg)
        new, digest = await read_off_loop(path, self.overrides)
        diff = diff_config(self.raw, new)
        if diff.fixed:
            raise ConfigError(", ".join(diff.fixed), RESTART.format("them" if len(diff.fixed) > 1 else "it"))
        p = self.parts
        fresh = [s for s in new.servers if s.name in diff.added or s.name in diff.relaunch]
        await p.backend.check_specs(fresh)
        sized: dict[str, ServerSpec] = {}
        if fresh:
            done = await size_specs(dataclasses.replace(new, servers=tuple(fresh)), p.bus)
            sized = {s.name: s for s in done.servers}
        # Everything is checked: from here on nothing awaits until the whole difference is applied.
        current = {name: rt.spec for name, rt in p.pool.specs.items()}
        specs = []
        for s in new.servers:
            if s.name in sized:
                specs.append(sized[s.name])
            elif s.name in diff.changed:  # limits only: keep the resources sized at its start
                specs.append(dataclasses.replace(s, resources=current[s.name].resources))
            else:
                specs.append(current[s.name])
        cfg = dataclasses.replace(new, servers=tuple(specs))
        replacing = self._apply(cfg, diff)
        self.raw, self.path, self.digest = new, str(path), digest
        self.loaded_at = time.time()
        self.reloads += 1
        doc = {
            "path": self.path,
            "hash": digest,
            "added": list(diff.added),
            "removed": list(diff.removed),
            "changed": {k: list(v) for k, v in diff.changed.items()},
            "replacing": replacing,
            "settings": list(diff.settings),
        }
        p.bus.emit(Ev.CONFIG_RELOADED, **who, **doc)  # before any server the change starts
        if fresh:  # the workload class of a new command: the prior again until it is measured
            store = p.profiler.store if p.profiler is not None else None
            try:
                await journal_priors([sized[s.name] for s in fresh], p.bus, p.workload, store)
            except Exception as exc:  # applied already: a prior that cannot be read is not a rejection
                p.bus.emit(Ev.BALANCER_ERROR, where="reload", error=f"{type(exc).__name__}: {exc}", count=1)
        return doc

    def _apply(self, cfg: BalancerConfig, diff: ConfigDiff) -> dict[str, int]:
        p = self.parts
        pool = p.pool
        # Backend and profiler first: the next server of a new or changed spec is theirs to know.
        p.backend.reconfigure(cfg)
        if p.profiler is not None:
            p.profiler.reconfigure(cfg)
        by_name = {s.name: s for s in cfg.servers}
        stale: set[str] = set()  # models whose cached metadata a new command may answer otherwise
        for name in diff.removed:
            stale |= pool.specs[name].models
            pool.remove_spec(name, f"server spec '{name}' was removed by a config reload")
        for name in diff.added:
            pool.add_spec(by_name[name])
        replacing = {}
        for name in diff.changed:
            relaunch = name in diff.relaunch
            if relaunch:
                stale |= pool.specs[name].models
                p.workload.forget(name)  # a new command's class is measured afresh
            outdated = pool.update_spec(by_name[name], relaunch)
            if relaunch:
                replacing[name] = len(outdated)
        draining = {n for n, rt in pool.specs.items() if rt.removed}
        limits = merge_limits(p.scaler.limits, cfg, diff, draining)
        p.scaler.reconfigure(limits, cfg.scale_interval_s, cfg.lease_s, cfg.monitor_interval_s)
        self._settings(cfg, diff)
        p.calls.reconfigure(cfg.max_body_mb, stale)
        for m in stale:
            pool.model_sizes.pop(m, None)
        self.cfg = cfg
        pool.changed()
        return replacing

    def _settings(self, cfg: BalancerConfig, diff: ConfigDiff) -> None:
        """The live [balancer], [forecast] and [notify] settings, to the parts that use them."""
        p = self.parts
        keys = set(diff.settings)
        p.control.reconfigure(cfg.lease_s)
        if p.files is not None:
            p.files.reconfigure(cfg.lease_s)
        for front in p.listeners():
            front.reconfigure(cfg.max_body_bytes)
        if keys & {"balancer.allow_uids", "balancer.allow_users", "balancer.allow_remote"}:
            p.gate.reconfigure(cfg.allow_uids, cfg.allow_users, cfg.allow_remote)
        trained = ("grid_s", "horizon_s", "min_history_s", "forecaster", "partition", "retention_days")
        p.forecast.reconfigure(cfg.forecast, retrain=any(f"forecast.{k}" in keys for k in trained))
        if p.monitor is not None:
            p.monitor.reconfigure(cfg.forecast.collect_interval_s)
        if p.history is not None:
            p.history.reconfigure(cfg.forecast.retention_days * 86400.0)
        if any(k.startswith("notify.") for k in keys):
            p.notify.reconfigure(cfg.notify)  # [profiles]: profiler.reconfigure took them in _apply


READ_TIMEOUT_S = 10.0  # a file on a hung file system: the reload is rejected, the reload lock freed


async def read_off_loop(path: str, overrides: dict[str, Any]) -> tuple[BalancerConfig, str]:
    """``read_config`` on a daemon thread, given up after READ_TIMEOUT_S: a read stuck in the
    kernel (a hung file system) then holds neither the reload lock nor the process at its exit, as
    a thread of the default executor would."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[BalancerConfig, str]] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)

    def work() -> None:
        try:
            result, exc = read_config(path, **overrides), None
        except BaseException as e:
            result, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=work, name="config-read", daemon=True).start()
    try:
        return await asyncio.wait_for(done, READ_TIMEOUT_S)
    except TimeoutError:
        raise ConfigError(path, f"cannot read: no answer within {READ_TIMEOUT_S:g} s") from None
