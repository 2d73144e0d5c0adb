"""Live reload on the real one-node SLURM cluster: a changed ``resources.memory`` replaces the server's
job by one submitted with the new ``--mem`` (start the new one, then drain the old), and every call
of a steady load is answered."""

from __future__ import annotations

import pytest

from tests.helpers import test_model_spec, wait_until
from tests.slurm.fixture import FINISHED
from tests.system.test_reload import (
    Load,
    fewest_ready_after,
    index_of,
    read_cfg,
    ready_of,
    reload_cli,
    write_cfg,
)

pytestmark = pytest.mark.timeout(180)


def test_changed_memory_replaces_the_job_with_the_new_mem(start_balancer, slurm):
    spec = test_model_spec(models=["forward"], max_servers=1, min_servers=1, env={"TEST_DELAY": "20"})
    spec["resources"] = {"memory": "300M"}
    b = start_balancer([spec], env=slurm.env, scheduler="slurm", host="127.0.0.1")
    first = b.wait_event("server.ready", timeout=60)["server"]
    # a launcher may register before squeue's next poll reports its job started: wait for that report
    old_job = b.wait_event("server.started", server=first)["job"]
    mem = lambda job: slurm.run(["squeue", "-h", "-j", job, "-o", "%m"]).stdout.strip()  # noqa: E731
    assert mem(old_job) == "300M"
    load = Load(b.url, threads=2)
    try:
        load.more(10, timeout=60)
        load.set_phase("memory")
        cfg = read_cfg(b.config)
        cfg["servers"][0]["resources"] = {"memory": "400M"}
        write_cfg(b.config, cfg)
        r = reload_cli(b)
        assert r["changed"] == {"testmodel": ["resources"]} and r["replacing"] == {"testmodel": 1}, r
        b.wait_event("server.stopped", server=first, timeout=90)
        new = wait_until(lambda: ready_of(b, "testmodel"), 60, what="the new server ready")
        (sid,) = new
        job = b.wait_event("server.started", server=sid)["job"]
        assert job != old_job and mem(job) == "400M"
        wait_until(lambda: slurm.state(old_job) in FINISHED | {""}, 30, what="the old job gone")
        evs = b.events()
        assert b.find("server.requested", server=sid)["reason"] == "rollout"
        assert b.find("server.draining", server=first)["reason"] == "replaced by config reload"
        assert fewest_ready_after(evs, "testmodel", index_of(evs, r), len(evs)) == (1, 1)
        load.more(10, timeout=60)
    finally:
        load.close()
    lost = {phase: len(why) for phase, why in load.lost.items()}
    print(f"\nreload on SLURM: calls per change {load.calls}, calls lost per change {lost}")
    assert not any(lost.values()), load.lost
    assert not b.events("call.failed")
    assert b.stop() == 0
