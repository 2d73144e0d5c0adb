"""Auto sizing at start and on reload: a spec's ``"auto"`` resources from the profile store.

The sizing itself is the pure ``sizing.size``; this is its I/O around it: read the spec's figures
in a worker thread (a slow disk never stalls the loop), journal each choice as ``profile.sized``,
and start with the defaults, saying why, when the store cannot be read.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from balancer.observe.events import Ev, EventBus
from balancer.profiling.sizing import size
from balancer.profiling.store import ProfileStore, default_profiles_path, spec_hash


def open_store(settings: Any) -> ProfileStore:
    """The store at ``[profiles] path``, or the default one under ``$XDG_DATA_HOME``."""
    path = Path(settings.path).expanduser() if settings.path else default_profiles_path()
    return ProfileStore(path)


async def size_specs(cfg: Any, bus: EventBus) -> Any:
    """``cfg`` with every ``"auto"`` resource sized from the store (journaled as ``profile.sized``),
    before any backend sees the specs."""
    if not any(s.resources.auto for s in cfg.servers):
        return cfg
    settings = cfg.profiles

    def read() -> dict[str, dict[str, Any] | None]:
        if not settings.enabled:
            return {}
        with open_store(settings) as store:
            return {s.name: store.spec_figures(s.name, spec_hash(s)) for s in cfg.servers if s.resources.auto}

    try:
        figures = await asyncio.to_thread(read)
    except Exception as exc:  # sqlite3.Error, OSError: the run starts with the defaults, and says why
        bus.emit(Ev.BALANCER_ERROR, where="profiles", error=f"{type(exc).__name__}: {exc}", count=1)
        figures = {}
    specs = []
    for spec in cfg.servers:
        if spec.resources.auto:
            res, reasons = size(spec.resources, figures.get(spec.name), settings)
            spec = dataclasses.replace(spec, resources=res)
            for r in reasons:
                bus.emit(Ev.PROFILE_SIZED, spec=spec.name, field=r.field, value=r.value, source=r.source)
        specs.append(spec)
    return dataclasses.replace(cfg, servers=tuple(specs))
