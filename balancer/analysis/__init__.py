"""Timing analysis of balancer journals, HyperQueue journal exports and ``sacct --json`` output.

Everything becomes the same two tables (per call, per server) so runs of different systems can be put
side by side. Heavy dependencies (pandas, matplotlib) are imported only when a run is loaded or
plotted, so importing this package (e.g. from the balancer CLI) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balancer.analysis.errors import AnalysisError

if TYPE_CHECKING:
    from pathlib import Path

    from balancer.analysis.model import Run

__all__ = ["AnalysisError", "analyze_journal", "load_run"]


def load_run(path: str | Path, name: str | None = None, progress: bool | None = None) -> Run:
    """Load a balancer journal, HyperQueue journal export or sacct JSON (detected from the content)."""
    from balancer.analysis.load import load_run as _load_run

    return _load_run(path, name=name, progress=progress)


def analyze_journal(path: str | Path, progress: bool | None = False) -> Run:
    """Load one run for tests and scripts: ``run.calls``, ``run.servers`` and ``run.summary()``."""
    from balancer.analysis.load import load_run as _load_run

    return _load_run(path, progress=progress)
