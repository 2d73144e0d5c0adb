"""The simulator's figures per policy: one dict of yardsticks per run, a side-by-side table, paired
tables with bootstrap intervals against demand-only, the campaign's timeline plot and the Pareto plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from balancer.sim.replay import Replay
from balancer.sim.run import Result
from balancer.sim.stats import bootstrap_mean, paired
from balancer.sim.yardsticks import figures

# (key, label, format) in table order.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("makespan_h", "campaign makespan (h)", "{:.2f}"),
    ("makespan_s", "  in seconds (a compressed slice's scale)", "{:.1f}"),
    ("makespan_D", "  makespan / D (dedicated bound)", "{:.3f}"),
    ("makespan_H", "  makespan / H (idle-harvest bound)", "{:.3f}"),
    ("harm_cpu_h", "others' extra CPU-weighted wait (CPU-h)", "{:.1f}"),
    ("harm_per_cpu_h", "  per campaign CPU-h", "{:.4f}"),
    ("harm_grace_per_cpu_h", "    of it, jobs delayed <= grace time", "{:.4f}"),
    ("harm_bsld", "others' extra mean bounded slowdown", "{:.3f}"),
    ("harm_p95_s", "others' p95 extra wait (s)", "{:.0f}"),
    ("harm_delayed", "share of others' jobs delayed", "{:.3f}"),
    ("harvest_fraction", "harvest fraction (on idle CPUs)", "{:.3f}"),
    ("pending_max", "pending allocations max", "{:.1f}"),
    ("pending_mean", "pending allocations, time-averaged", "{:.2f}"),
    ("submissions", "server jobs submitted", "{:.1f}"),
    ("beyond_admission_max", "pending beyond admission max", "{:.1f}"),
    ("held_max", "servers holding CPUs max", "{:.1f}"),
    ("serving_max", "calls in service max", "{:.1f}"),
    ("waste", "waste CPU-s per useful CPU-s", "{:.3f}"),
    ("waste_idle", "  idle (incl. draining)", "{:.3f}"),
    ("waste_startup", "  start-up", "{:.3f}"),
    ("waste_killed", "  calls lost to kills/preemption", "{:.3f}"),
    ("preempted", "servers preempted", "{:.1f}"),
    ("requeued", "calls re-queued", "{:.1f}"),
    ("call_wait_p50_s", "calls' queue wait p50 (s)", "{:.0f}"),
    ("job_wait_mean_s", "server jobs' queue wait mean (s)", "{:.0f}"),
)


def metrics(r: Result, replay: Replay) -> dict[str, float]:
    """The yardsticks of one run (``balancer.sim.yardsticks.figures``)."""
    return figures(r, replay)


def _fmt(fmt: str, v: float) -> str:
    return "-" if math.isnan(v) else ("inf" if math.isinf(v) else fmt.format(v))


def table(columns: dict[str, dict[str, float]], title: str = "") -> str:
    """Metrics side by side, one column per policy (or per policy and statistic)."""
    names = list(columns)
    width = max(len(label) for _, label, _ in METRICS)
    colw = max(10, *(len(n) for n in names))
    lines = [title] if title else []
    lines.append(" " * width + "  " + "  ".join(n.rjust(colw) for n in names))
    for key, label, fmt in METRICS:
        cells = [_fmt(fmt, columns[n].get(key, math.nan)).rjust(colw) for n in names]
        lines.append(label.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)


Cells = Mapping[str, Mapping[str, np.ndarray]]  # policy -> metric -> (starts, seeds)


def paired_table(cells: Cells, base: str = "demand", seed: int = 0) -> str:
    """Per policy: the mean of each figure over every (start, seed), and for the others the mean
    difference to ``base`` with its paired bootstrap 95 % interval: ``mean (diff [lo, hi])``."""
    names = list(cells)
    width = max(len(label) for _, label, _ in METRICS)
    cols: dict[str, list[str]] = {}
    for n in names:
        col = []
        for key, _, fmt in METRICS:
            v = cells[n][key]
            m = bootstrap_mean(v, seed=seed)[0]
            text = _fmt(fmt, m)
            if n != base and base in cells:
                d, lo, hi = paired(v, cells[base][key], seed=seed)
                if math.isfinite(d):
                    f = fmt.replace("{:", "{:+")
                    text += f" ({_fmt(f, d)} [{_fmt(f, lo)}, {_fmt(f, hi)}])"
            col.append(text)
        cols[n] = col
    colw = {n: max(len(n), *(len(x) for x in cols[n])) for n in names}
    lines = [" " * width + "  " + "  ".join(n.rjust(colw[n]) for n in names)]
    for i, (_, label, _) in enumerate(METRICS):
        lines.append(label.ljust(width) + "  " + "  ".join(cols[n][i].rjust(colw[n]) for n in names))
    return "\n".join(lines)


def pareto(panels: Mapping[str, Cells], path: str, seed: int = 0) -> None:
    """Makespan / H against harm (others' extra CPU-weighted wait per campaign CPU-h) per policy,
    with 95 % bootstrap interval bars, one panel per trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.5 * max(1, len(panels)), 5.8), squeeze=False)
    for ax, (name, cells) in zip(axes[0], panels.items(), strict=False):
        for pol, m in cells.items():
            x, xl, xh = bootstrap_mean(m["harm_per_cpu_h"], seed=seed)
            y, yl, yh = bootstrap_mean(m["makespan_H"], seed=seed)
            col = COLORS.get(pol)
            ax.errorbar(
                [x],
                [y],
                xerr=[[max(0.0, x - xl)], [max(0.0, xh - x)]] if math.isfinite(xl) else None,
                yerr=[[max(0.0, y - yl)], [max(0.0, yh - y)]] if math.isfinite(yl) else None,
                fmt="o",
                ms=8,
                capsize=4,
                color=col,
                label=pol,
            )
            ax.annotate(pol, (x, y), textcoords="offset points", xytext=(7, 6), fontsize=10, color=col)
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.axhline(1.0, color="grey", lw=0.9, ls=":", label="H, the idle-harvest bound")
        target = {"color": "tab:red", "lw": 0.9, "alpha": 0.7}
        ax.axhline(1.1, ls="--", label="harvest target: makespan <= 1.10 H", **target)
        ax.axvline(0.05, ls="-.", label="harvest target: harm <= 0.05", **target)
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("others' extra CPU-weighted wait (CPU-h per campaign CPU-h; lower is better)")
        ax.set_ylabel("campaign makespan / H (lower is faster)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(
        "Makespan against harm to the cluster's other jobs, per policy"
        " (means over starts and seeds, 95 % bootstrap intervals)"
    )
    fig.tight_layout(rect=(0.0, 0.09, 1.0, 1.0))  # room for the legend below the panels
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLORS = {"demand": "tab:blue", "forecast": "tab:orange", "harvest": "tab:green", "hybrid": "tab:purple"}


def plot(results: Sequence[Result], path: str, replay: Replay) -> None:
    """Three panels over the campaign: capacity (the replay's idle CPUs vs the forecast of idle plus
    ours), pool size, waiting calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from balancer.sim.yardsticks import replay_idle

    start, step_s = results[0].start, results[0].step_s
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ax_idle, ax_pool, ax_wait = axes
    h = 1 / 3600.0
    last = max((r.timeline["t"][-1] if len(r.timeline.get("t", ())) else start) for r in results)
    k0, k1 = int(start // step_s), int(last // step_s) + 1
    actual = replay_idle(replay)[k0:k1]
    if len(actual):
        t = (np.arange(len(actual)) + k0) * step_s - start
        ax_idle.step(t * h, actual, where="post", color="black", label="actual (replay without us)")
    end = max((r.timeline["t"][-1] if len(r.timeline.get("t", ())) else start) for r in results) - start
    for r in results:
        for i, (t0, pred) in enumerate(r.forecasts):
            t = t0 + np.arange(len(pred)) * step_s - start
            keep = (t >= -step_s) & (t <= end)
            if keep.any():
                ax_idle.step(
                    t[keep] * h,
                    pred[keep],
                    where="post",
                    color="tab:orange",
                    label=f"forecast ({r.policy}, retrained daily)" if i == 0 else None,
                )
    ax_idle.set_ylabel("CPUs for us (idle + ours)")
    ax_idle.set_title("Cluster idle capacity: actual vs forecast")
    for r in results:
        tl = r.timeline
        if not len(tl.get("t", ())):
            continue
        t = (tl["t"] - start) * h
        col = COLORS.get(r.policy)
        ax_pool.step(t, tl["pool"], where="post", color=col, label=f"{r.policy}: running")
        ax_pool.step(t, tl["pending"], where="post", color=col, ls=":", label=f"{r.policy}: pending")
        ax_wait.step(t, tl["waiting"], where="post", color=col, label=r.policy)
    ax_pool.set_ylabel("server jobs")
    ax_pool.set_title("Our pool: jobs running (solid) and pending in the queue (dotted)")
    ax_wait.set_ylabel("calls waiting")
    ax_wait.set_title("Calls waiting for a server")
    ax_wait.set_xlabel("hours since the campaign started")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
