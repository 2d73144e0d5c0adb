"""Names and writing of the registration files both sides share (``filereg`` on the balancer,
``launch`` on the compute node), kept apart so the launcher imports nothing of the balancer."""

from __future__ import annotations

import os
from pathlib import Path

ALIVE = "balancer.alive"  # touched by the balancer every third of the lease


def write_atomic(path: Path, data: str) -> None:
    """Readers never see half a file: write a temporary one (0600), then rename it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
