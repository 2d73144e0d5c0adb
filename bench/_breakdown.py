"""Where a cold ISC 2025 run's time goes (``bench/isc2025.py --breakdown``).

Every timestamp is put on one clock, the monotonic clock of this machine (the journal's ``m``):

- the bench's own steps (balancer process start, ``balancer.started`` seen, first client call, last
  answer), taken with ``time.monotonic()``;
- the balancer's journal (``server.requested`` / ``started`` / ``registered`` / ``ready``,
  ``call.dispatched`` / ``completed``);
- ``sbatch`` and ``squeue`` shims put first on the balancer's ``PATH`` (bash, ``$EPOCHREALTIME``, no
  fork: about 1 ms added per command) that log when each command started and ended;
- SLURM's own logs (millisecond wall time): the submission reaching slurmctld, the allocation
  (``sched: Allocate`` or backfill's ``Started``: SLURM's start of the job) and slurmd launching
  the batch script;
- ``/proc/PID/stat`` start times (10 ms ticks) of each launcher and model process (their pids are in
  ``server.registered``), read while they still run;
- a thread that polls ``/proc/net/tcp`` every 5 ms and notes when each port starts listening (the
  model server's port is in ``server.registered``).

Wall times (SLURM's logs, the shims) go to the monotonic clock with the journal's own ``t - m``.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

SHIM = """#!/bin/bash
s=$EPOCHREALTIME
{real} "$@"
rc=$?
echo "{name} $s $EPOCHREALTIME $rc" >> {log}
exit $rc
"""
CLK_TCK = os.sysconf("SC_CLK_TCK")


def install_shims(d: Path, env: dict[str, str]) -> Path:
    """``sbatch``/``squeue`` shims in ``d``, first on ``env``'s PATH; returns their log file."""
    d.mkdir(parents=True, exist_ok=True)
    log = d / "shims.log"
    log.write_text("")
    for name in ("sbatch", "squeue", "sinfo", "scancel"):
        real = subprocess.run(
            ["bash", "-c", f"command -v {name}"], env=env, capture_output=True, text=True
        ).stdout.strip()
        if not real:
            continue
        p = d / name
        p.write_text(SHIM.format(real=real, name=name, log=log))
        p.chmod(0o755)
    env["PATH"] = f"{d}:{env.get('PATH', '')}"
    return log


class PortWatcher(threading.Thread):
    """Notes the monotonic time at which each TCP port is first seen listening (5 ms polls)."""

    def __init__(self, every_s: float = 0.005) -> None:
        super().__init__(daemon=True, name="port-watcher")
        self.every_s = every_s
        self.first: dict[int, float] = {}
        self._halt = threading.Event()
        self._before: set[int] = set()

    def _listening(self) -> set[int]:
        ports: set[int] = set()
        for f in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(f) as fh:
                    next(fh)
                    for line in fh:
                        parts = line.split(None, 4)
                        if parts[3] == "0A":  # LISTEN
                            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
            except OSError:
                pass
        return ports

    def start(self) -> None:
        self._before = self._listening()
        super().start()

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.monotonic()
            for p in self._listening() - self._before:
                self.first.setdefault(p, now)
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def proc_start_m(pid: int) -> float | None:
    """A live process's start on the monotonic clock (10 ms resolution), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, in ticks since boot
    boot_to_mono = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    return ticks / CLK_TCK - boot_to_mono


def snapshot_procs(journal: Iterable[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Start times of every registered server's launcher and model process (call while they run)."""
    out: dict[str, dict[str, float | None]] = {}
    for e in journal:
        if e["ev"] == "server.registered":
            out[e["server"]] = {
                "launcher_m": proc_start_m(int(e["launcher_pid"])) if e.get("launcher_pid") else None,
                "model_m": proc_start_m(int(e["pid"])) if e.get("pid") else None,
                "port": e.get("port"),
            }
    return out


_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] (.*)$")


def _slurm_log(path: Path) -> list[tuple[float, str]]:
    out = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            m = _LOG_LINE.match(line)
            if m:
                out.append((datetime.fromisoformat(m.group(1)).timestamp(), m.group(2)))
    return out


def slurm_times(slurm_dir: Path | None, job_ids: set[str]) -> dict[str, dict[str, float]]:
    """Per array task ("3_0"): submit (slurmctld got the sbatch), alloc (SLURM's start), launch
    (slurmd launches the batch script), as wall times."""
    out: dict[str, dict[str, float]] = {j: {} for j in job_ids}
    if slurm_dir is None:
        return out
    ctld = _slurm_log(slurm_dir / "log" / "slurmctld.log")
    slurmd = _slurm_log(slurm_dir / "log" / "slurmd.log")
    internal: dict[str, str] = {}
    for t, msg in ctld:
        m = re.search(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", msg)
        if m:
            for j in job_ids:
                if j.split("_")[0] == m.group(1):
                    out[j].setdefault("submit", t)
        m = re.search(
            r"(sched: Allocate|backfill: _start_job: Started) JobId=(\d+(?:_\d+)?)(?:\((\d+)\))?", msg
        )
        if m and m.group(2) in out and "alloc" not in out[m.group(2)]:
            out[m.group(2)]["alloc"] = t
            out[m.group(2)]["by_backfill"] = float("backfill" in m.group(1))
            internal[m.group(3) or m.group(2)] = m.group(2)
    for t, msg in slurmd:
        m = re.search(r"Launching batch job (\d+)", msg)
        if m and m.group(1) in internal:
            out[internal[m.group(1)]].setdefault("launch", t)
    return out


def shim_times(log: Path | None) -> list[tuple[str, float, float]]:
    if log is None or not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[0], float(parts[1]), float(parts[2])))
    return out


# -- the breakdown of one run --------------------------------------------------------------------
PHASES = [  # (label, from mark, to mark) per server
    ("requested -> sbatch started", "requested", "sbatch_start"),
    ("sbatch (command)", "sbatch_start", "sbatch_end"),
    ("  of it: sbatch -> slurmctld has it", "sbatch_start", "submit"),
    ("submitted -> allocated (SLURM start)", "submit", "alloc"),
    ("allocated -> slurmd launches script", "alloc", "launch"),
    ("launch -> launcher process (job script)", "launch", "launcher"),
    ("launcher up (imports) -> model process", "launcher", "model"),
    ("model process -> model listening", "model", "listen"),
    ("listening -> registered (/Info poll, POST)", "listen", "registered"),
    ("registered -> ready (balancer's check)", "registered", "ready"),
    ("ready -> first call dispatched to it", "ready", "first_dispatch"),
    ("requested -> ready (total)", "requested", "ready"),
    ("squeue saw RUNNING (server.started) after alloc", "alloc", "started"),
]


def _journal_marks(journal: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    first = {
        "server.requested": "requested",
        "server.started": "started",
        "server.registered": "registered",
        "server.ready": "ready",
        "call.dispatched": "first_dispatch",
    }
    marks: dict[str, dict[str, Any]] = {}
    for e in journal:
        sid = e.get("server")
        if not sid:
            continue
        mk = marks.setdefault(sid, {})
        name = first.get(e["ev"])
        if name is not None:
            mk.setdefault(name, e["m"])
        if e["ev"] == "server.started":
            mk["_job"] = e["job"]
        elif e["ev"] == "call.completed":
            mk["last_completed"] = e["m"]
    return marks


def _sbatch_of(mk: dict[str, float], sb: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The sbatch that submitted this server: the last one started before its submission arrived
    (else the first one after its request)."""
    if "submit" in mk:
        before = [x for x in sb if x[0] <= mk["submit"] + 0.002]
        return before[-1] if before else None
    after = [x for x in sb if x[0] >= mk.get("requested", 0)]
    return after[0] if after else None


def server_marks(
    journal: list[dict[str, Any]],
    procs: dict[str, dict[str, float | None]],
    listen: dict[int, float],
    slurm_dir: Path | None,
    shim_log: Path | None,
) -> dict[str, dict[str, float]]:
    offsets = [e["t"] - e["m"] for e in journal]
    wall_to_m = statistics.median(offsets) if offsets else 0.0
    marks = _journal_marks(journal)
    jobs = {str(mk["_job"]) for mk in marks.values() if "_job" in mk}
    st = slurm_times(slurm_dir, jobs)
    sb = [(s - wall_to_m, t - wall_to_m) for name, s, t in shim_times(shim_log) if name == "sbatch"]
    for sid, mk in marks.items():
        job = str(mk.pop("_job", ""))
        for k, v in st.get(job, {}).items():
            mk[k] = v if k == "by_backfill" else v - wall_to_m
        sbatch = _sbatch_of(mk, sb)
        if sbatch is not None:
            mk["sbatch_start"], mk["sbatch_end"] = sbatch
        p = procs.get(sid, {})
        for key, name in (("launcher_m", "launcher"), ("model_m", "model")):
            v = p.get(key)
            if v is not None:
                mk[name] = float(v)
        port = p.get("port")
        if port is not None and int(port) in listen:
            mk["listen"] = listen[int(port)]
    return marks


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _mmm(vals: list[float]) -> str:
    if not vals:
        return "-"
    return f"{_ms(statistics.median(vals)):>6} [{_ms(min(vals))}-{_ms(max(vals))}]"


def analyse(
    journal: list[dict[str, Any]],
    bench: dict[str, float],
    procs: dict[str, dict[str, float | None]],
    listen: dict[int, float],
    slurm_dir: Path | None,
    shim_log: Path | None,
) -> dict[str, Any]:
    """The phases of one cold run: per server, and the critical path to the last answer."""
    marks = server_marks(journal, procs, listen, slurm_dir, shim_log)
    per_server = {
        label: [mk[b] - mk[a] for mk in marks.values() if a in mk and b in mk] for label, a, b in PHASES
    }
    started = next((e["m"] for e in journal if e["ev"] == "balancer.started"), None)
    first_req = min((mk["requested"] for mk in marks.values() if "requested" in mk), default=None)
    ready = sorted((mk["ready"], sid) for sid, mk in marks.items() if "ready" in mk)
    evaluate = {e["call"] for e in journal if e["ev"] == "call.received" and e.get("op") == "Evaluate"}
    first_eval = min(
        (e["m"] for e in journal if e["ev"] == "call.received" and e["call"] in evaluate), default=None
    )
    first_disp = min((e["m"] for e in journal if e["ev"] == "call.dispatched"), default=None)
    cold_end = bench["last_answer"]
    last_done = max(
        (
            e["m"]
            for e in journal
            if e["ev"] == "call.completed" and e["call"] in evaluate and e["m"] <= cold_end
        ),
        default=None,
    )
    gate = marks[ready[0][1]] if ready else {}
    first_ev = journal[0]["m"] if journal else None
    path: list[tuple[str, float | None, float | None]] = [
        ("bench: Popen(balancer) -> its first journal event (imports, config)", bench["t0"], first_ev),
        ("first journal event -> balancer.started", first_ev, started),
        ("balancer.started -> seen by the bench (5 ms poll)", started, bench["url"]),
        ("balancer.started -> first server.requested", started, first_req),
    ]
    order = [
        ("server.requested -> sbatch started", "requested", "sbatch_start"),
        ("sbatch -> slurmctld has the job", "sbatch_start", "submit"),
        ("submitted -> allocated (SLURM starts the job)", "submit", "alloc"),
        ("allocated -> slurmd launches the script", "alloc", "launch"),
        ("launch -> launcher process started (10 ms ticks)", "launch", "launcher"),
        ("launcher imports + set-up -> model process", "launcher", "model"),
        ("model process -> model port listening", "model", "listen"),
        ("listening -> server.registered (launcher's /Info poll, POST)", "listen", "registered"),
        ("registered -> server.ready (balancer's ready check)", "registered", "ready"),
    ]
    for label, a, b in order:
        path.append((f"[first ready] {label}", gate.get(a), gate.get(b)))
    path += [
        ("first server ready -> first call dispatched", ready[0][0] if ready else None, first_disp),
        ("first dispatch -> last cold answer (balancer)", first_disp, last_done),
        ("last answer (balancer) -> last answer at the client", last_done, cold_end),
    ]
    offsets = [e["t"] - e["m"] for e in journal]
    wall_to_m = statistics.median(offsets) if offsets else 0.0
    early = [
        (name, e - s)
        for name, s, e in shim_times(shim_log)
        if started is not None and s - wall_to_m < started
    ]
    return {
        "early_commands": early,
        "per_server": per_server,
        "path": [(label, (b - a) if a is not None and b is not None else None) for label, a, b in path],
        "whole": cold_end - bench["t0"],
        "marks": marks,
        "first_eval_from_t0": (first_eval - bench["t0"]) if first_eval is not None else None,
        "ready_gap": (ready[-1][0] - ready[0][0]) if len(ready) > 1 else None,
    }


def report(clients: int, runs: list[dict[str, Any]], name: str = "") -> str:
    """Per-server table (median [min-max] over every server of every run, ms), the critical path
    (median [min-max] over runs, ms) and the whole run; ``name``: the version (``--compare``)."""
    n = len(runs)
    of = f"{name}: " if name else ""
    lines = [f"== breakdown, {of}{clients} clients, {n} cold run(s), ms: median [min-max] =="]
    lines.append("")
    lines.append(f"per server (every server of every run, {sum(len(r['marks']) for r in runs)} in all):")
    w = max(len(label) for label, _, _ in PHASES)
    for label, _, _ in PHASES:
        vals = [v for r in runs for v in r["per_server"][label]]
        lines.append(f"  {label.ljust(w)}  {_mmm(vals)}")
    lines.append("")
    lines.append(
        "critical path ([first ready]: whichever server was ready first; it gates the first answer):"
    )
    w = max(len(label) for label, _ in runs[0]["path"])
    total: list[float] = []
    for i, (label, _) in enumerate(runs[0]["path"]):
        if label.startswith("balancer.started -> seen"):
            continue  # beside the path, not on it
        vals = [r["path"][i][1] for r in runs if r["path"][i][1] is not None]
        lines.append(f"  {label.ljust(w)}  {_mmm(vals)}")
    for r in runs:
        total.append(r["whole"])
    lines.append(f"  {'= whole cold run (bench: Popen -> last answer)'.ljust(w)}  {_mmm(total)}")
    slurm_wait = {i: v for i, (label, v) in enumerate(runs[0]["path"]) if "submitted -> allocated" in label}
    idx = next(iter(slurm_wait), None)
    if idx is not None:
        net = [r["whole"] - r["path"][idx][1] for r in runs if r["path"][idx][1] is not None]
        label = "(whole run less SLURM's wait for its next scheduling pass)"
        lines.append(f"  {label.ljust(w)}  {_mmm(net)}")
    side = [r["path"][2][1] for r in runs if r["path"][2][1] is not None]
    lines.append(f"  {'(beside it: balancer.started seen by the bench)'.ljust(w)}  {_mmm(side)}")
    for name in sorted({c for r in runs for c, _ in r["early_commands"]}):
        vals = [v for r in runs for c, v in r["early_commands"] if c == name]
        per = statistics.median([sum(1 for c, _ in r["early_commands"] if c == name) for r in runs])
        lines.append(
            f"  {f'(before balancer.started: the balancer ran {name} x{per:g}, each)'.ljust(w)}  {_mmm(vals)}"
        )
    by = [mk["by_backfill"] for r in runs for mk in r["marks"].values() if "by_backfill" in mk]
    quick = sum(
        1
        for r in runs
        for mk in r["marks"].values()
        if "alloc" in mk and "submit" in mk and mk["alloc"] - mk["submit"] < 0.05
    )
    if by:
        lines.append(
            f"  (SLURM started {len(by)} jobs: {len(by) - int(sum(by))} on the main scheduler's pass, "
            f"{int(sum(by))} on a backfill pass; {quick} within 50 ms of the submission)"
        )
    gaps = [r["ready_gap"] for r in runs if r["ready_gap"] is not None]
    lines.append(f"  {'(beside it: second server ready after the first)'.ljust(w)}  {_mmm(gaps)}")
    return "\n".join(lines)


def summary(by_clients: dict[int, list[dict[str, Any]]]) -> str:
    """One paragraph: the largest segments of the critical path, over every run."""
    agg: dict[str, list[float]] = {}
    wholes: list[float] = []
    for runs in by_clients.values():
        for r in runs:
            wholes.append(r["whole"])
            for label, v in r["path"]:
                if v is not None and not label.startswith(("balancer.started -> seen", "first journal")):
                    agg.setdefault(label.split("] ", 1)[-1], []).append(v)
    med = {k: statistics.median(v) for k, v in agg.items()}
    whole = statistics.median(wholes)
    top = sorted(med.items(), key=lambda kv: -kv[1])
    parts = [f"{k} {v * 1000:.0f} ms ({v / whole:.0%})" for k, v in top[:6]]
    return (
        f"Where the time goes (median over {len(wholes)} cold runs, whole run {whole * 1000:.0f} ms): "
        + "; ".join(parts)
        + "."
    )


def import_times(module: str, top: int = 10, root: Path | None = None, code: str | None = None) -> str:
    """``python -X importtime -c 'import MODULE'`` (or ``code``) in the checkout ``root``, 3 times:
    the total and the top imports by cumulative time (median of the 3)."""
    root = root or Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    runs: list[dict[str, int]] = []
    totals = []
    for _ in range(3):
        t = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code or f"import {module}"],
            capture_output=True,
            text=True,
            cwd=root,
            env=env,
        )
        totals.append(time.perf_counter() - t)
        cum: dict[str, int] = {}
        for line in res.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if m:
                cum[m.group(4)] = max(cum.get(m.group(4), 0), int(m.group(2)))
        runs.append(cum)
    names = set().union(*runs)
    med = {n: statistics.median([r.get(n, 0) for r in runs]) for n in names}
    what = f"'import {module}'" if code is None else module
    lines = [
        f"python -X importtime -c {what}: whole interpreter run "
        f"{_mmm(totals)} ms; {len(names)} modules; top {top} by cumulative import time (median of 3, ms):"
    ]
    for n, us in sorted(med.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {us / 1000:8.1f}  {n}")
    return "\n".join(lines)


_SERVE_IMPORTS = """
import sys
from balancer.cli.main import main
try:
    main(["serve", "--help"])  # the command line's own imports: the parsers it builds
except SystemExit:
    pass
import balancer.runner, balancer.app, balancer.backends.registry, balancer.backends.batch.slurm
import balancer.capacity.history, balancer.capacity.monitor, balancer.capacity.collectors
import balancer.profiling.autosize, balancer.ops.reload
"""


def serve_imports(root: Path, top: int = 12) -> str:
    """What ``balancer serve`` with a SLURM config imports before its first submission: the
    command line (``serve --help``: its parsers), the runner and app, the SLURM backend, the
    capacity collection (on by default)."""
    return import_times(
        "'balancer serve' (its parser, runner, app, slurm backend, capacity)", top, root, _SERVE_IMPORTS
    )


# -- the same steps measured alone, on a quiet pool (no other start-up competing for the CPUs) ------
_PROBE_SCRIPT = """
import asyncio, sys, time
t = time.perf_counter()
from balancer.control.probe import Probe
t_mod = time.perf_counter()
async def check(p, url):
    if hasattr(p, "ready_check"):  # /Info and the sizes together
        await p.ready_check(url, ["posterior"])
    else:  # /Info, then the sizes, one after the other
        await p.models(url)
        await p.sizes(url, "posterior")
async def main():
    p = Probe()
    url = sys.argv[1]
    a = time.perf_counter()
    await check(p, url)  # the first: lazy imports included
    b = time.perf_counter()
    await check(p, url)
    c = time.perf_counter()
    await p.close()
    print(t_mod - t, b - a, c - b)
asyncio.run(main())
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_alone(root: Path) -> tuple[float, float, list[float]]:
    """Spawn ``models/eigen.py`` alone: seconds to its port listening and to /Info answering (2 ms
    polls), then the balancer's ready check against it in a fresh interpreter (``Probe``)."""
    import http.client
    import socket

    port = _free_port()
    env = {**os.environ, "PORT": str(port), "OMP_NUM_THREADS": "1", "UMBRIDGE_HOST": "127.0.0.1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(root / "models" / "eigen.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t_listen = t_info = None
        while time.perf_counter() - t0 < 30 and t_info is None:
            if t_listen is None:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        t_listen = time.perf_counter()
            if t_listen is not None:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    c.request("GET", "/Info")
                    if c.getresponse().status == 200:
                        t_info = time.perf_counter()
                    c.close()
                except OSError:
                    pass
            time.sleep(0.002)
        res = subprocess.run(
            [sys.executable, "-c", _PROBE_SCRIPT, f"http://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        probe = [float(x) for x in res.stdout.split()] if res.returncode == 0 else []
        return (t_listen or t0) - t0, (t_info or t0) - t0, probe
    finally:
        proc.terminate()
        proc.wait(10)


def standalone(root: Path, label: str = "", n: int = 3) -> str:
    rows = [_model_alone(root) for _ in range(n)]
    lines = [f"measured alone{label}, {n} times, ms: median [min-max]:"]
    lines.append(f"  eigen.py spawned -> port listening          {_mmm([r[0] for r in rows])}")
    lines.append(f"  eigen.py spawned -> /Info answers           {_mmm([r[1] for r in rows])}")
    probes = [r[2] for r in rows if len(r[2]) == 3]
    labels = [
        "ready check: import balancer.control.probe",
        "ready check: /Info + sizes, 1st (lazy imports)",
        "ready check: /Info + sizes, again",
    ]
    for i, label in enumerate(labels):
        lines.append(f"  {label.ljust(48)}  {_mmm([p[i] for p in probes])}")
    return "\n".join(lines)
