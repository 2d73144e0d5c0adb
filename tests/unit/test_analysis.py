"""Tests of the timing analysis: published ISC 2025 figures, synthetic journals, importers, CLI, plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from balancer.analysis import AnalysisError, analyze_journal, load_run
from balancer.analysis.cli import add_subcommands, main
from balancer.analysis.model import CALL_COLUMNS, SERVER_COLUMNS, queue_length
from balancer.analysis.summary import METRICS, format_table
from balancer.analysis.synthetic import write_journal

ROOT = Path(__file__).resolve().parents[2]
ISC = ROOT.parent / "shared" / "data" / "isc2025"
DATA = Path(__file__).resolve().parents[1] / "data"
needs_isc = pytest.mark.skipif(
    not (ISC / "eigen_100_10clients.jsonl").is_file(),
    reason="ISC 2025 logs not found at ../shared/data/isc2025",
)


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Length of a union of intervals, the plain way (checks the vectorised sweep)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + ((cur_e - cur_s) if cur_e is not None else 0.0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    """A realistic journal with queueing, cached metadata, invalid calls and a lost server."""
    path = tmp_path_factory.mktemp("syn") / "journal.jsonl"
    truth = write_journal(
        path,
        calls=400,
        clients=6,
        servers=2,
        concurrency=2,
        invalid=4,
        lose_server_at=1.0,
        metadata=4,
        seed=3,
    )
    return path, truth


@needs_isc
@pytest.mark.parametrize(
    ("name", "makespan", "wait", "compute", "whole"),
    [
        ("eigen_100_10clients", "0.850", "0.015", "0.836", "16.0"),
        ("eigen_100_2clients", "0.866", None, None, "72.8"),
        ("gp_10clients", "2.436", "0.144", None, "41.2"),
    ],
)
def test_isc_published_medians(
    name: str, makespan: str, wait: str | None, compute: str | None, whole: str
) -> None:
    s = analyze_journal(ISC / f"{name}.jsonl").summary()
    assert s["format"] == "hq-export"
    assert s["evaluations"] == 105  # every job counts, as in the README's figures
    assert f"{s['makespan_p50_s']:.3f}" == makespan
    if wait is not None:
        assert f"{s['queue_wait_p50_s']:.3f}" == wait  # created-to-started
    if compute is not None:
        assert f"{s['compute_p50_s']:.3f}" == compute  # started-to-canceled
    # Whole run = first job-created to last job-completed; the README rounds it to 0.1 s
    # (eigen_100_10clients is 15.950 s exactly, printed there as 16.0).
    assert abs(s["whole_run_s"] - float(whole)) <= 0.05 + 1e-9


@needs_isc
def test_isc_tables_are_consistent() -> None:
    run = load_run(ISC / "eigen_100_10clients.jsonl")
    c = run.calls
    assert list(c.columns) == list(CALL_COLUMNS)
    assert list(run.servers.columns) == list(SERVER_COLUMNS)
    assert (c["outcome"] == "ok").all()
    assert np.allclose(c["makespan"], c["queue_wait"] + c["compute"] + c["overhead"])
    assert len(run.servers) == 10  # the allocation's ten workers
    assert run.servers["startup"].notna().all()
    assert 0 < run.summary()["utilisation"] < 1
    assert run.notes and not run.warnings


def test_synthetic_journal_matches_ground_truth(synthetic) -> None:
    path, truth = synthetic
    run = analyze_journal(path)
    assert run.fmt == "journal" and not run.warnings
    s = run.summary()
    assert s["evaluations"] == truth.evaluations
    assert s["metadata_calls"] == truth.metadata_calls
    assert s["failed_calls"] == truth.failed
    assert s["unfinished_calls"] == 0
    assert s["retried_calls"] == truth.requeued > 0
    assert s["whole_run_s"] == pytest.approx(truth.last_completed - truth.first_received, abs=1e-6)

    calls = run.calls.set_index("call")
    ids = list(truth.makespan)
    assert np.allclose(calls.loc[ids, "makespan"], [truth.makespan[i] for i in ids], atol=1e-6)
    assert np.allclose(calls.loc[ids, "compute"], [truth.compute[i] for i in ids], atol=1e-9)
    assert np.allclose(calls.loc[ids, "queue_wait"], [truth.queue_wait[i] for i in ids], atol=1e-6)
    assert s["makespan_p50_s"] == pytest.approx(np.median(list(truth.makespan.values())), abs=1e-6)

    cached = calls[calls["cached"]]
    assert len(cached) == truth.metadata_calls - 1  # the first metadata call went to a server
    assert cached["compute"].isna().all() and (cached["attempts"] == 0).all()

    servers = run.servers.set_index("server")
    for sid, iv in truth.busy_intervals.items():
        assert servers.loc[sid, "busy"] == pytest.approx(union_length(iv), abs=1e-6)
        assert servers.loc[sid, "startup"] == pytest.approx(truth.startup[sid], abs=1e-6)
    assert servers.loc["s1", "end_reason"] == "failed"
    assert (servers["utilisation"].dropna().between(0, 1)).all()
    assert s["server_starts"] == len(truth.startup) == 3

    _, q = queue_length(run.calls, run.end)
    assert q.min() >= 0 and q[-1] == 0 and q.max() > 0


def test_analyze_journal_accepts_a_run_directory(synthetic) -> None:
    path, truth = synthetic
    run = analyze_journal(path.parent)
    assert run.summary()["evaluations"] == truth.evaluations


def test_truncated_last_line_is_skipped_with_a_warning(synthetic, tmp_path: Path) -> None:
    path, truth = synthetic
    data = path.read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data[:-25])  # the writer died in the middle of the last event
    run = analyze_journal(cut)
    assert len(run.warnings) == 1 and "truncated last line" in run.warnings[0]
    assert run.summary()["evaluations"] == truth.evaluations


def test_malformed_lines_and_unknown_events_are_counted(synthetic, tmp_path: Path) -> None:
    path, truth = synthetic
    lines = path.read_bytes().splitlines(keepends=True)
    extra = [
        b"not json at all\n",
        b'{"v":1,"ev":"call.received","m":"soon","call":99999}\n',
        b'{"v":1,"ev":"future.event","t":1.0,"m":5000.5}\n',
        b'{"v":1,"ev":"future.event","t":1.0,"m":5000.6}\n',
        b"\n",
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(lines[:50] + extra + lines[50:]))
    run = analyze_journal(bad)
    text = " | ".join(run.warnings)
    assert "skipped 2 malformed line(s)" in text
    assert "future.event (2)" in text
    assert run.summary()["evaluations"] == truth.evaluations


def test_rejected_request_without_received_event_counts_as_failed(tmp_path: Path) -> None:
    p = tmp_path / "reject.jsonl"
    p.write_bytes(
        b'{"v":1,"ev":"balancer.started","t":1.0,"m":1.0}\n'
        b'{"v":1,"ev":"call.received","call":0,"op":"Info","t":1.0,"m":1.1}\n'
        b'{"v":1,"ev":"call.completed","call":0,"server":null,"status":200,"cached":true,"t":1.0,"m":1.2}\n'
        b'{"v":1,"ev":"call.failed","call":1,"status":400,"reason":"bad","t":1.0,"m":1.3}\n'
        b'{"v":1,"ev":"spec.held","spec":"x","t":1.0,"m":1.4}\n'
    )
    run = analyze_journal(p)
    s = run.summary()
    assert not run.warnings  # spec.* is a namespace the metrics do not need
    assert (s["failed_calls"], s["metadata_calls"], s["evaluations"]) == (1, 1, 0)


def test_newer_schema_version_warns(tmp_path: Path) -> None:
    p = tmp_path / "v2.jsonl"
    p.write_bytes(
        b'{"v":2,"ev":"balancer.started","t":1.0,"m":1.0}\n'
        b'{"v":2,"ev":"call.received","call":1,"op":"Evaluate","t":1.0,"m":1.0}\n'
        b'{"v":2,"ev":"call.completed","call":1,"server":"s1","service_s":0.5,"t":2.0,"m":2.0}\n'
    )
    run = analyze_journal(p)
    assert any("schema version 2" in w for w in run.warnings)
    assert run.summary()["makespan_p50_s"] == pytest.approx(1.0)


def test_hyperqueue_current_format() -> None:
    run = load_run(DATA / "hq_current.jsonl")
    assert run.fmt == "hq" and not run.warnings and not run.notes
    c = run.calls.set_index("call")
    assert list(c.index) == ["1", "2", "3", "4", "5.0", "5.1", "5.2"]
    assert c.loc["1", "makespan"] == pytest.approx(2.505)  # job-completed - job-created
    assert c.loc["1", "queue_wait"] == pytest.approx(1.5)
    assert c.loc["1", "compute"] == pytest.approx(1.0)
    assert c.loc["3", "attempts"] == 2 and c.loc["3", "server"] == "w2"
    assert c.loc["3", "compute"] == pytest.approx(0.5)  # the final attempt only
    assert list(c["outcome"]) == ["ok", "failed", "ok", "failed", "ok", "ok", "ok"]
    assert c.loc["5.2", "completed"] == pytest.approx(8.512)  # multi-task job: the task's own end
    s = run.summary()
    assert s["failed_calls"] == 2 and s["retried_calls"] == 1 and s["metadata_calls"] is None
    srv = run.servers.set_index("server")
    assert srv.loc["w1", "startup"] == pytest.approx(1.39)  # allocation queued -> worker connected
    assert srv.loc["w1", "busy"] == pytest.approx(1.49)  # its second task ends when it is lost
    assert srv.loc["w1", "end_reason"] == "failed"
    assert srv.loc["w2", "busy"] == pytest.approx(2.49)
    assert s["utilisation"] == pytest.approx((1.49 + 2.49) / (2.9 + 7.35))
    assert srv.loc["w1", "host"] == "n01"


def test_sacct_2205_json() -> None:
    run = load_run(DATA / "sacct_2205.json")
    assert run.fmt == "sacct"
    c = run.calls.set_index("call")
    assert c.loc["101", "makespan"] == 3 and c.loc["101", "queue_wait"] == 1 and c.loc["101", "compute"] == 2
    assert c.loc["101", "cpu"] == pytest.approx(1.8)
    assert list(c["outcome"]) == ["ok", "ok", "failed", "unfinished", "unfinished"]
    s = run.summary()
    assert s["makespan_p50_s"] == pytest.approx(3.5)
    assert s["whole_run_s"] == 6
    assert s["utilisation"] is None and s["metadata_calls"] is None
    assert s["startup_p50_s"] == 1  # submission -> start


def test_sacct_newer_time_objects_and_state_lists(tmp_path: Path) -> None:
    doc = json.loads((DATA / "sacct_2205.json").read_text())
    for job in doc["jobs"]:
        for k in ("submission", "start", "end", "eligible"):
            v = job["time"][k]
            job["time"][k] = {"set": bool(v), "infinite": False, "number": v}
        job["state"]["current"] = [job["state"]["current"]]
    p = tmp_path / "sacct_2311.json"
    p.write_bytes(orjson.dumps(doc))  # one line, like `sacct --json | jq -c`
    new, old = load_run(p).summary(), load_run(DATA / "sacct_2205.json").summary()
    assert new == old


@pytest.mark.parametrize(
    "content",
    [b"", b"time,value\n1,2\n", b'{"a": 1}\n', b"\x00\x01\x02binary", b'{"jobs": "nope"}', b"[1, 2, 3]\n"],
)
def test_unknown_format_is_one_clear_error(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "mystery.jsonl"
    p.write_bytes(content)
    with pytest.raises(AnalysisError):
        load_run(p)
    assert main(["analyze", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_analyze_table_json_and_csv(
    synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, truth = synthetic
    hq, sacct = DATA / "hq_current.jsonl", DATA / "sacct_2205.json"
    csv_path, calls_path = tmp_path / "summary.csv", tmp_path / "calls.csv"
    assert (
        main(
            [
                "analyze",
                str(path),
                str(hq),
                str(sacct),
                "--csv",
                str(csv_path),
                "--calls-csv",
                str(calls_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    # a journal.jsonl is named after its run directory
    assert lines[0].split() == ["metric", path.parent.name, "hq_current", "sacct_2205"]
    meta = next(line for line in lines if line.startswith("metadata calls"))
    assert meta.split()[-3:] == [str(truth.metadata_calls), "-", "-"]
    assert sum(1 for line in lines if line[:1].isalpha()) >= len(METRICS)
    rows = csv_path.read_text().splitlines()
    assert rows[0] == f"metric,label,{path.parent.name},hq_current,sacct_2205"
    assert len(rows) == len(METRICS) + 1
    assert calls_path.read_text().count("\n") == truth.evaluations + truth.metadata_calls + 7 + 5 + 1

    assert main(["analyze", str(hq), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"][0]["metrics"]["evaluations"] == 7
    assert doc["runs"][0]["metrics"]["metadata_calls"] is None


def test_same_name_runs_get_distinct_columns(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "run.jsonl").write_bytes((DATA / "hq_current.jsonl").read_bytes())
    runs = [load_run(a / "run.jsonl"), load_run(b / "run.jsonl")]
    assert format_table(runs).splitlines()[0].split() == ["metric", "run", "run", "(2)"]


def test_add_subcommands_registers_analyze_and_plot() -> None:
    parser = argparse.ArgumentParser(prog="balancer")
    add_subcommands(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["analyze", "x.jsonl", "y.json", "--json"])
    assert callable(a.func) and a.runs == ["x.jsonl", "y.json"] and a.json
    p = parser.parse_args(["plot", "x.jsonl", "-o", "out"])
    assert callable(p.func) and p.output == "out"


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from balancer.analysis.progress import ByteProgress

    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 1000)
    with open(p, "rb") as fh, ByteProgress(p, "loading f", enabled=True, delay=0) as bar:
        fh.read()
        bar.advance(fh)
    captured = capsys.readouterr()
    assert "loading f" in captured.err and captured.out == ""


def test_plots_have_labels_and_are_written(synthetic, tmp_path: Path) -> None:
    from balancer.analysis.plots import make_figures, save_figures

    runs = [
        analyze_journal(synthetic[0]),
        load_run(DATA / "hq_current.jsonl"),
        load_run(DATA / "sacct_2205.json"),
    ]
    figs = make_figures(runs)
    assert {"distributions", "queue_servers", "utilisation"} <= set(figs)
    assert sum(k.startswith("timeline_") for k in figs) == 3
    for key, fig in figs.items():
        for ax in fig.axes:
            assert ax.get_title(), key
            assert ax.get_ylabel(), key
            assert ax.get_xlabel(), key
            assert "[s]" in ax.get_xlabel() + ax.get_ylabel(), key  # time axes carry their unit
    dist = figs["distributions"]
    assert all(ax.get_xscale() == "log" for ax in dist.axes)
    assert all(ax.get_legend() is not None for ax in dist.axes)
    paths = save_figures(figs, tmp_path / "png")
    assert len(paths) == len(figs)
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
