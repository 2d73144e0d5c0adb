"""``balancer status|servers|drain|stop|scale|pause|resume``: the operator's commands.

Each finds the running balancer from its run directory (``apiclient``), calls the operator API and
prints one screen (or the API's JSON with ``--json``). Errors: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from balancer.cli.apiclient import CliError, call, command, target_args

STATES = ("requested", "starting", "registered", "ready", "draining", "preempted", "stopping")
STARTING = ("requested", "starting", "registered")  # one column on the status screen


def add_operator_parsers(sub: Any) -> None:
    p = sub.add_parser("status", help="one screen: specs, servers by state, queues, calls/s, errors")
    target_args(p)
    p.set_defaults(func=command(_status))
    p = sub.add_parser("servers", help="every live server: state, job, host, calls, time left")
    target_args(p)
    p.set_defaults(func=command(_servers))
    p = sub.add_parser(
        "drain", help="let a server finish its calls, then stop it (demand starts a new one as needed)"
    )
    p.add_argument("server", help="server id (see `balancer servers`)")
    target_args(p)
    p.set_defaults(func=command(_server_action), action="drain")
    p = sub.add_parser(
        "stop", help="stop the balancer (calls in flight finish, then it exits), or with SERVER that "
        "server now (its calls in flight are retried on another server)",
    )  # fmt: skip
    p.add_argument("server", nargs="?", help="server id (see `balancer servers`); without it: the balancer")
    target_args(p)
    p.set_defaults(func=_stop, action="stop")
    p = sub.add_parser("scale", help="change a spec's limits while it runs")
    p.add_argument("spec", help="server spec name")
    p.add_argument("--min", type=int, dest="min_servers", help="servers kept warm at all times")
    p.add_argument("--max", type=int, dest="max_servers", help="most servers at once")
    p.add_argument("--backlog", type=int, help="most starts in flight at once")
    target_args(p)
    p.set_defaults(func=command(_scale))
    for name, help_ in (
        ("pause", "start no servers of a spec (running ones serve, its waiting calls wait)"),
        ("resume", "start servers of a paused or held spec again"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("spec", help="server spec name")
        target_args(p)
        p.set_defaults(func=command(_spec_action), action=name)
    p = sub.add_parser("reload", help="re-read the configuration file, apply what changed (no restart)")
    p.add_argument("--config", help="read this file instead (it becomes the one later reloads read)")
    target_args(p)
    p.set_defaults(func=command(_reload))


def _stop(args: argparse.Namespace) -> int:
    """``stop SERVER`` stops that server; plain ``stop`` the balancer (``balancer serve --detach``'s
    end), found in the registry like every command."""
    if args.server:
        return command(_server_action)(args)
    from balancer.cli.daemon import stop_balancer

    return stop_balancer(args)


def _status(args: argparse.Namespace, url: str, token: str) -> tuple[Any, str]:
    doc = call(url, token, "GET", "/api/status")
    return doc, format_status(doc, url)


def _servers(args: argparse.Namespace, url: str, token: str) -> tuple[Any, str]:
    doc = call(url, token, "GET", "/api/servers")
    return doc, format_servers(doc["servers"])


def _server_action(args: argparse.Namespace, url: str, token: str) -> tuple[Any, str]:
    doc = call(url, token, "POST", f"/api/servers/{args.server}/{args.action}", {})
    return doc, f"server {doc['server']}: {doc['was']} -> {doc['state']}"


def _scale(args: argparse.Namespace, url: str, token: str) -> tuple[Any, str]:
    keys = ("min_servers", "max_servers", "backlog")
    body = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if not body:
        raise CliError("give at least one of --min, --max, --backlog")
    for k, v in body.items():
        if v < 0:
            raise CliError(f"--{k.split('_')[0]} must be >= 0, got {v}")
    doc = call(url, token, "POST", f"/api/specs/{args.spec}/scale", body)
    text = f"spec {doc['spec']}: min {doc['min_servers']}, max {doc['max_servers']}, backlog {doc['backlog']}"
    return doc, text


def _reload(args: argparse.Namespace, url: str, token: str) -> tuple[Any, str]:
    from balancer.observe.console import describe_reload

    body = {"path": str(Path(args.config).resolve())} if args.config else {}
    doc = call(url, token, "POST", "/api/reload", body)
    return doc, f"balancer: {describe_reload(doc)}"


def _spec_action(args: argparse.Namespace, url: str, token: str) -> tuple[Any, str]:
    doc = call(url, token, "POST", f"/api/specs/{args.spec}/{args.action}", {})
    if args.action == "pause":
        return doc, f"spec {doc['spec']}: paused" + ("" if doc["changed"] else " (it already was)")
    flags = (("unpaused", doc.get("unpaused")), ("held spec resumed", doc.get("resumed")))
    what = [w for w, on in flags if on]
    return doc, f"spec {doc['spec']}: " + (", ".join(what) if what else "was neither paused nor held")


# -- formatting -------------------------------------------------------------------------------------
def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 0:
        return "over"
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def format_status(doc: dict[str, Any], url: str) -> str:
    calls = doc.get("calls", {})
    lines = [
        f"balancer {url}, up {_dur(calls.get('uptime_s'))}, {doc.get('inflight', 0)} calls in flight",
        f"calls: {calls.get('completed', 0)} completed, {calls.get('failed', 0)} failed, "
        f"{calls.get('per_s', 0):.1f}/s over the last minute; "
        f"{calls.get('server_failures', 0)} server failures",
    ]
    rows = [["SPEC", "STATE", "READY", "STARTING", "DRAINING", "STOPPING", "MIN", "MAX", "BACKLOG", "MODELS"]]
    for name, sp in doc.get("specs", {}).items():
        flags = (("removed", sp.get("removed")), ("held", sp["held"]), ("paused", sp["paused"]))
        state = next((f for f, on in flags if on), "running")
        n = sp["servers"]
        counts = [str(n.get("ready", 0)), str(sum(n.get(s, 0) for s in STARTING))]
        counts += [str(n.get("draining", 0)), str(n.get("stopping", 0))]
        limits = [str(sp["min_servers"]), str(sp["max_servers"]), str(sp["backlog"])]
        rows.append([name, state, *counts, *limits, ",".join(sp["models"]) or "?"])
    lines += ["", _table(rows)]
    for name, sp in doc.get("specs", {}).items():  # relative commands start from here
        if sp.get("cwd"):
            lines.append(f"cwd: {name}: {sp['cwd']}")
    conf = doc.get("config")
    if conf:
        last = str(conf.get("last_rejected"))
        last = last if len(last) <= 90 else last[:87] + "..."
        rej = f", {conf['rejected']} rejected, last: {last}" if conf.get("rejected") else ""
        lines.append(
            f"config: {conf.get('path') or '(none)'}  hash {conf.get('hash') or '-'}  loaded "
            f"{_dur(conf.get('age_s'))} ago  ({conf.get('reloads', 0)} reloads{rej})"
        )
    stores = doc.get("stores")
    if stores:  # shared by the user's configurations on purpose: say so where they are named
        where = f"profiles {stores.get('profiles')}, history {stores.get('history')}"
        lines.append(f"stores: {where} ({stores.get('shared')})")
    queues = {m: n for m, n in doc.get("queues", {}).items() if n}
    waiting = ", ".join(f"{m} {n}" for m, n in queues.items()) if queues else "no call waits"
    lines += ["", f"waiting: {waiting}"]
    for name, why in doc.get("held", {}).items():
        lines.append(f"held: {name}: {why}")
    for name, f in (doc.get("failures") or {}).items():  # failed starts in a row, not (yet) held
        if name not in doc.get("held", {}) and f.get("failures"):
            lines.append(f"failed starts: {name}: {f['failures']} in a row, last: {f['reason']}")
    sc = doc.get("scaler", {})
    if sc.get("errors"):
        lines.append(f"scaler errors: {sc['errors']} (last: {sc.get('error')})")
    fc = doc.get("forecast")
    if fc:
        lines.append(f"forecast: {fc.get('state')} ({'in use' if fc.get('in_use') else 'not in use'})")
    for name, sp in doc.get("specs", {}).items():  # workload classes (workload.py)
        w = sp.get("workload") or {}
        if w.get("class"):
            why = f": {w['why']}" if w.get("why") else ""
            lines.append(f"workload: {name}: {w['class']} ({w.get('source')}{why})")
    for m in (doc.get("profiles") or {}).get("mismatches", []):  # given far from used (profiler.py)
        lines.append(f"resources: {m['spec']}: {m['advice']}")
    return "\n".join(lines)


def format_servers(servers: list[dict[str, Any]]) -> str:
    if not servers:
        return "no live server"
    gpus = any(s.get("gpus") for s in servers)  # a GPUS column only where some server has one
    rows = [["SERVER", "SPEC", "STATE", "CALLS", "BUSY", "AGE", "TIME LEFT", "JOB", "HOST"] + ["GPUS"] * gpus]
    for s in servers:
        rows.append(
            [
                s["id"],
                s["spec"],
                s["state"],
                str(s["calls"]),
                f"{s['outstanding']}/{s['concurrency']}",
                _dur(s["age_s"]),
                _dur(s["time_left_s"]),
                str(s["job"] or "-"),
                str(s["host"] or "-"),
            ]
            + [_gpus(s.get("gpus"))] * gpus
        )
    return _table(rows)


def _gpus(gpus: list[dict[str, Any]] | None) -> str:
    """``0:87%`` per device (utilisation from the server's last usage sample, where reported)."""
    if not gpus:
        return "-"
    return ",".join(f"{g['device']}:{g['util_pct']:.0f}%" if "util_pct" in g else str(g["device"])
                    for g in gpus)  # fmt: skip
