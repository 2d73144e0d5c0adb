"""Command line: ``balancer serve|analyze|plot`` and the reference-compatible ``load-balancer``.

Every user error ends with one line on stderr and exit code 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from balancer.backends import backend_class
from balancer.config.load import SCHEDULERS, BalancerConfig, ConfigError, parse_config, read_config
from balancer.observe.events import Ev, EventBus
from balancer.observe.journal import Journal


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (a login node's 1024 is a few hundred
    clients); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _run_dir(cfg: BalancerConfig) -> Path:
    """The run directory, private to its owner (0700): it holds the token, the journal, the logs.
    The umask makes all the balancer, its launchers and (through sbatch) their jobs write 0600."""
    os.umask(0o077)
    if cfg.run_dir:
        d = Path(cfg.run_dir)
    else:
        d = Path(".balancer-runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    return d.resolve()


async def serve(
    cfg: BalancerConfig,
    config_path: str | None = None,
    digest: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM, then shut down gracefully; SIGHUP reloads the configuration file
    (``overrides``, the command line's options, still win over it). Returns the exit code."""
    from balancer.app import Balancer
    from balancer.backends import make_backend
    from balancer.http.server import FrontServer, HttpLimits

    run_dir = _run_dir(cfg)
    journal = Journal(cfg.journal or run_dir / "journal.jsonl")
    bus = EventBus()
    bus.subscribe(journal)
    token_file = run_dir / "token"
    # A restart with the same run directory keeps the token: its launchers can register again.
    old = token_file.read_text().strip() if token_file.is_file() else ""
    token = os.environ.get("UMBRIDGE_BALANCER_TOKEN") or old or secrets.token_urlsafe(32)
    token_file.touch(mode=0o600)
    token_file.chmod(0o600)
    token_file.write_text(token)
    from balancer.profiling.recorder import size_specs

    parsed = cfg  # what a reload compares the file with: "auto" resources as written
    cfg = await size_specs(cfg, bus)  # "auto" resources from the profile store, before any backend
    try:
        backend = make_backend(cfg, run_dir)
    except ConfigError as exc:
        print(f"balancer: {exc}", file=sys.stderr)
        journal.close()
        return 2
    balancer = Balancer(cfg, bus, run_dir, token, backend)
    balancer.reloader.source(parsed, config_path, digest, overrides or {})
    soft = raise_fd_limit()
    # Leave descriptors for upstream connections, logs and subprocesses: never let clients exhaust them.
    limits = HttpLimits(max_body=cfg.max_body_bytes, max_connections=max(64, min(16384, soft // 2)))
    front = FrontServer(balancer.client_router(), limits, admit=balancer.gate)  # owner-only
    control = FrontServer(balancer.control_router(), limits)  # the launchers', token only
    balancer.fronts = [front, control]
    where = f"{cfg.host}:{cfg.port}"
    try:
        port = await front.listen(cfg.host, cfg.port)
        where = f"{cfg.control_host}:{cfg.control_port or 'any'} (control)"
        control_port = await _listen_control(control, cfg, run_dir)
    except OSError as exc:
        print(f"balancer: error: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        await front.close()
        journal.close()
        return 2
    url = f"http://{cfg.host}:{port}"
    control_url = _http_url(cfg.control_host, control_port)
    (run_dir / "url").write_text(url + "\n")  # for the operator CLI (balancer forecast ...)
    (run_dir / "control_url").write_text(control_url + "\n")  # a restart listens there again
    # Signals from here on: a SIGINT while the backend starts (or the first forecast is awaited)
    # lets start() finish and then shuts down gracefully, instead of a traceback.
    stop = asyncio.Event()
    reason = ["signal"]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: (reason.__setitem__(0, s.name), stop.set()))
    hup: list[bool] = []  # a SIGHUP before the start is done reloads right after it
    loop.add_signal_handler(signal.SIGHUP, lambda: hup.append(True))
    try:
        await balancer.start(url, control_url)
    except ConfigError as exc:
        print(f"balancer: {exc}", file=sys.stderr)
        await front.close()
        await control.close()
        journal.close()
        return 2
    bus.emit(
        Ev.BALANCER_STARTED,
        url=url,
        host=cfg.host,
        port=port,
        control_url=control_url,
        scheduler=cfg.scheduler,
        pid=os.getpid(),
        config=config_path,
        run_dir=str(run_dir),
        specs=[s.name for s in cfg.servers],
    )
    print(
        f"balancer: serving UM-Bridge on {url} (owner only), launchers' control API on {control_url} "
        f"(scheduler {cfg.scheduler}, run dir {run_dir})",
        flush=True,
    )
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = asyncio.ensure_future(_reload_on_signal(balancer))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if hup:
        on_hup()
    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    print(f"balancer: {reason[0]}: stopping (grace {cfg.shutdown_grace_s:g} s)", flush=True)
    # Stop accepting connections, let in-flight calls finish, then stop the servers.
    await front.stop_listening()
    await balancer.shutdown(reason[0])  # launchers hear "stop" and report exits on the control port
    await front.close()
    await control.close()
    journal.close()
    print("balancer: stopped", flush=True)
    return 0


async def _reload_on_signal(balancer: Any) -> None:
    """SIGHUP: the same reload as ``balancer reload``; its outcome is one line here and journaled."""
    from balancer.ops.reload import describe_reload

    ok, out = await balancer.reloader.reload(trigger="signal")
    print(f"balancer: SIGHUP: {describe_reload(out) if ok else f'reload rejected: {out}'}", flush=True)


async def _listen_control(control: Any, cfg: BalancerConfig, run_dir: Path) -> int:
    """The control listener on ``control_host``. Port 0 takes the port this run directory had
    (``control_url``): after a restart the launchers, who know that URL, find it again; if it is
    taken now, a free one (those launchers are then lost to it)."""
    port = cfg.control_port
    if port == 0:
        with contextlib.suppress(OSError, ValueError):
            port = urlsplit((run_dir / "control_url").read_text().strip()).port or 0
        with contextlib.suppress(OSError):
            return int(await control.listen(cfg.control_host, port))
        port = 0
    return int(await control.listen(cfg.control_host, port))


def _http_url(host: str, port: int) -> str:
    """A URL for ``host``; a wildcard address (every interface) becomes this machine's name, which
    launchers on other nodes can reach."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _serve_main(args: argparse.Namespace) -> int:
    overrides = {
        "scheduler": args.scheduler,
        "host": args.host,
        "port": args.port,
        "journal": args.journal,
        "run_dir": args.run_dir,
        "delay_ms": getattr(args, "delay_ms", None),
        "control_host": args.control_host,
        "control_port": args.control_port,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        cfg, digest = read_config(args.config, **overrides)
    except ConfigError as exc:
        print(f"balancer: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(cfg, os.path.abspath(args.config), digest, overrides))


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", choices=SCHEDULERS, help="backend that starts servers (default: local)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 4242; 0 picks a free one)")
    _add_control_args(p)
    p.add_argument("--journal", help="timing journal path (default RUN_DIR/journal.jsonl)")
    p.add_argument("--run-dir", help="directory for journal, logs and token (default .balancer-runs/...)")


def _add_control_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control-host", help="address of the launchers' control API (default 127.0.0.1)")
    p.add_argument("--control-port", type=int, help="its port (default 0: free, or the run dir's last one)")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="balancer", description="UM-Bridge load balancer with a warm pool of model servers")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("serve", help="run the balancer")
    p.add_argument("--config", required=True, help="TOML configuration file")
    _add_serve_args(p)
    p.set_defaults(func=_serve_main)
    try:
        from balancer.analysis.cli import add_subcommands
    except ImportError:
        add_subcommands = None
    if add_subcommands is not None:
        add_subcommands(sub)
    _add_cluster_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def _add_cluster_commands(sub: Any) -> None:
    """The operator's commands, ``balancer forecast ...``, ``capacity ...`` and ``simulate``."""
    from balancer.cli.forecast import add_forecast_parser
    from balancer.cli.operator import add_operator_parsers

    add_operator_parsers(sub)
    add_forecast_parser(sub)
    from balancer.cli.profile import add_profile_parser

    add_profile_parser(sub)
    with contextlib.suppress(ImportError):
        from balancer.cli.cluster import add_capacity_parser

        add_capacity_parser(sub)
    with contextlib.suppress(ImportError):
        from balancer.cli.simulate import add_simulate_parser

        add_simulate_parser(sub)


def load_balancer_main(argv: list[str] | None = None) -> int:
    """Drop-in for UM-Bridge's C++ ``load-balancer``: same flags, same job-script conventions.

    Without ``--config`` the servers come from the reference's job scripts in the working
    directory (``hq_scripts/job.sh`` or ``slurm_scripts/job.sh``; the model listens on ``$PORT``).
    """
    parser = _Parser(prog="load-balancer", description=load_balancer_main.__doc__.split("\n")[0])
    parser.add_argument("--scheduler", choices=SCHEDULERS, default=None)
    parser.add_argument("--port", type=int, default=4242)
    parser.add_argument("--delay-ms", type=int, default=None, help="pause between job submissions")
    parser.add_argument("--config", help="TOML configuration (optional)")
    parser.add_argument("--host", default=None)
    parser.add_argument("--journal", default=None)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--max-servers", type=int, default=None, help="pool size without --config")
    _add_control_args(parser)
    args = parser.parse_args(argv)
    if args.delay_ms is not None and args.delay_ms < 0:
        print("load-balancer: error: --delay-ms must be >= 0", file=sys.stderr)
        return 2
    if args.config:
        return _serve_main(args)
    scheduler = args.scheduler or "hyperqueue"
    script_dir = backend_class(scheduler).REFERENCE_SCRIPTS
    script = Path(script_dir) / "job.sh"
    if not script.is_file():
        print(f"load-balancer: error: no --config and no {script} in {Path.cwd()}", file=sys.stderr)
        return 2
    specs = [{"name": "default", "job_script": str(script.resolve())}]
    for extra in sorted(Path(script_dir).glob("job_*.sh")):
        model = extra.stem[len("job_") :]
        specs.append({"name": f"job_{model}", "job_script": str(extra.resolve()), "models": [model]})
    for s in specs:
        if args.max_servers:
            s["max_servers"] = args.max_servers
    try:
        cfg = parse_config(
            {"servers": specs},
            scheduler=scheduler,
            port=args.port,
            host=args.host,
            journal=args.journal,
            run_dir=args.run_dir,
            delay_ms=args.delay_ms,
            control_host=args.control_host,
            control_port=args.control_port,
        )
    except ConfigError as exc:
        print(f"load-balancer: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(cfg))

