"""Model profiles (issue 12) on the SLURM test cluster: ``memory = "auto"`` submits the sized memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from balancer.config.parse import parse_config
from balancer.profiling.store import SPEC_ROW, ProfileStore, spec_hash
from balancer.units import MIB
from tests.helpers import test_model_spec

pytestmark = pytest.mark.timeout(90)


def seed(path: Path, spec: Any, **figures: Any) -> None:
    """A stored profile for ``spec`` as an earlier run would have left it."""
    with ProfileStore(path) as store:
        key = (spec.name, spec_hash(spec), SPEC_ROW)
        store.add({key: {"calls": 10, "samples": 20, **figures}}, {key})


# -- end to end --------------------------------------------------------------------------------------
def profiles_table(path: Path, **kw: Any) -> dict[str, Any]:
    return {"profiles": {"path": str(path), **kw}}


def test_memory_auto_on_slurm_submits_the_sized_mem(start_balancer, slurm, tmp_path: Path) -> None:
    path = tmp_path / "profiles.sqlite"
    spec = test_model_spec(models=["forward"], min_servers=1, max_servers=1, resources={"memory": "auto"})
    seed(path, parse_config({"servers": [spec]}).servers[0], rss_peak_bytes=300 * MIB)
    b = start_balancer([spec], env=slurm.env, scheduler="slurm", host="127.0.0.1", backend={},
                       tables=profiles_table(path, min_memory="256M"))  # fmt: skip
    sized = b.wait_event("profile.sized", spec="testmodel")
    assert sized["field"] == "memory" and sized["value"] == "448M" and "peak RSS 300M" in sized["source"]
    job = b.wait_event("server.started", server="s1", timeout=45)["job"]
    assert slurm.run(["squeue", "-h", "-j", job, "-o", "%m"]).stdout.strip() == "448M"
    assert b.stop() == 0
