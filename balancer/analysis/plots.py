"""Plots of one or more runs as PNG, SVG or PDF (matplotlib without pyplot: works on headless login nodes).

Every function returns a ``Figure`` so tests and notebooks can inspect it; ``save_figures`` writes
them. Figures are created without pyplot, so no global backend is switched and nothing has to be
closed: a bare ``Figure`` picks the canvas of the format it is saved in (Agg, SVG, PDF). Runs are
named by ``labels`` where given (a paper's legend says "baseline", not a run directory's time
stamp), and counts (calls waiting, servers) get integer ticks. Each figure has a title, axis labels
with units and a legend where more than one thing is drawn. Very large runs are drawn from a
bounded number of calls (stated in the title) to keep plotting fast.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from balancer.analysis.errors import AnalysisError
from balancer.analysis.model import Run, live_servers, queue_length
from balancer.analysis.summary import unique_names

#: Most call bars drawn in one Gantt chart; beyond this the first calls in time are shown.
MAX_GANTT_CALLS = 20_000
#: Most server rows in one Gantt chart.
MAX_GANTT_ROWS = 200
#: The formats ``save_figures`` writes (matplotlib's own canvases: no extra dependency).
FORMATS = ("png", "svg", "pdf")


def run_names(runs: Sequence[Run], labels: Sequence[str] | None = None) -> list[str]:
    """The name each run has in legends and titles: its label, else its unique run name."""
    if not labels:
        return unique_names(runs)
    if len(labels) != len(runs):
        raise AnalysisError(f"{len(labels)} label(s) given for {len(runs)} run(s): give one --label per run")
    seen: dict[str, int] = {}  # two runs labelled alike still get a file each
    names = []
    for label in labels:
        n = seen.get(label, 0)
        seen[label] = n + 1
        names.append(label if n == 0 else f"{label} ({n + 1})")
    return names


def _log_bins(values: Sequence[np.ndarray], n: int = 40) -> np.ndarray:
    """Shared logarithmic bins over the positive values of all runs."""
    pos = np.concatenate([v[v > 0] for v in values]) if values else np.array([])
    if pos.size == 0:
        return np.logspace(-3, 0, n)
    lo, hi = pos.min(), pos.max()
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    return np.logspace(np.log10(lo), np.log10(hi), n)


def distributions(runs: Sequence[Run], labels: Sequence[str] | None = None) -> Figure:
    """Makespan and lag histograms of successful evaluations, one line per run, on log-log axes."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    names = run_names(runs, labels)
    for ax, col, label in ((axes[0], "makespan", "makespan"), (axes[1], "lag", "lag (makespan - compute)")):
        data = []
        for r in runs:
            c = r.calls
            sel = c["evaluation"].astype(bool) & (c["outcome"] == "ok")
            data.append(c.loc[sel, col].to_numpy(dtype=float))
        bins = _log_bins(data)
        drawn = False
        for name, v in zip(names, data, strict=True):
            v = v[np.isfinite(v) & (v > 0)]
            if v.size:
                ax.hist(v, bins=bins, histtype="step", linewidth=1.5, label=f"{name} (n={v.size})")
                drawn = True
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel(f"{label} [s]")
        ax.set_ylabel("calls per bin")
        ax.set_title(f"{label.split(' ')[0].capitalize()} distribution")
        if drawn:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
    fig.suptitle("Per-call latency of successful evaluations")
    return fig


def _plain_log_ticks(ax: Axes) -> None:
    """Log axes labelled in plain numbers (0.05, 0.1, 0.2; not 5x10^-2), with 2 and 5 between the
    decades labelled where the data span few decades: matplotlib's own minor labels overlap there."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        axis.set_major_formatter(plain)
        if 0 < lo and hi / lo < 1e3:
            axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            axis.set_minor_formatter(plain)
        else:
            axis.set_minor_formatter(NullFormatter())


def _lanes(intervals: pd.DataFrame) -> pd.Series:
    """Rows for intervals whose server is unknown: greedy interval partitioning into task slots."""
    order = intervals.sort_values("start")
    free_at: list[float] = []
    lane = {}
    for idx, start, end in zip(order.index, order["start"], order["end"], strict=True):
        for i, f in enumerate(free_at):
            if f <= start:
                free_at[i] = end
                lane[idx] = i
                break
        else:
            free_at.append(end)
            lane[idx] = len(free_at) - 1
    return pd.Series(lane).reindex(intervals.index).map(lambda i: f"slot {i + 1}")


def timeline(run: Run, label: str | None = None) -> Figure:
    """Gantt chart: each server's start-up and live time, with the calls it served on top."""
    servers = run.servers
    iv = run.intervals.dropna(subset=["start"]).copy()
    iv["end"] = iv["end"].fillna(run.end)
    truncated = len(iv) > MAX_GANTT_CALLS
    if truncated:
        iv = iv.nsmallest(MAX_GANTT_CALLS, "start")
    unknown = iv["server"].isna()
    if unknown.any():
        iv.loc[unknown, "server"] = _lanes(iv[unknown])
    rows = list(servers["server"]) + sorted(
        set(iv["server"]) - set(servers["server"]), key=lambda s: (len(s), s)
    )
    rows = rows[:MAX_GANTT_ROWS]
    y = {s: i for i, s in enumerate(rows)}
    fig = Figure(figsize=(12, max(3.0, min(0.3 * len(rows) + 1.5, 30))), layout="constrained")
    ax = fig.subplots()
    by_server = servers.set_index("server")
    for s in rows:
        if s not in by_server.index:
            continue
        rec = by_server.loc[s]
        req = rec["requested"] if pd.notna(rec["requested"]) else rec["started"]
        ready = rec["ready"]
        stop = rec["stopped"] if pd.notna(rec["stopped"]) else run.end
        if pd.notna(req) and pd.notna(ready) and ready > req:
            ax.broken_barh([(req, ready - req)], (y[s] - 0.4, 0.8), facecolors="#f2c18d")
        if pd.notna(ready):
            ax.broken_barh([(ready, stop - ready)], (y[s] - 0.4, 0.8), facecolors="#cfe3f5")
    # Thin white edges separate back-to-back calls; with thousands of calls they would hide the bars.
    edges = {"edgecolors": "white", "linewidth": 0.3} if len(iv) <= 2000 else {"edgecolors": "none"}
    for s, grp in iv[iv["server"].isin(y)].groupby("server"):
        spans = list(zip(grp["start"], grp["end"] - grp["start"], strict=True))
        ax.broken_barh(spans, (y[s] - 0.3, 0.6), facecolors="#1f5fa8", **edges)
    ax.set_yticks(range(len(rows)), rows, fontsize="small" if len(rows) < 40 else "xx-small")
    ax.set_ylim(-1, max(len(rows), 1))
    ax.invert_yaxis()
    ax.set_xlabel("time since start of run [s]")
    ax.set_ylabel("server" if not unknown.any() else "server / task slot")
    title = f"Timeline of {label or run.name}"
    if truncated:  # show only the window the drawn calls cover, or later servers would look idle
        window = float(iv["end"].max())
        ax.set_xlim(0, window)
        title += f" (first {MAX_GANTT_CALLS} calls: {window:.1f} s of {run.end:.1f} s)"
    ax.set_title(title)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color="#f2c18d", label="starting (requested to ready)"),
            Patch(color="#cfe3f5", label="ready, idle"),
            Patch(color="#1f5fa8", label="serving a call"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize="small",
    )
    return fig


def queue_and_servers(runs: Sequence[Run], labels: Sequence[str] | None = None) -> Figure:
    """Queue length and live servers over time, one line per run; counts on integer ticks."""
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    ax_q, ax_s = fig.subplots(2, 1, sharex=True)
    for name, r in zip(run_names(runs, labels), runs, strict=True):
        t, q = queue_length(r.calls, r.end)
        ax_q.step(
            np.concatenate([[0.0], t, [r.end]]),
            np.concatenate([[0.0], q, [q[-1] if q.size else 0]]),
            where="post",
            label=name,
        )
        t, n = live_servers(r.servers)
        ax_s.step(
            np.concatenate([[0.0], t, [r.end]]),
            np.concatenate([[0.0], n, [n[-1] if n.size else 0]]),
            where="post",
            label=name,
        )
    ax_q.set_xlabel("time since start of run [s]")
    ax_q.set_ylabel("calls waiting")
    ax_q.set_title("Queue length over time")
    ax_s.set_ylabel("live servers")
    ax_s.set_title("Live (ready) servers over time")
    ax_s.set_xlabel("time since start of run [s]")
    for ax in (ax_q, ax_s):  # no "2.5 servers"
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    return fig


def utilisation(runs: Sequence[Run], labels: Sequence[str] | None = None) -> Figure:
    """Busy and idle seconds per server, stacked, one panel per run; the overall figure in the title."""
    fig = Figure(figsize=(12, 3.2 * len(runs) + 0.5), layout="constrained")
    axes = fig.subplots(len(runs), 1, squeeze=False)
    for ax, name, r in zip(axes[:, 0], run_names(runs, labels), runs, strict=True):
        s = r.servers.head(MAX_GANTT_ROWS)
        util = r.summary().get("utilisation")
        x = np.arange(len(s))
        if s["busy"].notna().any():
            ax.bar(x, s["busy"].fillna(0), color="#1f5fa8", label="busy")
            ax.bar(x, s["idle"].fillna(0), bottom=s["busy"].fillna(0), color="#cfe3f5", label="idle")
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        elif len(s):
            ax.bar(x, s["lifetime"].fillna(0), color="#cfe3f5", label="lifetime (busy time\nnot per server)")
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        else:
            ax.text(0.5, 0.5, "no servers in this run", transform=ax.transAxes, ha="center")
        ax.set_xticks(x, list(s["server"]), rotation=90 if len(s) > 12 else 0, fontsize="small")
        ax.set_xlabel("server")
        ax.set_ylabel("time [s]")
        overall = "unknown" if util is None else f"{100 * util:.1f} %"
        ax.set_title(f"Server utilisation of {name} (overall {overall})")
    return fig


def make_figures(runs: Sequence[Run], labels: Sequence[str] | None = None) -> dict[str, Figure]:
    """All figures for the runs, keyed by file name stem; ``labels`` name the runs (one per run)."""
    names = run_names(runs, labels)
    figs = {
        "distributions": distributions(runs, names),
        "queue_servers": queue_and_servers(runs, names),
        "utilisation": utilisation(runs, names),
    }
    for name, r in zip(names, runs, strict=True):
        figs[f"timeline_{_slug(name)}"] = timeline(r, name)
    return figs


def _slug(name: str) -> str:
    """A file-name-safe version of a run name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def save_figures(
    figs: dict[str, Figure], outdir: str | Path, dpi: int = 110, formats: Sequence[str] = ("png",)
) -> list[Path]:
    """Write each figure as ``<outdir>/<key>.<format>`` for each format; returns the paths. ``dpi``
    sizes the PNG (and the raster parts of SVG/PDF, which are otherwise vector)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise AnalysisError(f"unknown plot format {', '.join(bad) or '(none)'}: use {', '.join(FORMATS)}")
    if dpi <= 0:
        raise AnalysisError(f"--dpi must be > 0, got {dpi}")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, fig in figs.items():
        for fmt in dict.fromkeys(formats):
            p = out / f"{key}.{fmt}"
            # No creation date in SVG/PDF: the same run gives the same file (a paper's repository).
            meta = {"Date": None} if fmt in ("svg", "pdf") else None
            fig.savefig(p, dpi=dpi, format=fmt, metadata=meta)
            paths.append(p)
    return paths
