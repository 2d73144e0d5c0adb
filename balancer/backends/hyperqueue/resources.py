"""What a HyperQueue task asks for: ``#HQ`` directives, the spec's resources, ``hq_resources``.

Resource requests come from ``#HQ`` directives of the spec's job script (``--cpus``, ``--resource``,
``--time-request``, as ``hq submit`` reads them), then ``resources.cpus``/``resources.gpus``, then the
spec option ``hq_resources`` (a table, e.g. ``{"gpus/nvidia" = 1, mem = 2048}``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from balancer.backends.batch import jobscript
from balancer.config.schema import ConfigError, ServerSpec
from balancer.units import parse_duration


@dataclass(frozen=True)
class HqRequest:
    """What one server's task asks HQ for."""

    cpus: int | str = 1
    resources: tuple[tuple[str, int | str], ...] = ()
    min_time_s: float | None = None
    ignored: tuple[str, ...] = ()  # directives the Python API cannot express (e.g. --time-limit)


def read_directives(script: str | Path) -> list[str]:
    """The arguments of the ``#HQ`` lines heading a job script, as ``hq submit script.sh`` reads them."""
    return [arg for line in jobscript.read_directives(script, "#HQ") for arg in shlex.split(line[3:])]


def _amount(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def hq_request(spec: ServerSpec, gpu_resource: str = "gpus/nvidia") -> HqRequest:
    """The resource request of ``spec`` (directives < resources.cpus/gpus < hq_resources)."""
    key = f"servers.{spec.name}"
    cpus: int | str = 1
    res: dict[str, int | str] = {}
    min_time: float | None = None
    ignored: list[str] = []
    if spec.job_script:
        args = read_directives(spec.job_script)
        i = 0
        while i < len(args):
            arg = args[i]
            name, eq, value = arg.partition("=")
            if not eq and name in ("--cpus", "--resource", "--time-request") and i + 1 < len(args):
                value, i = args[i + 1], i + 1
            try:
                if name == "--cpus":
                    cpus = _amount(value.strip())
                elif name == "--resource":
                    rname, _, ramount = value.partition("=")
                    res[rname.strip()] = _amount(ramount.strip())
                elif name == "--time-request":
                    min_time = parse_duration(value)
                elif name.startswith("-"):
                    ignored.append(arg)
            except ValueError as exc:
                raise ConfigError(f"{key}.job_script", f"#HQ {arg}: {exc}") from None
            i += 1
    if spec.resources.cpus != 1:
        cpus = spec.resources.cpus
    if spec.resources.gpus:
        res[gpu_resource] = spec.resources.gpus
    res.update(spec.options.hq_resources)  # typed and checked when the config was loaded
    cpus = res.pop("cpus", cpus)
    return HqRequest(cpus, tuple(sorted(res.items())), min_time, tuple(ignored))


def reference_job_script(scripts_dir: str | Path, model: str) -> Path | None:
    """The reference balancer's choice: ``hq_scripts/job_<model>.sh``, else ``hq_scripts/job.sh``."""
    for name in (f"job_{model}.sh", "job.sh"):
        p = Path(scripts_dir) / name
        if p.is_file():
            return p
    return None
