"""Fault injection in the style of a user's stress test: a load from several client threads while
model servers are killed at random; every call must get the right answer."""

from __future__ import annotations

import os
import random
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import umbridge

from tests.helpers import pid_alive, test_model_spec, wait_until


@pytest.mark.timeout(120)
def test_every_call_is_answered_right_while_servers_are_killed(start_balancer):
    spec = test_model_spec(
        models=["forward"], min_servers=3, max_servers=4, max_attempts=6, env={"TEST_DELAY": "20"}
    )
    b = start_balancer([spec])
    wait_until(lambda: len(b.events("server.ready")) >= 3, 60, what="3 servers ready")
    model = umbridge.HTTPModel(b.url, "forward")
    done = threading.Event()
    killed: list[int] = []
    rng = random.Random(7)

    def killer() -> None:
        while not done.wait(0.4) and len(killed) < 5:
            pids = [e["pid"] for e in b.events("server.registered") if e.get("pid") and pid_alive(e["pid"])]
            if pids:
                victim = rng.choice(pids)
                os.kill(victim, signal.SIGKILL)  # the model server itself, mid-call or idle
                killed.append(victim)

    k = threading.Thread(target=killer)
    k.start()
    try:
        with ThreadPoolExecutor(6) as ex:
            answers = list(ex.map(lambda i: model([[float(i)]]), range(300)))
    finally:
        done.set()
        k.join(10)
    assert answers == [[[2.0 * i]] for i in range(300)]
    assert len(killed) >= 3  # the faults did happen during the load
    assert not b.events("call.failed") and not b.events("spec.held")
