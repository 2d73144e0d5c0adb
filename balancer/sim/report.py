"""The simulator's figures per policy: one dict of metrics, a side-by-side table, and the plots."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from balancer.sim.run import Result

# (key, label, format) in table order.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("makespan_h", "campaign makespan (h)", "{:.2f}"),
    ("idle_bound_h", "  bound from idle capacity alone (h)", "{:.2f}"),
    ("call_wait_p50_s", "calls' queue wait p50 (s)", "{:.0f}"),
    ("call_wait_p90_s", "calls' queue wait p90 (s)", "{:.0f}"),
    ("job_wait_mean_s", "server jobs' queue wait mean (s)", "{:.0f}"),
    ("job_wait_p90_s", "server jobs' queue wait p90 (s)", "{:.0f}"),
    ("idle_per_useful", "idle / useful server-seconds", "{:.3f}"),
    ("core_hours", "core-hours used", "{:.1f}"),
    ("jobs", "server jobs submitted", "{:.0f}"),
    ("requeued", "calls re-queued (job killed)", "{:.0f}"),
    ("serving_max", "calls in service max (drain overlap)", "{:.0f}"),
    ("pending_max", "pending allocations max", "{:.0f}"),
    ("beyond_max", "  held beyond what the forecast admits", "{:.0f}"),
    ("added_beyond_max", "  submitted beyond what it admitted", "{:.0f}"),
    ("trace_delay_s", "trace jobs' mean extra wait (s)", "{:.0f}"),
)


def metrics(r: Result) -> dict[str, float]:
    """The figures of one run; NaN where a figure does not apply (no forecast, no job started)."""
    jw = r.job_wait_s
    cw = r.call_wait_s
    out = {
        "makespan_h": r.makespan_s / 3600.0,
        "idle_bound_h": r.idle_bound_s / 3600.0,
        "call_wait_p50_s": float(np.percentile(cw, 50)),
        "call_wait_p90_s": float(np.percentile(cw, 90)),
        "job_wait_mean_s": float(jw.mean()) if len(jw) else math.nan,
        "job_wait_p90_s": float(np.percentile(jw, 90)) if len(jw) else math.nan,
        # Idle: CPU-seconds held (start-up, idle, drain, calls lost to a kill) beyond completed calls.
        "idle_per_useful": (r.alloc_s - r.busy_s) / r.busy_s if r.busy_s else math.nan,
        "core_hours": r.alloc_s / 3600.0,
        "jobs": float(r.jobs_submitted),
        "requeued": float(r.requeued),
        "serving_max": float(r.timeline["serving"].max()) if len(r.timeline.get("serving", ())) else math.nan,
        "pending_max": float(r.pending_max),
        "beyond_max": math.nan if r.beyond_max is None else float(max(0, r.beyond_max)),
        "added_beyond_max": math.nan if r.added_beyond_max is None else float(max(0, r.added_beyond_max)),
        "trace_delay_s": r.trace_delay_s,
    }
    return {k: float(v) for k, v in out.items()}


def table(columns: dict[str, dict[str, float]], title: str = "") -> str:
    """Metrics side by side, one column per policy (or per policy and statistic)."""
    names = list(columns)
    width = max(len(label) for _, label, _ in METRICS)
    colw = max(10, *(len(n) for n in names))
    lines = [title] if title else []
    lines.append(" " * width + "  " + "  ".join(n.rjust(colw) for n in names))
    for key, label, fmt in METRICS:
        cells = []
        for n in names:
            v = columns[n].get(key, math.nan)
            cells.append(("-" if math.isnan(v) else ("inf" if math.isinf(v) else fmt.format(v))).rjust(colw))
        lines.append(label.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)


def plot(results: Sequence[Result], path: str, start: float, step_s: float) -> None:
    """Three panels over the campaign: idle capacity (actual vs forecast), pool size, waiting calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ax_idle, ax_pool, ax_wait = axes
    h = 1 / 3600.0
    first = max(results, key=lambda r: 0 if r.actual_idle is None else len(r.actual_idle))
    if first.actual_idle is not None and len(first.actual_idle):
        k0 = int(start // step_s)
        t = (np.arange(len(first.actual_idle)) + k0) * step_s - start
        ax_idle.step(
            t * h, first.actual_idle, where="post", color="black", label="actual (replay without us)"
        )
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
    ax_idle.set_ylabel("idle CPUs of others")
    ax_idle.set_title("Cluster idle capacity: actual vs forecast")
    colors = {"demand": "tab:blue", "forecast": "tab:orange", "oracle": "tab:green"}
    for r in results:
        tl = r.timeline
        if not len(tl.get("t", ())):
            continue
        t = (tl["t"] - start) * h
        col = colors.get(r.policy)
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
