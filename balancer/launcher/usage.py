"""What a model server uses: its whole process tree, the node it runs on and the GPUs it can see.

The launcher samples every ``monitor_interval_s`` on a worker thread and sends the samples with its
next lease poll; the balancer journals each as ``server.usage`` (README, "Resource monitoring").
Processes come and go between listing and reading (a worker pool, a ``subprocess`` call): one that
vanishes or refuses is skipped, never an error. CPU time includes the children a process of the
tree has reaped (psutil's ``children_*``), so short-lived helpers are counted too; ``cpu_s`` is kept
monotonic (time lost with a process that left the tree unreaped is not subtracted again).
Page faults come from ``/proc/<pid>/stat`` (one small read; psutil's ``memory_full_info`` walks the
whole address map). GPUs through NVML (``nvidia-ml-py``, optional): no library, no driver or no
visible GPU means no ``gpus`` key, logged once, never an error.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import psutil

_PROC_ERRORS = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError)


def _log(msg: str) -> None:
    print(f"[usage {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_faults(pid: int) -> tuple[int, int]:
    """``(minflt, majflt)`` of ``pid`` including its reaped children (Linux ``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        f = fh.read().rsplit(b")", 1)[1].split()
    # After the command: state(0) ppid ... minflt(7) cminflt(8) majflt(9) cmajflt(10)
    return int(f[7]) + int(f[8]), int(f[9]) + int(f[10])


def tree_pids(root: int, proc: str = "/proc") -> list[int] | None:
    """``root`` and its descendants from ``/proc/<pid>/task/<tid>/children`` (Linux 3.5+ with
    CONFIG_PROC_CHILDREN): a few small reads per process of the tree, where psutil's ``children``
    reads ``/proc/<pid>/stat`` of every process on the node (~3 ms per sample with 100). None
    where the kernel lacks these files; a process that vanishes meanwhile is skipped."""
    if not os.path.exists(f"{proc}/{root}/task/{root}/children"):
        return None if os.path.exists(f"{proc}/{root}") else []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            tids = os.listdir(f"{proc}/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"{proc}/{pid}/task/{tid}/children", "rb") as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except (OSError, ValueError):
                continue
    return out


def visible_gpus(env: dict[str, str] | os._Environ[str]) -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs); None: all GPUs are visible."""
    v = env.get("CUDA_VISIBLE_DEVICES")
    if v is None:
        return None
    out = []
    for x in (s.strip() for s in v.split(",")):
        if not x or x.startswith("-"):  # CUDA stops at the first invalid entry ("-1": none)
            break
        out.append(x)
    return out


class GpuSampler:
    """NVML handles of the GPUs the server sees; ``None`` from ``sample`` where there are none."""

    def __init__(self, env: dict[str, str] | os._Environ[str]) -> None:
        self._nvml: Any = None
        self._handles: list[tuple[int, str, Any]] = []
        self._failed = False
        try:
            import pynvml  # nvidia-ml-py, the optional "gpu" extra

            pynvml.nvmlInit()
        except Exception as exc:  # no library, no driver (NVMLError_LibraryNotFound), no permission
            _log(f"no GPU monitoring: {type(exc).__name__}: {exc}".rstrip(": "))
            return
        self._nvml = pynvml
        try:
            wanted = visible_gpus(env)
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = pynvml.nvmlDeviceGetUUID(h)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                by_uuid = any(uuid.startswith(w) for w in wanted or () if w.startswith("GPU-"))
                if wanted is None or str(i) in wanted or by_uuid:
                    self._handles.append((i, uuid, h))
        except Exception as exc:
            _log(f"no GPU monitoring: {type(exc).__name__}: {exc}")
            self._handles = []

    def sample(self) -> list[dict[str, Any]] | None:
        if not self._handles or self._failed:
            return None
        nv = self._nvml
        out = []
        try:
            for i, uuid, h in self._handles:
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                out.append(
                    {
                        "index": i,
                        "uuid": uuid,
                        "util_pct": float(nv.nvmlDeviceGetUtilizationRates(h).gpu),
                        "mem_used_bytes": int(mem.used),
                        "mem_total_bytes": int(mem.total),
                    }
                )
        except Exception as exc:  # a GPU lost, a driver reloaded: stop asking, say so once
            self._failed = True
            _log(f"GPU monitoring stopped: {type(exc).__name__}: {exc}")
            return None
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down anyway
                pass
            self._nvml = None


class UsageSampler:
    """Samples one process tree (``root_pid`` and its descendants). Not thread-safe: one caller
    (the launcher's worker thread) at a time. Cumulative counters are as psutil reports them, for
    the processes alive at the sample (plus what they reaped)."""

    def __init__(self, root_pid: int, gpus: bool = True, env: dict[str, str] | None = None) -> None:
        self.root_pid = root_pid
        self._root: psutil.Process | None = None
        with_env = os.environ if env is None else env
        self._gpu = GpuSampler(with_env) if gpus else None
        self._last_m = time.monotonic()
        self._raw_cpu = 0.0  # the tree's summed CPU time at the last sample
        self._cpu_s = 0.0  # monotonic: the raw sum plus what vanished processes took with them
        self._prev_cpu_s = 0.0
        self._rss_peak = 0
        self._faults_ok = sys.platform.startswith("linux")
        self._proc_children = self._faults_ok  # /proc/<pid>/task/<tid>/children, else psutil's scan
        self._known: dict[int, psutil.Process] = {}
        # A first look primes the node's CPU split and the tree's CPU time, so the first real
        # sample's rates cover its interval, not the processes' whole life.
        self.sample()

    def _processes(self) -> list[psutil.Process]:
        try:
            if self._root is None:
                self._root = psutil.Process(self.root_pid)
            if not self._root.is_running():
                return []
            pids = tree_pids(self.root_pid) if self._proc_children else None
            if pids is None:
                self._proc_children = False
                return [self._root, *self._root.children(recursive=True)]
        except _PROC_ERRORS:
            return []
        out = [self._root]
        for pid in pids[1:]:
            proc = self._known.get(pid)
            if proc is None:
                try:
                    proc = psutil.Process(pid)
                except _PROC_ERRORS:
                    continue  # gone since it was listed
            out.append(proc)
        self._known = {p.pid: p for p in out}  # reused: psutil checks a pid was not recycled
        return out

    def sample(self) -> dict[str, Any]:
        """One sample (README, ``server.usage``); never raises for vanished or refusing processes."""
        now_m = time.monotonic()
        cpu = 0.0
        rss = threads = vol = invol = minflt = majflt = procs = 0
        io_r = io_w = 0
        io_seen = faults_seen = False
        for p in self._processes():
            try:
                with p.oneshot():
                    ct = p.cpu_times()
                    mem = p.memory_info()
                    n = p.num_threads()
                    cs = p.num_ctx_switches()
            except _PROC_ERRORS:
                continue  # gone between listing and reading, or not ours to read
            procs += 1
            cpu += ct.user + ct.system + getattr(ct, "children_user", 0.0)
            cpu += getattr(ct, "children_system", 0.0)
            rss += mem.rss
            threads += n
            vol += cs.voluntary
            invol += cs.involuntary
            try:
                io = p.io_counters()
                io_r += io.read_bytes
                io_w += io.write_bytes
                io_seen = True
            except (*_PROC_ERRORS, AttributeError, NotImplementedError):
                pass  # /proc/<pid>/io is root-or-owner only; absent on some platforms
            if self._faults_ok:
                try:
                    mn, mj = read_faults(p.pid)
                    minflt += mn
                    majflt += mj
                    faults_seen = True
                except (OSError, IndexError, ValueError):
                    pass
        # A process that left the tree unreaped takes its CPU time with it: never count backwards.
        self._cpu_s += max(0.0, cpu - self._raw_cpu) if procs else 0.0
        self._raw_cpu = cpu
        dt = max(now_m - self._last_m, 1e-6)
        util = (self._cpu_s - self._prev_cpu_s) / dt
        self._prev_cpu_s = self._cpu_s
        self._last_m = now_m
        self._rss_peak = max(self._rss_peak, rss)
        s: dict[str, Any] = {
            "t": round(time.time(), 3),
            "interval_s": round(dt, 3),
            "cpu_s": round(self._cpu_s, 3),
            "cpu_util": round(util, 3),
            "rss_bytes": rss,
            "rss_peak_bytes": self._rss_peak,
            "threads": threads,
            "ctx_vol": vol,
            "ctx_invol": invol,
            "procs": procs,
        }
        if io_seen:
            s["io_read_bytes"] = io_r
            s["io_write_bytes"] = io_w
        if faults_seen:
            s["minflt"] = minflt
            s["majflt"] = majflt
        s["node"] = node_sample()
        gpus = self._gpu.sample() if self._gpu is not None else None
        if gpus:
            s["gpus"] = gpus
        return s

    def close(self) -> None:
        if self._gpu is not None:
            self._gpu.close()


def node_sample() -> dict[str, Any]:
    """The node as a whole: CPU busy and IO wait (percent, since the previous call in this
    process), memory used (percent), 1-minute load and CPU count."""
    ct = psutil.cpu_times_percent(None)
    iowait = float(getattr(ct, "iowait", 0.0))
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = 0.0
    return {
        "cpu_pct": round(max(0.0, 100.0 - ct.idle - iowait), 1),
        "iowait_pct": round(iowait, 1),
        "mem_used_pct": round(psutil.virtual_memory().percent, 1),
        "load1": round(load1, 2),
        "cpus": psutil.cpu_count() or 1,
    }


# The fields of one sample the balancer journals, all numbers; anything else is left out.
_NUM = (int, float)
SAMPLE_FIELDS = (
    "t", "interval_s", "cpu_s", "cpu_util", "rss_bytes", "rss_peak_bytes", "io_read_bytes",
    "io_write_bytes", "threads", "ctx_vol", "ctx_invol", "procs", "minflt", "majflt",
)  # fmt: skip
NODE_FIELDS = ("cpu_pct", "iowait_pct", "mem_used_pct", "load1", "cpus")
GPU_FIELDS = ("index", "util_pct", "mem_used_bytes", "mem_total_bytes")
MAX_BATCH = 1000  # samples taken from one lease poll; more are dropped (a launcher keeps 100)


def _number(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool)


def _clean_one(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or not _number(raw.get("t")):
        return None
    out: dict[str, Any] = {}
    for k in SAMPLE_FIELDS:
        if k in raw:
            if not _number(raw[k]):
                return None
            out[k] = raw[k]
    node = raw.get("node")
    if node is not None:
        if not isinstance(node, dict) or not all(_number(node.get(k, 0)) for k in NODE_FIELDS):
            return None
        out["node"] = {k: node[k] for k in NODE_FIELDS if k in node}
    gpus = raw.get("gpus")
    if gpus is not None:
        if not isinstance(gpus, list):
            return None
        clean = []
        for g in gpus:
            if not isinstance(g, dict) or not all(_number(g.get(k, 0)) for k in GPU_FIELDS):
                return None
            if not isinstance(g.get("uuid", ""), str):
                return None
            clean.append({k: g[k] for k in (*GPU_FIELDS, "uuid") if k in g})
        out["gpus"] = clean
    return out


def clean_samples(raw: Any) -> tuple[list[dict[str, Any]], int]:
    """The well-formed samples of a launcher's ``usage`` list, and how many were dropped. Known
    fields only, numbers only: a launcher's body must not be able to overwrite ``server`` or
    ``ev`` in the journal, nor fill it with anything else."""
    if raw is None:
        return [], 0
    if not isinstance(raw, list):
        return [], 1
    good = [c for c in map(_clean_one, raw[:MAX_BATCH]) if c is not None]
    return good, len(raw) - len(good)


def journal_fields(sample: dict[str, Any]) -> dict[str, Any]:
    """A clean sample as ``server.usage`` fields: the bus stamps its own ``t`` (when the balancer
    got the sample), so the launcher's sampling time is ``sample_t``."""
    fields = dict(sample)
    fields["sample_t"] = fields.pop("t")
    return fields
