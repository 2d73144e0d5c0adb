"""Command line: ``balancer serve|analyze|plot`` and the reference-compatible ``load-balancer``.

Every user error ends with one line on stderr and exit code 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from balancer import __version__
from balancer.backends.registry import SCHEDULERS, backend_class
from balancer.config.parse import parse_config, read_config
from balancer.config.schema import BalancerConfig, ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


async def serve(
    cfg: BalancerConfig,
    config_path: str | None = None,
    digest: str | None = None,
    overrides: dict[str, Any] | None = None,
    console: int | None = None,
) -> int:
    """Run until SIGINT/SIGTERM, then shut down gracefully; SIGHUP reloads the configuration file
    (``overrides``, the command line's options, still win over it). Returns the exit code."""
    from balancer.ops.reload import ConfigSource
    from balancer.runner import Runner

    source = ConfigSource(cfg, config_path, digest, overrides or {})  # as parsed: "auto" unsized
    return await Runner(cfg, source=source, console=console).serve()


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
    if getattr(args, "detach", False):  # checked here first: a config error is one line, at once
        from balancer.cli.daemon import detach

        return detach(args.argv, cfg.run_dir)
    level = 1 + getattr(args, "verbose", 0) - getattr(args, "quiet", 0)  # observe/console.py's levels
    return _run(serve(cfg, os.path.abspath(args.config), digest, overrides, level), cfg.loop, "balancer")


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser(
        "serve", help="run the balancer: the UM-Bridge URL in front of a pool of model servers"
    )
    p.add_argument("--config", required=True, help="TOML configuration file")
    _add_serve_args(p)
    p.add_argument(
        "--detach", action="store_true",
        help="run in the background (survives the terminal; log in RUN_DIR/balancer.log); "
        "returns once it serves; `balancer stop` ends it",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="count", default=0, help="stderr: warnings and errors only")
    p.add_argument("-v", "--verbose", action="count", default=0, help="stderr: scaling and failed calls too")
    p.set_defaults(func=_serve_main)
    argv = sys.argv[1:] if argv is None else argv
    # ``serve`` is the command whose start the user waits for (its jobs are submitted after it):
    # it parses without the other commands' parsers, which import numpy, the simulator and the
    # forecasters (~0.2 s). Completion and every other command get the whole tree.
    if argv[:1] != ["serve"] or "_ARGCOMPLETE" in os.environ:
        _add_other_commands(sub)
    from balancer.cli.helptext import polish

    polish(parser)
    with contextlib.suppress(ImportError):  # shell completion: the optional "completion" extra
        if "_ARGCOMPLETE" in os.environ:
            import argcomplete

            argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    args.argv = argv  # ``serve --detach`` starts the same command line in the background
    return int(args.func(args))


def _add_other_commands(sub: Any) -> None:
    """Every subcommand but ``serve``."""
    from balancer.analysis.cli import add_subcommands  # part of the package; pandas loads only when used

    add_subcommands(sub)
    _add_cluster_commands(sub)
    from balancer.cli.daemon import add_ls_parser

    add_ls_parser(sub)


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
    parser = _Parser(prog="load-balancer", description=(load_balancer_main.__doc__ or "").split("\n")[0])
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
    specs: list[dict[str, Any]] = [{"name": "default", "job_script": str(script.resolve())}]
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
    return _run(serve(cfg), cfg.loop, "load-balancer")


def _run(coro: Any, loop: str, prog: str) -> int:
    """Run ``serve`` on the configured event loop; an unusable choice is one readable line."""
    from balancer.cli.eventloop import LoopUnavailable, run

    try:
        return int(run(coro, loop))
    except LoopUnavailable as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
