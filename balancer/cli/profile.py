"""``balancer profile show|export``: the model profiles in the store, as a table, JSON or CSV.

Reads the store directly (no running balancer needed). Errors: one line on stderr, exit status 2.

The store is one per user, shared by every configuration on purpose: a profile is keyed by spec
name AND the hash of its command (or job script), so two projects never mix different models,
and the same model run from two projects sizes its ``"auto"`` resources from both. What a user
must not see is another project's specs: ``show`` and ``export`` list the specs of the current
configuration (``--config``, else the one running balancer's), ``--all`` everything, and the
table's first line names the store and what it shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from balancer.cli.apiclient import EXIT_USAGE
from balancer.cli.operator import _dur, _table
from balancer.config.parse import read_config
from balancer.config.schema import ConfigError
from balancer.control import registry
from balancer.profiling.sizing import MIB
from balancer.profiling.store import ProfileStore, default_profiles_path, profiles, profiles_path, spec_hash

FLAT = ("spec", "spec_hash", "model", "calls", "runs", "cpu_s_per_call", "cpu_util_p90", "rss_peak_bytes",
        "gpu_mem_peak_bytes", "startup_p50_s", "startup_max_s", "lifetime_max", "cpu_s", "wall_s",
        "io_read_bytes", "io_write_bytes", "ctx_vol", "ctx_invol", "minflt", "majflt", "iowait_mean_pct",
        "workload_class", "updated_at")  # fmt: skip


def add_profile_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="model profiles: what each spec and model cost in earlier runs")
    ps = p.add_subparsers(dest="profile_command", required=True, parser_class=type(p))
    for name, help_ in (
        ("show", "one line per spec and model: calls, compute time per op, CPU/call, peak RSS, start-up"),
        ("export", "every figure, as CSV (default) or JSON lines (--json)"),
    ):
        q = ps.add_parser(name, help=help_)
        q.add_argument("--json", action="store_true", help="JSON instead of a table / CSV")
        q.add_argument("--path", help="the store (default: the configuration's [profiles] path, else "
                       "$XDG_DATA_HOME/umbridge-balancer/profiles.sqlite)")  # fmt: skip
        q.add_argument("--config", help="only this configuration's specs (default: the running balancer's)")
        q.add_argument("--all", action="store_true", help="every spec in the store, of every configuration")
        q.set_defaults(func=_run, action=name)


def _current_config(args: argparse.Namespace) -> str | None:
    """The configuration whose specs are shown: ``--config``, else the one running balancer's."""
    if args.config:
        return str(args.config)
    configs = {e.config for e in registry.running() if e.config}
    return configs.pop() if len(configs) == 1 else None


def _scope(args: argparse.Namespace) -> tuple[Path, set[tuple[str, str]] | None, str]:
    """(store path, the (spec, hash) pairs to show or None for all, what is shown in words)."""
    # an explicit --path alone shows that store whole; the running balancer's specs otherwise
    config = None if args.path and not args.config else _current_config(args)
    cfg = read_config(config)[0] if config is not None else None
    if args.path:
        path = Path(args.path).expanduser()
    else:
        path = profiles_path(cfg.profiles) if cfg is not None else default_profiles_path()
    if cfg is None or args.all:
        alone = args.all or args.path
        return path, None, "every spec" + ("" if alone else " (no --config and no single running balancer)")
    keys = {(s.name, spec_hash(s)) for s in cfg.servers}
    return path, keys, f"the specs of {Path(str(config)).resolve()} (--all for every spec)"


def _run(args: argparse.Namespace) -> int:
    try:
        path, keys, shown = _scope(args)
    except ConfigError as exc:
        print(f"balancer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not path.is_file():
        print(f"balancer: error: no profile store at {path}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with ProfileStore(path) as store:
            recs = list(profiles(store))
    except Exception as exc:  # sqlite3.DatabaseError: not a store
        print(f"balancer: error: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    total = len(recs)
    if keys is not None:
        recs = [r for r in recs if (r["spec"], r["spec_hash"]) in keys]
    if args.action == "show":
        if args.json:
            print(json.dumps(recs, indent=2))
        else:
            head = f"store {path} (shared by your configurations); showing {shown}"
            print(f"{head}: {len(recs)} of {total} rows")
            print(format_profiles(recs))
    elif args.json:
        for r in recs:
            print(json.dumps(r, separators=(",", ":")))
    else:
        _csv(recs)
    return 0


def _csv(recs: list[dict[str, Any]]) -> None:
    ops = sorted({op for r in recs for op in r["ops"]})
    cols = [*FLAT, *(f"{op}_{k}" for op in ops for k in ("n", "p50_s", "p90_s", "max_s"))]
    cols += [f"given_{k}" for k in ("cpus", "memory", "gpus", "time_limit")]
    w = csv.writer(sys.stdout)
    w.writerow(cols)
    for r in recs:
        row = [r.get(c) for c in FLAT]
        row += [r["ops"].get(op, {}).get(k) for op in ops for k in ("n", "p50_s", "p90_s", "max_s")]
        given = r.get("resources") or {}
        row += [given.get(k) for k in ("cpus", "memory", "gpus", "time_limit")]
        w.writerow(["" if v is None else v for v in row])


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s"


def _op(op: str, o: dict[str, Any]) -> str:
    return f"{op} {_s(o['p50_s'])}/{_s(o['p90_s'])}/{_s(o['max_s'])}"


def format_profiles(recs: list[dict[str, Any]]) -> str:
    if not recs:
        return "no profile yet"
    rows = [["SPEC", "MODEL", "CALLS", "OP p50/p90/max", "CPU-S/CALL", "CORES p90", "PEAK RSS", "START-UP",
             "CLASS", "GIVEN", "RUNS", "UPDATED"]]  # fmt: skip
    for r in recs:
        ops = "; ".join(_op(op, o) for op, o in r["ops"].items())
        g = r.get("resources") or {}
        given = f"{g.get('cpus')} cpu, {g.get('memory') or '-'}, {g.get('gpus') or 0} gpu"
        given += f", {g.get('time_limit') or '-'}"
        cpc, util, rss = r.get("cpu_s_per_call"), r.get("cpu_util_p90"), r.get("rss_peak_bytes")
        rows.append([
            r["spec"], r["model"], str(r["calls"]), ops or "-",
            "-" if cpc is None else f"{cpc:.3f}", "-" if util is None else f"{util:.2f}",
            f"{rss / MIB:.0f}M" if rss else "-",
            f"{_s(r.get('startup_p50_s'))}/{_s(r.get('startup_max_s'))}",
            r.get("workload_class") or "-", given, str(r["runs"]),
            _dur(time.time() - r["updated_at"]) + " ago",
        ])  # fmt: skip
    return _table(rows)
