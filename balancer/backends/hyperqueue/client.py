"""The blocking ``hyperqueue`` client, used from one dedicated thread of the HyperQueue backend.

The Python API (``hyperqueue`` 0.27) has no cancel and no task-state query, and its
``wait_for_jobs`` sleeps 1 s per round holding the GIL. What it does have: ``wait_for_jobs`` makes
one job-info RPC, hands the counters of every listed job to a callback, and returns at once if that
callback raises. One such call for all our jobs is the status poll (~0.2 ms); ``get_failed_tasks``
gives a failed task's error text. The package is imported here only, on that thread.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

from balancer.backends.hyperqueue.resources import HqRequest


class _StatusSnapshot(Exception):
    """Raised from the wait_for_jobs callback to make it return after one job-info round."""


class HqClient:
    """All ``hyperqueue`` calls, made from the single executor thread (so they are serialised)."""

    def __init__(self, server_dir: str) -> None:
        import hyperqueue
        from hyperqueue.ffi import ffi  # the compiled module: wait_for_jobs without the tqdm wrapper
        from hyperqueue.ffi.protocol import ResourceRequest

        self._ffi = ffi
        self._rr = ResourceRequest
        self._hq = hyperqueue
        self.client = hyperqueue.Client(server_dir)
        self.ctx = self.client.connection.ctx

    def submit(self, args: list[str], env: dict[str, str], cwd: str, req: HqRequest, name: str) -> int:
        job = self._hq.Job(name=name, max_fails=1)
        min_time = datetime.timedelta(seconds=req.min_time_s) if req.min_time_s else None
        request = self._rr(cpus=req.cpus, resources=dict(req.resources), min_time=min_time)
        # stdout/stderr None: the wrapper appends both to the server's log itself.
        job.program(args, env=env, cwd=cwd, stdout=None, stderr=None, resources=request, crash_limit=1)
        return int(self.client.submit(job).id)

    def status(self, job_ids: list[int]) -> dict[int, dict[str, Any]]:
        """{job id: {finished, failed, total, completed}}; jobs HQ does not know are absent."""
        out: dict[int, dict[str, Any]] = {}

        def snapshot(status: dict[int, dict[str, Any]]) -> None:
            out.update(status)
            raise _StatusSnapshot

        with contextlib.suppress(_StatusSnapshot):
            self._ffi.wait_for_jobs(self.ctx, job_ids, snapshot)
        return out

    def errors(self, job_ids: list[int]) -> dict[int, str]:
        failed = self.client.connection.get_failed_tasks(job_ids)
        return {jid: "; ".join(t.error.strip() for t in tasks.values()) for jid, tasks in failed.items()}

    def forget(self, job_ids: list[int]) -> None:
        for jid in job_ids:
            with contextlib.suppress(Exception):
                self.client.forget(jid)
