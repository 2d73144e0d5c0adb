"""A slice of a real trace replayed live onto a real SLURM controller while a campaign runs through
a real balancer, against the same slice, compression and campaign in the simulator (issue 24).

The slice (``balancer.sim.slice``): the trace's jobs submitted from ``--warmup-h`` before the
campaign's start to ``--span-h`` after it, every time divided by ``--compression``, each job a
``sleep`` of its (capped) run time and its size in ``--ntasks``, ``--time`` its request rounded up to
whole minutes; submitted by ``balancer.sim.live.replay`` at its compressed submit time to the normal
partition. The cluster: a one-node ``tests/slurm/cluster.sh`` cluster advertising the trace
machine's CPUs (EASY backfill, ``debug`` and the preemptible ``scavenger`` partition), or any
cluster named by ``--slurm-conf``. Runs, one after the other on the same cluster: the slice alone
(the baseline harm and harvest are measured against), then per policy the slice while the campaign
(``--calls`` calls of lognormal compute time, all at the campaign's start, from the official
UM-Bridge client) runs through a balancer with the SLURM backend (harvest and hybrid start
preemptible jobs in ``scavenger``), its servers ``models/waiter.py`` (a call sleeps its compute time).

The simulator runs the slice as a trace (``slice.as_trace``: the same jobs, rounded limits and CPUs)
with the same campaign and settings; its server start-up delay is the one measured live (job start
to server ready, median over every policy run). The yardsticks are ``balancer.sim.yardsticks``,
live from what SLURM and the journal recorded (``balancer.sim.live``). Printed: per policy makespan,
harm, harvest fraction and queue footprint, live, simulated and their ratio; makespan and harvest
marked against the 15 % target. The slice is written as SWF for ``balancer simulate --trace``.

    python bench/live_replay.py [--trace KTH] [--start-day 36] [--hour 10] [--warmup-h 4]
        [--span-h 8] [--compression 360] [--policies demand,forecast,harvest,hybrid] [--calls 48]
        [--call-mean-s 8] [--max-servers 6] [--cpus 5] [--slurm-conf PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from balancer.capacity.swf import read_swf  # noqa: E402
from balancer.config.schema import POLICIES  # noqa: E402
from balancer.sim import live  # noqa: E402
from balancer.sim.campaign import Campaign, lognormal  # noqa: E402
from balancer.sim.config import SimConfig  # noqa: E402
from balancer.sim.replay import Replay  # noqa: E402
from balancer.sim.run import simulate  # noqa: E402
from balancer.sim.slice import Slice, as_trace, plan_slice, swf_lines  # noqa: E402
from balancer.sim.yardsticks import figures  # noqa: E402

TRACES = ROOT.parent / "shared/data/traces"
KTH = TRACES / "KTH-SP2-1996-2.1-cln.swf.gz"
DAY, HOUR = 86400.0, 3600.0
MAX_CALL_S = 20.0  # models/waiter.py caps its input at 20
TARGET = 0.15
TIME_LIMIT_S = 600.0  # the servers' --time: far beyond a run


@dataclass
class Settings:
    """What the balancer is configured with, live and simulated alike."""

    max_servers: int
    cpus: int
    backlog: int
    idle_timeout_s: float
    slot_s: float
    grace_s: float
    poll_s: float
    one_node: bool = True  # the cluster is one node: SLURM reserves it whole for the queue's head


@dataclass
class Run:
    """One live run: the jobs as SLURM ran them and, with a policy, the campaign."""

    policy: str | None
    t0: float
    ids: dict[int, tuple[str, float]]
    jobs: dict[str, live.Job]
    campaign: live.Campaign | None
    wall_s: float


# -- the cluster -----------------------------------------------------------------------------------


def scontrol_value(env: dict[str, str], what: list[str], key: str) -> str:
    out = subprocess.run(["scontrol", "show", *what], env=env, capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():  # "Key = value" (config) or "Key=value Key=value" (others)
        k, sep, v = line.partition(" = ")
        if sep and k.strip() == key:
            return v.strip()
        for tok in line.split():
            if tok.startswith(key + "="):
                return tok.split("=", 1)[1]
    return ""


def cluster_cpus(env: dict[str, str], partition: str) -> int:
    out = subprocess.run(
        ["sinfo", "-h", "-p", partition, "-o", "%C"], env=env, capture_output=True, text=True, check=True
    )
    return sum(int(line.split("/")[-1]) for line in out.stdout.split())  # A/I/O/T


def cluster_nodes(env: dict[str, str], partition: str) -> int:
    out = subprocess.run(
        ["sinfo", "-h", "-p", partition, "-o", "%D"], env=env, capture_output=True, text=True, check=True
    )
    return sum(int(x) for x in out.stdout.split())


def cancel_all(env: dict[str, str], timeout: float = 60.0) -> None:
    subprocess.run(["scancel", "--quiet", f"--user={os.getuid()}"], env=env, capture_output=True)
    deadline = time.monotonic() + timeout
    while subprocess.run(
        ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True
    ).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError("jobs left after scancel")
        time.sleep(0.2)


# -- the balancer and the campaign -----------------------------------------------------------------


class Balancer:
    """``balancer serve`` with the SLURM backend and one spec of ``models/waiter.py`` servers."""

    def __init__(self, d: Path, policy: str, s: Settings, env: dict[str, str]) -> None:
        import tomli_w

        d.mkdir(parents=True, exist_ok=True)
        self.journal = d / "run/journal.jsonl"
        cfg = {
            "balancer": {"port": 0, "host": "127.0.0.1", "scheduler": "slurm", "run_dir": str(d / "run")},
            "backend": {
                "partition": "debug",
                "preempt_partition": "scavenger",
                "poll_interval_s": s.poll_s,
                "fast_poll_s": s.poll_s,
            },
            "forecast": {"policy": policy, "history": str(d / "capacity.sqlite"), "collect_interval_s": 5.0},
            "profiles": {"path": str(d / "profiles.sqlite")},
            "servers": [
                {
                    "name": "waiter",
                    "command": [sys.executable, str(ROOT / "models/waiter.py")],
                    "models": ["waiter"],
                    "max_servers": s.max_servers,
                    "backlog": s.backlog,
                    "idle_timeout_s": s.idle_timeout_s,
                    "env": {"WAITER_S": "1"},
                    "resources": {"cpus": s.cpus, "time_limit": "00:10:00"},
                }
            ],
        }
        (d / "balancer.toml").write_text(tomli_w.dumps(cfg))
        self.log = open(d / "balancer.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "balancer.cli", "serve", "--config", str(d / "balancer.toml")],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = self._wait_started()

    def events(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        out = []
        for line in self.journal.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def _wait_started(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the balancer exited with {self.proc.returncode}; see {self.log.name}")
            for e in self.events():
                if e.get("ev") == "balancer.started" and e.get("pid") == self.proc.pid:
                    return str(e["url"])
            time.sleep(0.1)
        raise RuntimeError(f"the balancer did not start within {timeout:g} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_calls(url: str, compute: np.ndarray) -> tuple[float, float, int]:
    """Every call at once from the official client; (first sent, last answered, answered right)."""
    import umbridge

    t_start = time.time()

    def call(x: float) -> bool:
        # One client per call: its first request (the model's metadata) waits for a server too,
        # so every call is waiting at once, as the simulated campaign's are.
        out = umbridge.HTTPModel(url, "waiter")([[float(x)]])
        return abs(out[0][0] - x) < 2.0  # the waiter returns the seconds it slept

    with ThreadPoolExecutor(len(compute)) as pool:
        ok = int(sum(pool.map(call, compute)))
    return t_start, time.time(), ok


def campaign_from_journal(
    b: Balancer,
    aliases: dict[str, str],
    jobs: dict[str, live.Job],
    t_start: float,
    t_done: float,
    compute: np.ndarray,
    ok: int,
) -> live.Campaign:
    """The campaign's figures from the client's clock and the balancer's journal."""
    evs = b.events()
    job_of = {
        e["server"]: aliases.get(str(e["job"]), str(e["job"]))
        for e in evs
        if e.get("ev") == "server.started" and e.get("job")
    }
    ready = {}
    for e in evs:
        if e.get("ev") == "server.ready" and e.get("server") in job_of:
            j = jobs.get(job_of[e["server"]])
            if j is not None and not math.isnan(j.start):
                ready[j.id] = max(0.0, float(e["t"]) - j.start)
    return live.Campaign(
        start=t_start,
        done=t_done,
        compute_s=compute,
        calls_done=ok,
        requeued=sum(e.get("ev") == "call.requeued" for e in evs),
        preempted=sum(e.get("ev") == "server.preempted" for e in evs),
        ready_after_start_s=ready,
    )


# -- one live run ----------------------------------------------------------------------------------


async def live_run(
    sl: Slice,
    policy: str | None,
    s: Settings,
    env: dict[str, str],
    jobcomp: str,
    out: Path,
    compute: np.ndarray,
    drain_s: float,
) -> Run:
    """The slice (and, with a policy, the campaign through a balancer), until every trace job started."""
    cancel_all(env)
    begin = time.time()
    b = Balancer(out / (policy or "baseline"), policy, s, env) if policy else None
    loop = asyncio.get_running_loop()
    poller = live.Poller(env, s.poll_s, skip_earlier=True)
    stop = asyncio.Event()
    poll_task = asyncio.create_task(poller.run(stop))
    chdir = out / "jobs"
    chdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time() + 1.0
    camp_task = None
    try:
        if b is not None:

            async def campaign() -> tuple[float, float, int]:
                await asyncio.sleep(max(0.0, t0 + sl.campaign_start - time.time()))
                return await loop.run_in_executor(None, run_calls, b.url, compute)

            camp_task = asyncio.create_task(campaign())
        ids = await live.replay(sl, env, t0, str(chdir))
        calls = await camp_task if camp_task is not None else None
        # Every trace job started (the harm set is all of them), or the drain time is up.
        deadline = time.time() + drain_s
        names = {v[0] for v in ids.values()}
        while time.time() < deadline:
            seen = [poller.seen.get(j) for j in names]
            if all(x is not None and not (math.isnan(x.started) and math.isnan(x.over)) for x in seen):
                break
            await asyncio.sleep(s.poll_s)
        await poller.poll_once()
    finally:
        if b is not None:
            b.stop()
        stop.set()
        await poll_task
    wall = time.time() - begin
    cancel_all(env)
    comp = {k: v for k, v in live.read_jobcomp(jobcomp).items() if v.submit >= begin - 1}
    seen = {k: v for k, v in poller.seen.items() if not v.name.startswith("probe")}
    jobs = live.records(seen, comp, s.poll_s)
    camp = None
    if b is not None and calls is not None:
        camp = campaign_from_journal(b, poller.aliases, jobs, calls[0], calls[1], compute, calls[2])
    run = Run(policy, t0, ids, jobs, camp, wall)
    dump(run, out / f"{policy or 'baseline'}.json")
    return run


def dump(r: Run, path: Path) -> None:
    """One run's records, for a second look (times in seconds from the run's ``t0``)."""
    rel = lambda x: None if math.isnan(x) else round(x - r.t0, 3)  # noqa: E731
    doc = {
        "policy": r.policy,
        "t0": r.t0,
        "trace": {str(i): jid for i, (jid, _) in r.ids.items()},
        "jobs": {
            k: {
                "name": j.name,
                "partition": j.partition,
                "cpus": j.cpus,
                "submit": rel(j.submit),
                "start": rel(j.start),
                "end": rel(j.end),
                "state": j.state,
            }
            for k, j in r.jobs.items()
        },
    }
    if r.campaign is not None:
        c = r.campaign
        doc["campaign"] = {
            "start": rel(c.start),
            "done": rel(c.done),
            "calls_done": int(c.calls_done),
            "requeued": c.requeued,
            "preempted": c.preempted,
            "ready_after_start_s": c.ready_after_start_s,
        }
    doc["wall_s"] = r.wall_s
    path.write_text(json.dumps(doc, indent=1))


def load(path: Path, compute: np.ndarray) -> Run:
    """A run ``dump`` wrote: the figures again without the live runs (``--again DIR``)."""
    doc = json.loads(path.read_text())
    t0 = float(doc["t0"])
    ab = lambda x: math.nan if x is None else float(x) + t0  # noqa: E731
    jobs = {
        k: live.Job(
            k, j["name"], j["partition"], j["cpus"], ab(j["submit"]), ab(j["start"]), ab(j["end"]), j["state"]
        )
        for k, j in doc["jobs"].items()
    }
    ids = {int(i): (jid, 0.0) for i, jid in doc["trace"].items()}
    camp = None
    if "campaign" in doc:
        c = doc["campaign"]
        camp = live.Campaign(
            start=ab(c["start"]),
            done=ab(c["done"]),
            compute_s=compute,
            calls_done=int(c.get("calls_done", len(compute))),
            requeued=int(c.get("requeued", 0)),
            preempted=int(c.get("preempted", 0)),
            ready_after_start_s={k: float(v) for k, v in c["ready_after_start_s"].items()},
        )
    return Run(doc["policy"], t0, ids, jobs, camp, float(doc.get("wall_s", math.nan)))


# -- the simulator ---------------------------------------------------------------------------------


def sim_config(s: Settings, sl: Slice, startup_s: float, observe_cold: bool = False) -> SimConfig:
    return SimConfig(
        max_servers=s.max_servers,
        cpus=s.cpus,
        backlog=s.backlog,
        time_limit_s=TIME_LIMIT_S,
        idle_timeout_s=s.idle_timeout_s,
        startup_delay_s=startup_s,
        tick_s=0.25,  # the live scaler's scale_interval_s
        step_s=s.slot_s,
        horizon_s=48 * HOUR / sl.compression,
        harm_window_s=1e9,  # every trace job after the campaign's start
        give_up_after_s=3600.0,
        observe_cold=observe_cold,
    )


def sim_figures(sl: Slice, s: Settings, camp: Campaign, policy: str, cfg: SimConfig) -> dict[str, float]:
    replay = Replay(as_trace(sl), [sl.campaign_start], s.slot_s, "easy", s.grace_s, "cap", s.one_node)
    # The slice is all the cluster's load: past its last job the replay's idle series would end
    # (and the harvest fraction count what ran after as not harvested); the cluster is idle there.
    pad = np.full(int(3600.0 // s.slot_s), float(replay.procs))
    replay.idle = np.concatenate([replay.idle, pad])
    return figures(simulate(replay, sl.campaign_start, camp, policy, cfg), replay)


# -- the table -------------------------------------------------------------------------------------

ROWS = (
    ("makespan_h", "makespan (s)", 3600.0, "{:.1f}", True),
    ("harm_cpu_h", "harm: extra CPU-wait (CPU-s)", 3600.0, "{:.0f}", False),
    ("harm_per_cpu_h", "harm per campaign CPU-s", 1.0, "{:.3f}", False),
    ("harm_delayed", "share of trace jobs delayed", 1.0, "{:.2f}", False),
    ("harvest_fraction", "harvest fraction", 1.0, "{:.3f}", True),
    ("pending_max", "pending allocations max", 1.0, "{:.0f}", False),
    ("pending_mean", "pending allocations mean", 1.0, "{:.2f}", False),
    ("submissions", "server jobs submitted", 1.0, "{:.0f}", False),
    ("preempted", "servers preempted", 1.0, "{:.0f}", False),
)


def _cell(fmt: str, v: float) -> str:
    return "-" if not math.isfinite(v) else fmt.format(v)


def table(live_f: dict[str, dict[str, float]], sim_f: dict[str, dict[str, float]]) -> str:
    lines = ["| policy | yardstick | live | simulated | live/sim |", "|---|---|---|---|---|"]
    for p in live_f:
        for key, label, scale, fmt, target in ROWS:
            a, b = live_f[p].get(key, math.nan) * scale, sim_f[p].get(key, math.nan) * scale
            ratio = a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan
            mark = ""
            if target and math.isfinite(ratio):
                mark = " (within 15 %)" if abs(ratio - 1.0) <= TARGET else " **(beyond 15 %)**"
            lines.append(
                f"| {p} | {label} | {_cell(fmt, a)} | {_cell(fmt, b)} | {_cell('{:.2f}', ratio)}{mark} |"
            )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------


def start_cluster(out: Path, cpus: int, grace_s: int) -> Any:
    from tests.slurm.fixture import SlurmCluster

    os.environ["TEST_SLURM_CPUS"] = str(cpus)
    os.environ["TEST_SLURM_GRACE_TIME"] = str(grace_s)
    d = Path(tempfile.mkdtemp(prefix="ub-live-"))
    d.chmod(0o755)
    return SlurmCluster.start(d)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default=str(KTH))
    ap.add_argument("--start-day", type=float, default=36.0, help="days from the trace's start")
    ap.add_argument("--hour", type=float, default=10.0, help="hour of that day (UTC) the campaign starts")
    ap.add_argument("--warmup-h", type=float, default=4.0)
    ap.add_argument("--span-h", type=float, default=8.0)
    ap.add_argument("--compression", type=float, default=360.0)
    ap.add_argument(
        "--carry-in",
        action="store_true",
        help="also the jobs running or queued when the slice starts (at time 0, what they had left)",
    )
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--calls", type=int, default=48)
    ap.add_argument("--call-mean-s", type=float, default=8.0)
    ap.add_argument("--max-servers", type=int, default=6)
    ap.add_argument("--cpus", type=int, default=5, help="CPUs per server job")
    ap.add_argument("--backlog", type=int, default=2)
    ap.add_argument("--idle-timeout-s", type=float, default=10.0)
    ap.add_argument(
        "--grace-s", type=int, default=3, help="the scavenger partition's GraceTime (new cluster)"
    )
    ap.add_argument("--poll-s", type=float, default=0.25)
    ap.add_argument(
        "--drain-s", type=float, default=120.0, help="most to wait for the last trace jobs to start"
    )
    ap.add_argument("--startup-s", type=float, default=None, help="simulated start-up (default: measured)")
    ap.add_argument("--slurm-conf", default=None, help="use this cluster instead of starting one")
    ap.add_argument(
        "--again",
        metavar="DIR",
        help="no live runs: the figures again from the runs an earlier --out DIR kept (same slice options)",
    )
    ap.add_argument("--out", default=None, help="keep the runs' files here (default: a temporary dir)")
    args = ap.parse_args()
    t_all = time.perf_counter()
    path = Path(args.trace)
    if not path.exists():
        print(f"live_replay: trace not found at {path} (the traces live in ../shared/data/traces)")
        return 2
    policies = [p for p in args.policies.split(",") if p]
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        print(f"live_replay: unknown policies {bad} (known: {', '.join(POLICIES)})")
        return 2
    trace = read_swf(path)
    out = Path(args.out or tempfile.mkdtemp(prefix="ub-live-replay-"))
    out.mkdir(parents=True, exist_ok=True)
    cluster = None
    if args.again:
        env = dict(os.environ)
    elif args.slurm_conf:
        env = {**os.environ, "SLURM_CONF": str(Path(args.slurm_conf).resolve())}
    else:
        t = time.perf_counter()
        cluster = start_cluster(out, trace.max_procs, args.grace_s)
        env = cluster.env
        print(f"cluster up in {time.perf_counter() - t:.1f} s: {cluster.dir}")
    try:
        return _main(args, trace, policies, env, out, t_all)
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.dir, ignore_errors=True)


def _main(
    args: argparse.Namespace, trace: Any, policies: list[str], env: dict[str, str], out: Path, t_all: float
) -> int:
    if args.again:
        setup = json.loads((Path(args.again) / "setup.json").read_text())
    else:
        setup = {
            "cpus": cluster_cpus(env, "debug"),
            "nodes": cluster_nodes(env, "debug"),
            "grace_s": float(scontrol_value(env, ["partition", "scavenger"], "GraceTime") or 0),
            "jobcomp": scontrol_value(env, ["config"], "JobCompLoc"),
        }
        (out / "setup.json").write_text(json.dumps(setup))
    cpus, nodes, grace, jobcomp = setup["cpus"], setup["nodes"], setup["grace_s"], setup["jobcomp"]
    start = args.start_day * DAY + args.hour * HOUR
    sl = plan_slice(
        trace, start, args.span_h * HOUR, args.compression, cpus, args.warmup_h * HOUR, args.carry_in
    )
    slot = 900.0 / args.compression
    s = Settings(
        args.max_servers, args.cpus, args.backlog, args.idle_timeout_s, slot, grace, args.poll_s, nodes == 1
    )
    base_camp = lognormal(args.calls, args.call_mean_s, 0.5, seed=7)
    camp = Campaign(base_camp.arrive, np.clip(base_camp.compute, 0.05, MAX_CALL_S))
    (out / "slice.swf").write_text("\n".join(swf_lines(sl)) + "\n")
    name = Path(sl.source).name.split(".swf")[0]
    print(
        f"slice: {name}, day {args.start_day:g} {args.hour:g}:00 UTC, {args.warmup_h:g} h warm-up +"
        f" {args.span_h:g} h, compressed {args.compression:g}x: {len(sl)} jobs ({sl.carried} carried in)"
        f" in {sl.length:.0f} s, campaign at {sl.campaign_start:.0f} s; cluster {cpus} CPUs on {nodes}"
        f" node(s) (trace machine {sl.machine_cpus}), {sl.capped} jobs capped, {sl.limits_raised} limits"
        f" raised to whole minutes; slot {slot:g} s; grace {grace:g} s"
    )
    print(
        f"campaign: {len(camp)} calls at once, compute mean {camp.compute.mean():.1f} s (lognormal, sigma"
        f" 0.5, capped {MAX_CALL_S:g} s) = {camp.work_s:.0f} server-s; {s.max_servers} servers of {s.cpus}"
        f" CPUs, backlog {s.backlog}, idle timeout {s.idle_timeout_s:g} s"
    )
    runs: dict[str, Run] = {}
    for p in [None, *policies]:
        t = time.perf_counter()
        if args.again:
            r = load(Path(args.again) / f"{p or 'baseline'}.json", camp.compute)
        else:
            r = asyncio.run(live_run(sl, p, s, env, jobcomp, out, camp.compute, args.drain_s))
        runs[p or "baseline"] = r
        took = r.wall_s if args.again else time.perf_counter() - t
        print(f"live run {p or 'baseline (the slice alone)'}: {took:.0f} s", flush=True)
    b = runs["baseline"]
    base = live.baseline(sl, b.jobs, b.ids, b.t0, slot, grace)
    not_started = int(np.isnan(base.start).sum())
    print(f"\nbaseline: {len(sl) - not_started} of {len(sl)} trace jobs started")
    for one in sorted({s.one_node, False}, reverse=True):
        replay0 = Replay(as_trace(sl), [], slot, "easy", grace, "cap", one_node=one)
        d = base.start - replay0.start
        how = "whole-node reservations" if one else "CPU-level EASY"
        print(
            f"the slice alone, live against the simulator's replay ({how}): trace jobs' starts differ by"
            f" {np.nanmean(np.abs(d)):.2f} s mean, {np.nanmax(np.abs(d)):.2f} s max (live later by"
            f" {np.nanmean(d):+.2f} s)"
        )
    ready = [x for p in policies if runs[p].campaign for x in runs[p].campaign.ready_after_start_s.values()]
    measured = float(np.median(ready)) if ready else 30.0
    startup = measured if args.startup_s is None else args.startup_s
    print(f"server start-up (job start to ready): median {measured:.2f} s over {len(ready)} servers")
    live_f: dict[str, dict[str, float]] = {}
    for p in policies:
        r = runs[p]
        assert r.campaign is not None
        res = live.live_result(
            p, sl, base, r.jobs, r.ids, r.t0, r.campaign, s.cpus, s.max_servers, startup, 1e9
        )
        live_f[p] = figures(res, base)
        live_f[p]["calls_ok"] = float(r.campaign.calls_done)
    t = time.perf_counter()
    cfg = sim_config(s, sl, startup)
    sim_f = {p: sim_figures(sl, s, camp, p, cfg) for p in policies}
    t_sim = time.perf_counter() - t
    print(
        "\nlive against simulated (calibrated: start-up measured, the live cold view, whole-node reservations"
    )
    print("on one node):\n")
    print(table(live_f, sim_f))
    for p in policies:
        print(f"{p}: calls answered right {live_f[p]['calls_ok']:.0f}/{len(camp)}")
    # The same slice, campaign and settings in ``balancer simulate`` (its table's makespan and harvest
    # fraction are the "simulated" columns above; the campaign's draws are capped at the waiter's
    # MAX_CALL_S here only).
    print(
        f"\nthe simulated side from the CLI: balancer simulate --trace {out / 'slice.swf'}"
        f" --start {sl.campaign_start:g} --calls {len(camp)} --call-mean-s {args.call_mean_s:g}"
        f" --call-sigma 0.5 --seed 7 --max-servers {s.max_servers} --cpus {s.cpus} --backlog {s.backlog}"
        f" --idle-timeout-s {s.idle_timeout_s:g} --tick-s 0.25 --slot-s {s.slot_s:g} --cold-view none"
        f"{' --one-node' if s.one_node else ''} --startup-s {startup:.2f} --grace-s {s.grace_s:g}"
        f" --time-limit {TIME_LIMIT_S:.0f}s --policies {','.join(policies)}"
    )
    # What each calibration does: the simulator as it was (30 s start-up, the current observation
    # while cold, CPU-level EASY), then one change at a time.
    plain = sim_config(s, sl, 30.0, observe_cold=True)
    variants = {
        "uncalibrated": (plain, False),
        "+ start-up measured": (replace(plain, startup_delay_s=startup), False),
        "+ cold view as live": (replace(plain, startup_delay_s=startup, observe_cold=False), False),
        "+ whole-node reservations": (cfg, s.one_node),
    }
    print("\nmakespan (s) / harvest fraction, live and simulated step by step:")
    head = "| policy | live | " + " | ".join(variants) + " |"
    print(head + "\n|" + "---|" * (2 + len(variants)))
    for p in policies:
        cells = [f"{live_f[p]['makespan_h'] * 3600:.1f} / {live_f[p]['harvest_fraction']:.3f}"]
        for c, one in variants.values():
            f = sim_figures(sl, replace(s, one_node=one), camp, p, c)
            cells.append(f"{f['makespan_h'] * 3600:.1f} / {f['harvest_fraction']:.3f}")
        print(f"| {p} | " + " | ".join(cells) + " |")
    pre = [p for p in policies if p in ("harvest", "hybrid")]
    if pre:
        held = {p: sim_figures(sl, s, camp, p, replace(cfg, on_notice="hold")) for p in pre}
        cells = ", ".join(
            f"{p} live {live_f[p]['harm_cpu_h'] * 3600:.0f}, simulated 'now'"
            f" {sim_f[p]['harm_cpu_h'] * 3600:.0f}, 'hold' {held[p]['harm_cpu_h'] * 3600:.0f}"
            for p in pre
        )
        print(
            f"\nharm (CPU-s) when a preempted server's job ends at the notice or at the grace's end: {cells}"
        )
    print(
        f"\nsimulator: {t_sim:.2f} s for {len(policies)} policies; files: {out} (slice.swf: the slice as SWF)"
    )
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
