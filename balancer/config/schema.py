"""The configuration's shape: frozen dataclasses with their defaults, and the error a bad key raises.

A contract module: it imports nothing of the balancer, so every layer (policy, backends, pool,
notices) can type against the configuration without importing its parser (``config.parse``), which
needs the backends' option tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, phrased for the user, naming the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config error: {key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Resources:
    """What the cluster backends ask the scheduler for, per server."""

    cpus: int = 1
    memory: str | None = None  # e.g. "2G", passed to the scheduler as is
    gpus: int = 0
    time_limit: str | None = None  # SLURM syntax, e.g. "01:00:00"
    # Fields given as "auto": sized from the spec's profile at start (sizing.py); until then defaults.
    auto: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerSpec:
    """One kind of model server and how many of it the pool may run."""

    name: str
    command: tuple[str, ...] = ()
    job_script: str | None = None
    models: tuple[str, ...] = ()  # empty: discovered from /Info of the first server
    concurrency: int = 1
    min_servers: int = 0
    max_servers: int = 4
    backlog: int = 2
    idle_timeout_s: float = 60.0
    startup_timeout_s: float = 120.0  # counts from the job's start, not from its submission
    pending_timeout_s: float | None = None  # stop a start queued longer (not a failed start); None: never
    floor: int | None = None  # hybrid policy: normal-priority servers below the harvest (None: default)
    max_attempts: int = 3
    max_start_failures: int = 3
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    # "socket": the model listens on a Unix socket in an owner-only directory, not on a loopback
    # port other local users can connect to (local backend; the model must honour UMBRIDGE_SOCKET).
    isolate: str = ""
    resources: Resources = field(default_factory=Resources)
    # The scheduler's per-server options (partition, threads, ...): its ``ServerOptions`` dataclass.
    options: Any = None
    # The job script's content digest when the file was read: a reload sees an edited script.
    script_sha: str = ""

    def server_command(self) -> list[str]:
        """The command that starts one model server (it must listen on ``$PORT``)."""
        if self.job_script:
            return ["bash", self.job_script]
        return list(self.command)


# The scaling policies (issue 20): demand only; today's forecast-aware rules; harvest (every server a
# preemptible job on idle CPUs); hybrid (a floor of normal-priority servers, harvest above it).
POLICIES = ("demand", "forecast", "harvest", "hybrid")
LOOPS = ("auto", "asyncio", "uvloop")  # [balancer] loop: which event loop ``serve`` runs on
HARVESTING = frozenset({"harvest", "hybrid"})  # the policies that start (some or all) jobs preemptible


@dataclass(frozen=True)
class ForecastRules:
    """The forecast-aware rules, each off-able. They apply only when a forecast is observed.

    - admission: never more pending starts than the forecast says can start within
      ``max_pending_wait_s`` (at least ``min_pending``, so a campaign always has one job queued);
    - pre-warm: while calls wait, grow into predicted idle capacity beyond ``backlog`` at once;
    - fit time limits: ask for a time limit that fits the predicted idle window (a short job
      backfills sooner), within ``[min_time_limit_s, the spec's time limit]``;
    - polite: when even the forecast's upper bound says the cluster fills up within
      ``polite_horizon_s``, stop idle servers after ``polite_idle_s`` instead of the idle timeout;
    - cool-down (hysteresis): after an idle stop, start again only for calls that waited
      ``upscale_delay_s``; after a demand start, stop nothing for idleness for ``cooldown_s``.
    """

    policy: str = "demand"  # one of POLICIES: which rule set scales the pool (bench/harvest.py)
    admission: bool = True
    max_pending_wait_s: float = 600.0
    min_pending: int = 1
    prewarm: bool = True
    fit_time_limit: bool = True
    min_time_limit_s: float = 3600.0
    polite: bool = True
    polite_horizon_s: float = 3600.0
    polite_idle_s: float = 10.0
    cooldown: bool = True
    cooldown_s: float = 120.0
    upscale_delay_s: float = 30.0


@dataclass(frozen=True)
class ForecastSettings:
    """The ``[forecast]`` table: collect the cluster's capacity, forecast it, scale by it.

    The rule switches and thresholds (``admission``, ``max_pending_wait_s``, ``prewarm``, ...) sit in
    the same table and become ``rules``; see ``ForecastRules``."""

    enabled: bool = True  # false: demand-only scaling until switched on (API/CLI)
    collect: bool = True  # sample the cluster's capacity into the history (false: no sinfo/squeue)
    history: str | None = None  # SQLite history; default ~/.local/share/umbridge-balancer/capacity.sqlite
    retention_days: float = 400.0
    collect_interval_s: float = 60.0
    grid_s: float = 900.0
    horizon_s: float = 48 * 3600.0
    train_every_s: float = 86400.0
    min_history_s: float = 2 * 86400.0  # less history than this: cold, no forecast
    forecaster: str = "auto"  # "auto": the best backtest on the site's history, never worse than naive
    partition: str | None = None  # SLURM partition whose capacity counts (default: the specs' own)
    rules: ForecastRules = field(default_factory=ForecastRules)


NOTIFY_KINDS = ("spec_held", "server_failures", "spec_lost", "run_finished", "forecast_window")


@dataclass(frozen=True)
class NotifySettings:
    """The ``[notify]`` table: where to send (apprise URLs) and which kinds of notice (notify.py)."""

    urls: tuple[str, ...] = ()  # apprise URLs: mailto://, json://, slack://, matrix://, ...
    on: tuple[str, ...] = ("spec_held", "server_failures", "spec_lost", "run_finished")
    failure_threshold: int = 3  # server failures within failure_window_s before a notice
    failure_window_s: float = 300.0
    coalesce_s: float = 30.0  # a notice waits this long for more of its kind, then goes as one message
    min_interval_s: float = 300.0  # at most one message per kind this often; the rest is counted in
    title_prefix: str = "umbridge-balancer"
    window_cpus: int = 1  # forecast_window: the predicted idle CPUs rise to at least this many
    shutdown_wait_s: float = 5.0  # shutdown waits at most this long for the last messages


@dataclass(frozen=True)
class ProfileSettings:
    """The ``[profiles]`` table: the model profile store and the headroom of ``"auto"`` resources."""

    enabled: bool = True
    path: str | None = None  # SQLite store; default ~/.local/share/umbridge-balancer/profiles.sqlite
    flush_s: float = 300.0  # a run's figures go to the store this often, and at shutdown
    memory_headroom: float = 1.3  # memory = "auto": peak RSS times this
    time_headroom: float = 1.5  # time_limit = "auto": longest server lifetime times this
    min_memory: str = "512M"
    max_time_limit: str = "1-00:00:00"
    default_memory: str | None = None  # "auto" without a profile: these (None: the scheduler's default)
    default_cpus: int = 1
    default_time_limit: str | None = None
    mismatch_samples: int = 10  # busy usage samples of a spec before given and used are compared


@dataclass(frozen=True)
class BalancerConfig:
    host: str = "127.0.0.1"
    port: int = 4242
    scheduler: str = "local"
    journal: str | None = None
    run_dir: str | None = None
    max_body_mb: float = 64.0
    lease_s: float = 30.0
    shutdown_grace_s: float = 30.0
    scale_interval_s: float = 0.25
    delay_ms: int = 0
    # The event loop: "auto" = uvloop where it is installed (a default dependency on Linux and macOS;
    # ~10-25% less CPU per call, bench/haproxy.py), else asyncio's own; "asyncio" or "uvloop" to choose.
    loop: str = "auto"
    # Address the launchers use to reach the balancer (defaults to host:port).
    advertise_url: str | None = None
    # "http": launchers register and hold their lease over HTTP; "file": through files in
    # registration_dir, for compute nodes that cannot reach the login node (filereg.py).
    registration: str = "http"
    registration_dir: str | None = None  # default RUN_DIR/registration
    # Launchers sample their server's process tree, node and GPUs this often (server.usage); 0: off.
    monitor_interval_s: float = 5.0
    # The launchers' control API (register, lease, exited) listens here, apart from the client
    # port; port 0: a free one, or the one this run directory had before a restart.
    control_host: str = "127.0.0.1"
    control_port: int = 0
    # Owner-only client port (access.py): other users' UIDs let in; clients on other hosts let in.
    allow_uids: tuple[int, ...] = ()
    allow_users: tuple[str, ...] = ()
    allow_remote: bool = False
    # Client port's Host check (ops/origin.py): names it answers to besides loopback, addresses and
    # this machine's host name (no DNS rebinding); fixed for the run.
    allow_hosts: tuple[str, ...] = ()
    servers: tuple[ServerSpec, ...] = ()
    # The [backend] table as the scheduler's ``Options`` dataclass (see backends/options.py).
    backend_options: Any = None
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    profiles: ProfileSettings = field(default_factory=ProfileSettings)

    @property
    def rules(self) -> ForecastRules:
        return self.forecast.rules

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
