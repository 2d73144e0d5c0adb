"""The workload class of each spec in a balancer journal: its prior from the source and the
measured verdict with the figures behind it (``workload.prior``, ``workload.classified``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def workload_rows(path: Path) -> list[dict[str, Any]]:
    """Per spec: prior, measured class (the final verdict, else the last), why, key figures."""
    rows: dict[str, dict[str, Any]] = {}
    with open(path, "rb") as fh:
        for line in fh:
            if b'"workload.' not in line:
                continue  # most lines are calls: skip them before parsing
            try:
                e = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            spec = e.get("spec")
            if not isinstance(spec, str):
                continue
            empty: dict[str, Any] = {"spec": spec, "prior": None, "measured": None, "why": "", "figures": {}}
            r = rows.setdefault(spec, empty)
            if e.get("ev") == "workload.prior":
                r["prior"] = e.get("cls")
            elif e.get("ev") == "workload.classified" and (e.get("final") or not r.get("final")):
                r.update(measured=e.get("cls"), why=e.get("why", ""), figures=e.get("figures") or {},
                         final=bool(e.get("final")))  # fmt: skip
    return list(rows.values())


def format_workload(name: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = [f"workload classes ({name}):", f"  {'spec':20} {'prior':7} {'measured':9} why"]
    for r in rows:
        f = r["figures"]
        keys = ("cpu_per_slot", "io_mb_s", "rss_peak_mb", "preempted", "samples")
        figs = ", ".join(f"{k} {f[k]}" for k in keys if k in f)
        out.append(f"  {r['spec']:20} {r['prior'] or '-':7} {r['measured'] or '-':9} {r['why']}")
        if figs:
            out.append(f"  {'':20} {figs}")
    return "\n".join(out)
