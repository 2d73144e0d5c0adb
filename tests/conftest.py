import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BalancerProc, pid_alive

# One marker per tier, named as its folder (registered in pyproject.toml, --strict-markers). A test
# whose file sits in a lower tier's folder but needs more carries its tier's marker itself.
TIERS = ("unit", "inproc", "system", "cluster", "browser", "multinode")

# The capacity history outlives a run (by default in ~/.local/share): every balancer the tests start,
# in-process or as a subprocess, keeps it in this session's own directory instead.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="ub-test-data-")
# The registry of running balancers (control/registry.py) likewise: the tests' balancers never meet
# the developer's own, and each session starts with none (mkdtemp makes it owner-only, as required).
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="ub-test-run-")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each test its folder's tier marker, unless it names its own tier: ``-m "unit or inproc"``
    then selects what runs in-process, quickly, with no balancer subprocess, cluster or browser. A
    test file outside the tier folders is refused, as no tier's selection would ever run it."""
    root = Path(__file__).resolve().parent
    outside: set[str] = set()
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(root).parts
        if len(rel) < 2 or rel[0] not in TIERS:
            outside.add("/".join(rel))  # it would run in no tier's selection: refuse it
        elif not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(getattr(pytest.mark, rel[0]))
    if outside:
        raise pytest.UsageError(f"tests outside tests/{{{','.join(TIERS)}}}/: {', '.join(sorted(outside))}")


@pytest.fixture
def start_balancer(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``start_balancer(servers, **balancer_keys)``; everything is stopped after the test."""
    procs: list[BalancerProc] = []

    def make(
        servers: list[dict[str, Any]],
        env: dict[str, str] | None = None,
        backend: dict[str, Any] | None = None,
        tables: dict[str, Any] | None = None,
        **kw: Any,
    ) -> BalancerProc:
        d = tmp_path / f"b{len(procs)}"
        d.mkdir()
        b = BalancerProc(d, servers, env=env, backend=backend, tables=tables, **kw)
        procs.append(b)
        return b

    yield make
    for b in procs:
        pids = b.server_pids()
        if b.proc.poll() is None:
            b.stop()
        for pid in pids:  # never leave a model server behind, even when a test failed
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


from tests.slurm.fixture import slurm, slurm_cluster  # noqa: E402, F401 - shared SLURM fixtures
