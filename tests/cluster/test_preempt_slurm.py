"""Harvest on the real SLURM test cluster: the pool's jobs go to the preemptible ``scavenger``
partition; another user's job in the normal ``debug`` partition (higher PriorityTier) preempts them.

The cluster (tests/slurm/cluster.sh) runs ``PreemptType=preempt/partition_prio`` with
``PreemptMode=CANCEL`` and a short ``GraceTime`` on scavenger. At the grace's start SLURM 22.05
signals only job steps (none here: the launcher is the batch step) but sets the job's end to now +
GraceTime: the backend's next poll sees that end brought forward and the pool takes the server out
of service (``preempted``) and stops it at once, its calls in flight re-queued for other servers
(uncharged), so the job gives its CPUs back before the grace is over. Had a poll missed it, the
launcher would report the SIGTERM SLURM sends at the grace's end (unit/test_launcher_client).
"""

from __future__ import annotations

import contextlib
import pwd
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import umbridge

from tests.helpers import test_model_spec, wait_until
from tests.slurm.fixture import FINISHED, SlurmCluster

pytestmark = pytest.mark.timeout(240)

OTHER_USER = "ub-other"  # the second Unix user of system/test_security.py
OTHER_JOB_S = 2  # how long the other user's job runs


def other_user() -> str:
    """A second Unix user whose job preempts ours (created once; the tests run as root)."""
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("a second Unix user needs useradd")
        import subprocess

        subprocess.run(
            ["useradd", "--system", "--no-create-home", OTHER_USER], check=True, capture_output=True
        )
    return OTHER_USER


def _seconds(text: str, key: str) -> float:
    m = re.search(rf"\b{key}\s*=\s*(\d+)", text)
    assert m, f"no {key} in {text!r}"
    return float(m.group(1))


# The scheduler's state tells the pool (squeue, polled twice a second, sees the job's end brought
# forward at the grace's start). The fallback, the launcher's report of the SIGTERM SLURM sends at
# the grace's end, is tested in unit/test_launcher_client and inproc/test_pool_preempted: on this
# cluster SLURM sends it from its 30 s background loop, 14-26 s after the preemption (measured), too
# slow a wait for every run of the suite.
POLL_S, SAID = 0.5, "brought forward"


def test_harvest_yields_to_another_users_job_and_loses_no_call(start_balancer, slurm: SlurmCluster):
    t_start = time.monotonic()
    user = other_user()
    grace = _seconds(slurm.run(["scontrol", "show", "partition", "scavenger"]).stdout, "GraceTime")
    kill_wait = _seconds(slurm.run(["scontrol", "show", "config"]).stdout, "KillWait")
    cpus = int(slurm.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%c"]).stdout.split()[0])
    spec = test_model_spec("harvest", models=["forward"], max_servers=cpus, env={"TEST_DELAY": "200"})
    b = start_balancer(
        [spec],
        env=slurm.env,
        scheduler="slurm",
        host="127.0.0.1",
        backend={
            "preempt_partition": "scavenger",
            "poll_interval_s": POLL_S,
            "fast_poll_s": POLL_S,
            "pending_timeout_s": 600,
        },
        # No capacity history in a fresh test cluster: harvest starts preemptible jobs by demand.
        tables={"forecast": {"policy": "harvest", "collect": False}},
    )
    token = {"Authorization": f"Bearer {b.token()}"}

    # Load from the official client: 2 x cpus callers, each checking every answer.
    stop = threading.Event()
    answers: list[tuple[float, Any]] = []
    errors: list[str] = []

    def caller(k: int) -> None:
        model = umbridge.HTTPModel(b.url, "forward")
        i = 0
        while not stop.is_set():
            x = float(k * 100_000 + i)
            i += 1
            try:
                answers.append((x, model([[x]])))
            except Exception as exc:  # a lost call: the test fails on it below
                errors.append(f"{x}: {type(exc).__name__}: {exc}")

    pool = ThreadPoolExecutor(2 * cpus)
    load = [pool.submit(caller, k) for k in range(2 * cpus)]
    other_job = ""
    try:
        # The pool harvests the node: cpus servers, every job in the scavenger partition.
        live = lambda: requests.get(f"{b.url}/api/servers", headers=token, timeout=10).json()["servers"]  # noqa: E731
        wait_until(
            lambda: sum(x["state"] == "ready" for x in live()) >= cpus or b._died(), 60, what="full pool"
        )
        first = {x["id"] for x in live() if x["state"] == "ready"}
        assert len(first) == cpus and all(x["preemptible"] for x in live())
        ours = slurm.run(["squeue", "-h", "-u", "root", "-o", "%P"]).stdout.split()
        assert ours and set(ours) == {"scavenger"}, ours
        n_before = len(answers)
        wait_until(lambda: len(answers) >= n_before + 4 * cpus, 30, what="calls served before")

        # Another user wants the whole node in the normal partition, for a few seconds.
        t_submit = time.monotonic()
        sub = ["sbatch", "--parsable", f"--uid={user}", "-p", "debug", "-c", str(cpus), "-t", "1"]
        sub += ["--chdir=/tmp", "-o", "/dev/null", "--wrap", f"sleep {OTHER_JOB_S}"]
        other_job = slurm.run(sub).stdout.strip().split(";")[0]
        # It starts once our jobs are gone: at the latest the grace, KillWait for processes that
        # linger, and a scheduling pass or two (bf_interval=2) of slack.
        slurm.wait_state(other_job, {"RUNNING"}, timeout=grace + kill_wait + 30)
        waited = time.monotonic() - t_submit
        for sid in first:
            e = b.wait_event("server.preempted", server=sid, timeout=30)
            assert e["spec"] == "harvest" and e["job"] and e["host"] and SAID in e["reason"], e
        assert len(b.events("server.preempted")) == len(first)  # journaled once per server

        # It ends; the pool grows back onto the node, again in the scavenger partition.
        assert slurm.wait_state(other_job, FINISHED, timeout=OTHER_JOB_S + 30) in ("COMPLETED", "")
        wait_until(
            lambda: len({e["server"] for e in b.events("server.ready")} - first) >= cpus or b._died(),
            60,
            what="the pool grown back",
        )
        n_after = len(answers)
        wait_until(lambda: len(answers) >= n_after + 4 * cpus, 30, what="calls served after")
    finally:
        stop.set()
        for f in load:
            f.result(timeout=60)
        pool.shutdown()
        if other_job:
            with contextlib.suppress(Exception):
                slurm.run(["scancel", other_job], check=False)

    # Every call answered, and answered right; nothing held, no preemption counted as a failure.
    assert not errors, errors[:5]
    assert answers and all(out == [[2 * x]] for x, out in answers)
    assert not b.events("call.failed") and not b.events("spec.held")
    assert not [e for e in b.events("server.failed") if e["server"] in first]
    status = requests.get(f"{b.url}/api/status", headers=token, timeout=10).json()
    assert status["preempted"] == len(first) and not status["held"]
    metrics = requests.get(f"{b.url}/metrics", headers=token, timeout=10).text
    assert f'umbridge_balancer_server_preemptions_total{{spec="harvest"}} {float(len(first))}' in metrics
    assert b.stop() == 0
    retried, took = len(b.events("call.requeued")), time.monotonic() - t_start
    print(f"\nthe other job started {waited:.1f} s after its submit (grace {grace:g} s,")
    print(f"KillWait {kill_wait:g} s); {len(answers)} calls answered, {retried} retried; test {took:.1f} s")
