"""Every subcommand's ``--help``: a description (its one-line help unless it has its own) and an
example, kept in one table so a new command cannot ship without one (tests/unit/test_cli_help.py)."""

from __future__ import annotations

import argparse
import textwrap

EXAMPLES: dict[str, str] = {
    "serve": "balancer serve --config examples/demo.toml\n"
    "balancer serve --config pool.toml --scheduler slurm --detach   # survives the terminal",
    "ls": "balancer ls",
    "analyze": "balancer analyze .balancer-runs/*/journal.jsonl",
    "plot": "balancer plot .balancer-runs/*/journal.jsonl -o plots/ --format svg",
    "status": "balancer status\nbalancer status --pid 12345 --json",
    "servers": "balancer servers",
    "drain": "balancer drain s3",
    "stop": "balancer stop            # the balancer: calls in flight finish, then it exits\n"
    "balancer stop s3         # one server",
    "scale": "balancer scale testmodel --min 1 --max 8",
    "pause": "balancer pause testmodel",
    "resume": "balancer resume testmodel",
    "reload": "balancer reload\nbalancer reload --config pool-v2.toml",
    "forecast": "balancer forecast status",
    "forecast status": "balancer forecast status",
    "forecast enable": "balancer forecast enable",
    "forecast disable": "balancer forecast disable",
    "forecast clear": "balancer forecast clear",
    "forecast override": "balancer forecast override --idle-cpus 64 --for 2h --reason 'maintenance'",
    "forecast backtest": "balancer forecast backtest ~/.local/state/umbridge-balancer/capacity.sqlite",
    "profile": "balancer profile show",
    "profile show": "balancer profile show",
    "profile export": "balancer profile export > profiles.csv",
    "capacity": "balancer capacity show",
    "capacity collect": "balancer capacity collect --scheduler slurm --interval 60",
    "capacity import": "balancer capacity import sacct.json",
    "capacity show": "balancer capacity show",
    "simulate": "balancer simulate --trace cluster.swf.gz --calls 1000",
}


def subparsers(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, nested ones as "forecast status"."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((prefix + name, helps.get(name, ""), sub))
                out += subparsers(sub, prefix + name + " ")
    return out


def polish(parser: argparse.ArgumentParser) -> None:
    """Give each subcommand a description and an example epilog (kept where it has its own)."""
    for name, help_, sub in subparsers(parser):
        if not sub.description and help_:
            sub.description = textwrap.fill(help_[0].upper() + help_[1:] + ".", 88)
        if not sub.epilog and name in EXAMPLES:
            lines = "\n".join(f"  {ln}" for ln in EXAMPLES[name].splitlines())
            sub.epilog = f"example:\n{lines}"
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
