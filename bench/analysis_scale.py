"""Scale check for the timing analysis: a synthetic journal of 1M call events, loaded and summarised.

Generates the journal in a temporary directory (balancer schema, realistic sequences from
``analysis.synthetic``), then loads and summarises it in a fresh child process so the reported peak
RSS is the analysis alone. Prints seconds and peak RSS; exits 1 if the budget (60 s, 2 GB) is missed.

    .venv/bin/python bench/analysis_scale.py [--events 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUDGET_S = 60.0
BUDGET_RSS_MB = 2048.0


def _rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(path: str) -> None:
    """Load and summarise ``path``; print timings and peak RSS as JSON."""
    t_import = time.perf_counter()
    import analysis.journal
    import analysis.summary  # noqa: F401 - imported here so import time is not counted as loading

    from balancer.analysis import load_run

    import_s = time.perf_counter() - t_import
    rss_before = _rss_mb()
    t = time.perf_counter()
    run = load_run(path, progress=None)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    summary = run.summary()
    summary_s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "import_s": import_s,
                "load_s": load_s,
                "summary_s": summary_s,
                "rss_after_import_mb": rss_before,
                "peak_rss_mb": _rss_mb(),
                "calls": len(run.calls),
                "evaluations": summary["evaluations"],
                "makespan_p50_s": summary["makespan_p50_s"],
                "warnings": run.warnings,
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="call events to generate (default 1M)")
    ap.add_argument("--keep", metavar="DIR", help="write the journal here and keep it")
    ap.add_argument("--load", metavar="FILE", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.load:
        child(args.load)
        return 0

    from balancer.analysis.synthetic import write_journal

    with tempfile.TemporaryDirectory(prefix="analysis-scale-") as tmp:
        path = Path(args.keep or tmp) / "journal.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        # 48 clients on 32 single-slot servers: most calls queue, so ~4 call events per evaluation.
        truth = write_journal(
            path,
            calls=args.events // 4 + 1,
            clients=48,
            servers=32,
            service=0.05,
            metadata=4,
            truth=False,
            seed=1,
        )
        gen_s = time.perf_counter() - t
        size_mb = os.path.getsize(path) / 2**20
        print(f"generated {truth.call_events} call events ({size_mb:.0f} MiB) in {gen_s:.1f} s: {path}")
        out = subprocess.run(
            [sys.executable, __file__, "--load", str(path)], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        res = json.loads(out.stdout)
    total = res["load_s"] + res["summary_s"]
    print(
        f"load {res['load_s']:.2f} s + summary {res['summary_s']:.2f} s = {total:.2f} s "
        f"(imports {res['import_s']:.2f} s, not counted)"
    )
    print(
        f"peak RSS {res['peak_rss_mb']:.0f} MiB (after imports {res['rss_after_import_mb']:.0f} MiB); "
        f"{res['calls']} calls, makespan p50 {res['makespan_p50_s']:.3f} s"
    )
    for w in res["warnings"]:
        print(f"warning: {w}")
    ok = total < BUDGET_S and res["peak_rss_mb"] < BUDGET_RSS_MB
    print("OK" if ok else f"OVER BUDGET ({BUDGET_S:.0f} s, {BUDGET_RSS_MB:.0f} MiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
