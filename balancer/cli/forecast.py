"""``balancer forecast status|enable|disable|override|clear|backtest``.

All but ``backtest`` talk to a running balancer's ``/api/forecast`` with its token, found in its run
directory (``--run-dir``, default: the newest one under ``.balancer-runs``) or given as ``--url`` and
``UMBRIDGE_BALANCER_TOKEN``. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from balancer import units
from balancer.cli.apiclient import CliError, call, command, fig, target_args


def add_forecast_parser(sub: Any) -> None:
    p = sub.add_parser(
        "forecast", help="the capacity forecast (capacity = idle + ours): status, switches, backtests"
    )
    fsub = p.add_subparsers(dest="forecast_command", required=True, parser_class=type(p))
    run = command(_run)
    for name, help_ in (
        ("status", "show the forecast and whether the scaler uses it"),
        ("enable", "let the scaler use the forecast"),
        ("disable", "scale by demand only"),
        ("clear", "drop the override"),
    ):
        q = fsub.add_parser(name, help=help_)
        target_args(q)
        q.set_defaults(func=run, action=name)
    q = fsub.add_parser(
        "override", help="set the idle CPUs by hand until an expiry (capacity = them + what we hold)"
    )
    target_args(q)
    q.add_argument("--idle-cpus", type=float, required=True, help="idle CPUs to assume (0: cluster full)")
    q.add_argument("--idle-gpus", type=float, help="idle GPUs to assume")
    q.add_argument("--for", dest="duration", required=True, help="how long: seconds or 30m, 2h, 1d")
    q.add_argument("--reason", default="", help="journaled with the override")
    q.set_defaults(func=run, action="override")
    try:
        from balancer.capacity.backtest import add_backtest_parser
    except ImportError:
        return
    add_backtest_parser(fsub)


def parse_duration(text: str) -> float:
    """Seconds (> 0) from "90", "30m", "2h", "1d" (``units.parse_duration``)."""
    try:
        return units.parse_duration(text)
    except ValueError:
        raise CliError(f"not a duration: {text!r} (use seconds or 30m, 2h, 1d; > 0)") from None


def request(url: str, token: str, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return call(url, token, method, "/api/forecast", body)


def _run(args: argparse.Namespace, url: str, token: str) -> tuple[Any, str]:
    action = args.action
    if action == "status":
        doc = request(url, token, "GET")
    elif action in ("enable", "disable"):
        doc = request(url, token, "PUT", {"enabled": action == "enable"})
    elif action == "clear":
        doc = request(url, token, "DELETE")
    else:
        ov: dict[str, Any] = {"idle_cpus": args.idle_cpus, "expires_in_s": parse_duration(args.duration)}
        if args.idle_gpus is not None:
            ov["idle_gpus"] = args.idle_gpus
        if args.reason:
            ov["reason"] = args.reason
        doc = request(url, token, "PUT", {"override": ov})
    return doc, format_status(doc)


def format_status(doc: dict[str, Any]) -> str:
    """A few readable lines: the state, the model and its backtest error, the override, what's next."""
    lines = [f"forecast: {doc.get('state')} ({'in use' if doc.get('in_use') else 'not in use'})"]
    if doc.get("model"):
        trained = time.strftime("%Y-%m-%d %H:%M", time.localtime(doc["trained_at"]))
        mae, base = doc.get("backtest_mae"), doc.get("baseline_mae")
        bname = doc.get("baseline") or "seasonal-naive-day"
        err = (
            f", backtest MAE {mae:.2f} CPUs (best baseline {bname} {base:.2f})"
            if mae is not None and base
            else ""
        )
        lines.append(f"model: {doc['model']}, trained {trained} on {doc['history_s'] / 86400:.1f} days{err}")
    ov = doc.get("override")
    if ov:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ov["expires_at"]))
        why = f" ({ov['reason']})" if ov.get("reason") else ""
        lines.append(f"override: {fig(ov['idle_cpus'])} idle CPUs until {until}{why}")
    held = doc.get("held_cpus") or 0.0
    if doc.get("observed_idle_cpus") is not None:
        cap = doc.get("observed_capacity_cpus")
        cap = doc["observed_idle_cpus"] + held if cap is None else cap
        lines.append(
            f"observed now: capacity {fig(cap)} CPUs = {fig(doc['observed_idle_cpus'])} idle"
            f" + {fig(held)} ours"
        )
    elif held:
        lines.append(f"ours now: {fig(held)} CPUs held by our running jobs")
    nxt = doc.get("next", {}).get("idle") or []
    if nxt:
        step = doc.get("grid_s", 900) / 60
        lines.append(
            f"capacity (idle + ours), next {len(nxt)} x {fig(step)} min: " + " ".join(f"{v:.0f}" for v in nxt)
        )
    return "\n".join(lines)
