"""``balancer plot`` for papers: PNG, SVG and PDF files, a label per run, integer ticks for counts."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from balancer.analysis import AnalysisError, analyze_journal
from balancer.analysis.cli import main
from balancer.analysis.synthetic import write_journal


@pytest.fixture(scope="module")
def journals(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small real-format journals (run directories named by time stamps, as the balancer does)."""
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for i, servers in enumerate((2, 3)):
        d = root / f"20261205-00000{i}-1234{i}"
        d.mkdir()
        write_journal(d / "journal.jsonl", calls=24, clients=3, servers=servers, seed=i)
        paths.append(d)
    return paths


def test_plot_writes_each_format_with_the_given_label(
    journals: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figs"
    argv = ["plot", str(journals[0]), "-o", str(out), "--label", "baseline"]
    assert main([*argv, "--format", "png,svg", "--format", "pdf", "--dpi", "60", "--no-progress"]) == 0
    listed = capsys.readouterr().out.split()
    stems = {"distributions", "queue_servers", "utilisation", "timeline_baseline"}
    assert sorted(listed) == sorted(str(out / f"{s}.{f}") for s in stems for f in ("png", "svg", "pdf"))
    for stem in stems:
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ET.parse(out / f"{stem}.svg").getroot().tag == "{http://www.w3.org/2000/svg}svg"
        pdf = (out / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    svg = (out / "queue_servers.svg").read_text()
    assert "baseline" in svg and "20261205" not in svg  # the label, not the run directory's time stamp


def test_counts_get_integer_ticks_and_labels_replace_run_names(journals: list[Path]) -> None:
    from balancer.analysis.plots import make_figures

    runs = [analyze_journal(p) for p in journals]
    figs = make_figures(runs, ["baseline", "forecast"])
    queue, servers = figs["queue_servers"].axes
    for ax in (queue, servers):
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline", "forecast"]
    assert figs["timeline_forecast"].axes[0].get_title() == "Timeline of forecast"
    for ax in figs["distributions"].axes:  # log axes in plain numbers, not 5x10^-2
        assert ax.xaxis.get_major_formatter()(0.05, 0) == "0.05"
        assert ax.yaxis.get_major_formatter()(10.0, 0) == "10"
    assert "baseline" in figs["utilisation"].axes[0].get_title()


def test_wrong_label_count_and_format_are_one_line(
    journals: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [str(p) for p in journals]
    assert main(["plot", *runs, "-o", str(tmp_path), "--label", "only-one"]) == 2
    assert capsys.readouterr().err == "error: 1 --label given for 2 run(s): give one per run\n"
    assert main(["plot", runs[0], "-o", str(tmp_path), "--format", "png,gif", "--no-progress"]) == 2
    assert capsys.readouterr().err == "error: --format gif: expected png, svg or pdf\n"
    assert not list(tmp_path.iterdir())  # nothing half-written
    from balancer.analysis.plots import run_names

    with pytest.raises(AnalysisError):
        run_names([analyze_journal(journals[0])], ["a", "b"])
