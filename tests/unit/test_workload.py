"""Workload classes: the pure classifier at its thresholds, the source prior of the example models,
the aggregator's busy-time lookup (real runs: system/test_workload_balancer)."""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from balancer.observe.events import EventBus
from balancer.profiling import workload as wl
from balancer.profiling.prior import prior_of, prior_of_source
from balancer.profiling.workload import UsageAggregator, classify

MODELS = Path(__file__).resolve().parents[2] / "models"
EXAMPLES = {"cpu_spinner": "cpu", "mem_streamer": "memory", "io_writer": "io", "waiter": "wait"}


def counters(cpu: float = 0.0, io_mb_s: float = 0.0, rss_mb: float = 50.0, **kw: float) -> dict[str, Any]:
    """Counters of 10 busy one-slot seconds at the given per-second rates."""
    c: dict[str, Any] = {"samples": 10, "busy_s": 10.0, "slot_s": 10.0, "cpu_s": cpu * 10,
                         "io_bytes": io_mb_s * 1e7, "rss_peak_bytes": rss_mb * 2**20}  # fmt: skip
    c.update({k: v * 10 for k, v in kw.items()})
    return c


@pytest.mark.parametrize(
    ("c", "cls"),
    [
        (counters(cpu=0.95), "cpu"),
        (counters(cpu=wl.CPU_BUSY), "cpu"),
        (counters(cpu=0.5, ctx_vol=1, ctx_invol=1), "cpu"),  # half a core, preempted: wants more
        (counters(cpu=0.5, ctx_vol=9, ctx_invol=1), "cpu"),  # between the bounds: the larger share
        (counters(cpu=0.3, ctx_vol=9, ctx_invol=1), "wait"),
        (counters(cpu=0.01), "wait"),
        (counters(cpu=wl.WAIT_IDLE - 0.01, io_mb_s=wl.IO_MB_S - 0.1), "wait"),
        (counters(cpu=0.1, io_mb_s=wl.IO_MB_S), "io"),
        (counters(cpu=0.9, io_mb_s=wl.IO_MB_S), "cpu"),  # copying at full CPU is computing
        (counters(cpu=0.9, io_mb_s=wl.IO_MB_S_ANY), "io"),
        (counters(cpu=0.3, iowait_pct_s=wl.IOWAIT_PCT), "io"),
        (counters(cpu=0.8, rss_mb=wl.MEM_RSS_MB), "memory"),
        (counters(cpu=0.8, rss_mb=wl.MEM_RSS_MB - 1), "cpu"),
        (counters(cpu=0.8, minflt=wl.MEM_FAULTS_S), "memory"),
        (counters(cpu=0.1, rss_mb=2000), "wait"),  # a big idle process is not memory-bound
    ],
)
def test_classify_thresholds(c: dict[str, Any], cls: str) -> None:
    v = classify(c)
    assert v.cls == cls, v
    assert v.why and v.figures["samples"] == 10


def test_classify_needs_samples_and_per_slot() -> None:
    v = classify({**counters(cpu=0.95), "samples": wl.MIN_SAMPLES - 1})
    assert v.cls is None and not v.confident
    # Two calls at once using one core each: one core per slot, CPU-bound; not 2 cores "per call".
    two = {**counters(cpu=1.8), "slot_s": 20.0}
    assert classify(two).figures["cpu_per_slot"] == pytest.approx(0.9)
    assert classify({}).cls is None


def test_prior_of_example_models() -> None:
    for name, cls in EXAMPLES.items():
        p = prior_of([sys.executable, str(MODELS / f"{name}.py")])
        assert p.cls == cls, (name, p)
    assert prior_of([sys.executable, "-m", "some.module"]).cls is None
    assert prior_of(["/bin/true"]).cls is None


def test_prior_features() -> None:
    assert prior_of_source("import time\ndef f():\n    time.sleep(1)\n").cls == "wait"
    assert prior_of_source("import numpy as np\nN = 50_000_000\na = np.zeros(N)\n").cls == "memory"
    assert prior_of_source("import numpy as np\na = np.zeros(1000)\nnp.linalg.eig(a)\n").cls == "cpu"
    src = "import os\ndef f(p):\n    with open(p, 'wb') as fh:\n        fh.write(b'x')\n"
    src += "        os.fsync(fh)\n"
    assert prior_of_source(src).cls == "io"
    assert prior_of_source("x = 1\n").cls is None


def usage(sid: str, t: float, cpu_s: float, interval: float = 1.0) -> dict[str, Any]:
    return {"ev": "server.usage", "server": sid, "spec": "m", "sample_t": t, "t": t + 5,
            "interval_s": interval, "cpu_s": cpu_s, "io_read_bytes": 0, "io_write_bytes": 0,
            "rss_peak_bytes": 1e7, "node": {"iowait_pct": 0.0}}  # fmt: skip


def test_aggregator_counts_busy_samples_at_their_own_time() -> None:
    """Samples arrive late and in a batch; only those taken while the server ran a call count."""
    bus = EventBus()
    seen: list[dict[str, Any]] = []
    bus.subscribe(seen.append)
    agg = UsageAggregator(bus, lambda: [("s1", 0, 0, 0.0)], lambda s: ["m"])
    hist = agg._hist.setdefault("s1", deque())
    # Idle for 0..10 s, then one long call running from 10 s to 20 s.
    for t in range(0, 21):
        hist.append((1000.0 + t, 0, 1 if t >= 10 else 0, 0.0))
    for t in range(1, 21):  # a core's worth of CPU only while busy
        agg(usage("s1", 1000.0 + t, cpu_s=max(0, t - 10) * 0.95))
    verdicts = [e for e in seen if e["ev"] == "workload.classified"]
    assert verdicts and verdicts[-1]["cls"] == "cpu"
    assert agg.specs["m"].counters.samples == 10  # 11..20: wholly inside the call; 1..10 were idle
    assert agg.current("m") == "cpu"
    assert agg.view("m")["source"] == "measured"  # type: ignore[index]


def test_analyze_prints_the_classes(tmp_path: Path) -> None:
    """``balancer analyze``'s workload block: the prior, the final verdict over earlier ones, why."""
    import orjson

    from balancer.analysis.workload import format_workload, workload_rows

    lines = [
        {"ev": "workload.prior", "spec": "m", "cls": "wait"},
        {"ev": "call.completed", "call": 1},
        {"ev": "workload.classified", "spec": "m", "cls": "wait", "why": "early", "figures": {}},
        {"ev": "workload.classified", "spec": "m", "cls": "cpu", "why": "CPU demand 0.9", "final": True,
         "figures": {"cpu_per_slot": 0.9, "samples": 12}},
        {"ev": "workload.classified", "spec": "m", "cls": "wait", "why": "late, not final", "figures": {}},
    ]  # fmt: skip
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in lines) + b"\n")
    rows = workload_rows(path)
    got = [(r["spec"], r["prior"], r["measured"], r["why"]) for r in rows]
    assert got == [("m", "wait", "cpu", "CPU demand 0.9")]
    text = format_workload("run", rows)
    assert "cpu_per_slot 0.9" in text and "CPU demand 0.9" in text


def test_prior_from_a_profile_before_the_source() -> None:
    """A spec measured in earlier runs (profiles.py keeps the counters) starts with that class."""
    import asyncio

    from balancer.config.schema import ServerSpec
    from balancer.profiling.workload import journal_priors

    class Store:
        def __init__(self, figures: dict[str, Any] | None) -> None:
            self.figures = figures

        def spec_figures(self, spec: str, hash_: str) -> dict[str, Any] | None:
            return self.figures

    spec = ServerSpec(name="w", command=[sys.executable, str(MODELS / "waiter.py")])
    for store, cls, source in [
        (Store({"workload": counters(cpu=0.95)}), "cpu", "profile"),  # measured CPU-bound before
        (Store({"workload": None}), "wait", "source"),  # a profile without usage samples
        (Store(None), "wait", "source"),
        (None, "wait", "source"),
    ]:
        bus = EventBus()
        seen: list[dict[str, Any]] = []
        bus.subscribe(seen.append)
        agg = UsageAggregator(bus, list, lambda s: [])
        asyncio.run(journal_priors([spec], bus, agg, store))
        assert (seen[0]["cls"], seen[0]["source"]) == (cls, source)
        assert agg.current("w") == cls
