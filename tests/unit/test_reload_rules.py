"""The pure parts of a live reload: what changed (``diff_config``), the limits it leaves, and the
policy's rolling replacement and lowered ``max_servers`` on plain records."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from balancer.config.parse import parse_config
from balancer.ops.reload import diff_config, merge_limits
from balancer.policy.types import Drain, Limits, Phase, Start, StartReason, Stop, StopReason
from tests.unit.test_policy import LIM, V, lim, run

PY = sys.executable


def _cfg(tmp: Path, servers: list[dict], **tables) -> object:
    return parse_config({"balancer": {"port": 0}, "servers": servers, **tables}, tmp)


def test_diff_names_added_removed_changed_and_what_needs_new_servers(tmp_path: Path):
    script = tmp_path / "job.sh"
    script.write_text("python model.py\n")
    a = {"name": "a", "command": [PY, "a.py"], "max_servers": 2}
    b = {"name": "b", "job_script": "job.sh"}
    c = {"name": "c", "command": "x"}
    old = _cfg(tmp_path, [a, b, c])
    assert diff_config(old, _cfg(tmp_path, [a, b, c])) == diff_config(old, old)  # nothing changed
    assert not any(diff_config(old, old).__dict__.values())

    script.write_text("python model2.py\n")  # the same path, an edited script
    new = _cfg(tmp_path, [{**a, "max_servers": 5, "backlog": 1}, b, {"name": "d", "command": "y"}])
    d = diff_config(old, new)
    assert (d.added, d.removed) == (("d",), ("c",))
    assert d.changed == {"a": ("max_servers", "backlog"), "b": ("job_script",)}
    assert d.relaunch == ("b",)  # limits apply at once; an edited script replaces the servers
    now = _cfg(tmp_path, [a, b, c])
    env = diff_config(now, _cfg(tmp_path, [{**a, "env": {"K": "1"}}, b, c]))
    assert (env.changed, env.relaunch) == ({"a": ("env",)}, ("a",))
    res = diff_config(now, _cfg(tmp_path, [{**a, "resources": {"memory": "1G"}}, b, c]))
    assert res.relaunch == ("a",)


def test_diff_splits_live_settings_from_those_that_need_a_restart(tmp_path: Path):
    s = [{"name": "a", "command": "x"}]
    old = _cfg(tmp_path, s)
    live = _cfg(tmp_path, s, forecast={"cooldown_s": 10.0, "grid_s": 600.0}, profiles={"flush_s": 5.0})
    d = diff_config(old, live)
    assert d.fixed == () and set(d.settings) == {"forecast.cooldown_s", "forecast.grid_s", "profiles.flush_s"}
    top = parse_config({"balancer": {"port": 0, "lease_s": 5.0, "allow_remote": True}, "servers": s},
                       tmp_path)  # fmt: skip
    assert set(diff_config(old, top).settings) == {"balancer.lease_s", "balancer.allow_remote"}
    top = {"port": 9, "scheduler": "slurm"}
    fixed = parse_config({"balancer": top, "servers": s, "forecast": {"collect": False}}, tmp_path)
    assert set(diff_config(old, fixed).fixed) == {"balancer.port", "balancer.scheduler", "forecast.collect"}


def test_a_reload_may_change_the_policy_and_a_specs_floor_and_pending_timeout(tmp_path: Path):
    old = _cfg(tmp_path, [{"name": "a", "command": "x", "max_servers": 8}])
    spec = {"name": "a", "command": "x", "max_servers": 8, "floor": 3, "pending_timeout_s": 60}
    new = _cfg(tmp_path, [spec], forecast={"policy": "hybrid"})
    d = diff_config(old, new)
    assert d.settings == ("forecast.policy",) and d.fixed == ()
    assert d.changed == {"a": ("pending_timeout_s", "floor")} and d.relaunch == ()  # no server replaced
    merged = merge_limits(Limits.from_config(old), new, d, keep=set())
    assert merged.rules.policy == "hybrid"
    assert (merged.specs[0].floor, merged.specs[0].pending_timeout_s) == (3, 60.0)


def test_merged_limits_keep_an_operators_scale_unless_the_file_changes_that_key(tmp_path: Path):
    old = _cfg(tmp_path, [{"name": "a", "command": "x", "max_servers": 2}, {"name": "b", "command": "y"}])
    scaled = Limits.from_config(old)
    scaled = Limits(tuple(lim.__class__(**{**lim.__dict__, "min_servers": 1}) for lim in scaled.specs))
    new = _cfg(tmp_path, [{"name": "a", "command": "x", "max_servers": 6}, {"name": "c", "command": "z"}])
    merged = merge_limits(scaled, new, diff_config(old, new), keep={"b"})
    by = {lim.name: lim for lim in merged.specs}
    assert (by["a"].min_servers, by["a"].max_servers) == (1, 6)  # the operator's min stays, max from file
    assert (by["c"].min_servers, by["c"].max_servers) == (0, 4)
    assert (by["b"].min_servers, by["b"].max_servers) == (0, 0)  # removed, still draining: no starts


def test_rolling_replacement_drains_an_old_server_only_for_a_ready_successor():
    old = [V("o1", outstanding=1, outdated=True), V("o2", outstanding=1, outdated=True)]
    # Nothing of the new kind yet: successors start (the backlog at a time); the old ones serve on.
    assert run(old, lim=lim(max_servers=2)) == [Start("m", 2, StartReason.ROLLOUT, target=4)]
    assert run(old, lim=lim(max_servers=2, backlog=1)) == [Start("m", 1, StartReason.ROLLOUT, target=3)]
    on_way = [V("n1", Phase.STARTING, successor=True), V("n2", Phase.STARTING, successor=True)]
    assert run([*old, *on_way], lim=lim(max_servers=2)) == []  # no drain before a successor is ready
    # One successor ready: exactly one old server drains, the idler one, and names its successor.
    busy = V("o1", outstanding=2, outdated=True)
    acts = run([busy, V("o2", outstanding=1, outdated=True), V("n1", successor=True), on_way[1]],
               lim=lim(max_servers=2, concurrency=2))  # fmt: skip
    assert acts == [Drain("m", "o2", retires="n1")]
    # An idle outdated server drains and stops in the same tick once its successor is ready.
    acts = run([V("o1", outdated=True), V("n1", successor=True, outstanding=1)], lim=lim(max_servers=1))
    assert acts == [Drain("m", "o1", retires="n1"), Stop("m", "o1", StopReason.TIME_LIMIT, target=1)]


def test_an_outdated_start_is_stopped_and_a_paused_spec_rolls_nothing():
    acts = run([V("st", Phase.STARTING, outdated=True)], waiting=1)
    assert acts[0] == Stop("m", "st", StopReason.OUTDATED, target=0)
    assert acts[1] == Start("m", 1, StartReason.DEMAND, target=1)  # demand starts one of the new kind
    assert run([V("o1", outstanding=1, outdated=True)], paused=True) == []


def test_lowered_max_servers_stops_idle_surplus_and_drains_busy_surplus():
    servers = [V("a", outstanding=1), V("b", idle_since_m=3.0), V("c", outstanding=1),
               V("d", idle_since_m=1.0)]  # fmt: skip
    acts = run(servers, now=5.0, lim=lim(max_servers=1), waiting=0)
    assert acts[:2] == [Stop("m", "d", StopReason.MAX_SERVERS, target=3),
                        Stop("m", "b", StopReason.MAX_SERVERS, target=2)]  # fmt: skip
    assert acts[2] == Drain("m", "a", reason=StopReason.MAX_SERVERS)
    assert len(acts) == 3  # one busy server keeps serving: the new max
    assert run(servers[:1], lim=LIM) == []


def test_a_successor_waiting_for_the_old_servers_cores_lets_one_of_them_go_first():
    old = [V("o1", outstanding=1, outdated=True), V("o2", outstanding=1, outdated=True)]
    stuck = [V("n1", Phase.STARTING, successor=True, deferred=True),
             V("n2", Phase.STARTING, successor=True, deferred=True)]  # fmt: skip
    assert run([*old, *stuck], lim=lim(max_servers=2)) == [Drain("m", "o1", retires="n1")]
    # While that one drains (its cores not yet free), no second old server goes.
    draining = V("o1", Phase.DRAINING, outstanding=1, outdated=True, replaced=True)
    assert run([draining, old[1], stuck[1]], lim=lim(max_servers=2)) == []


@pytest.mark.inproc  # a balancer in-process over tests/fakes.py
def test_live_settings_reach_the_parts_that_use_them_and_a_refused_file_changes_nothing(tmp_path: Path):
    import asyncio

    import tomli_w

    from tests.fakes import running

    spec = {"name": "t", "command": [PY, "-c", "pass"], "models": ["forward"], "max_servers": 3}
    path = tmp_path / "balancer.toml"

    def write(top: dict, **tables) -> None:
        path.write_text(tomli_w.dumps({"balancer": {"port": 0, **top}, "servers": [spec], **tables}))

    async def main() -> None:
        async with running(tmp_path, [spec]) as h:
            b = h.balancer
            write({"scale_interval_s": 0.5, "lease_s": 7.0, "max_body_mb": 2.0, "port": 5})
            ok, why = await b.reloader.reload(str(path))
            assert not ok and "balancer.port" in why
            assert (b.scaler.interval_s, b.control.lease_s, b.calls.max_body_mb) == (0.05, 30.0, 64.0)
            write({"scale_interval_s": 0.5, "lease_s": 7.0, "max_body_mb": 2.0},
                  forecast={"cooldown_s": 5.0, "enabled": False, "policy": "harvest"})  # fmt: skip
            ok, doc = await b.reloader.reload(str(path))
            assert ok, doc
            assert (b.scaler.interval_s, b.control.lease_s, b.calls.max_body_mb) == (0.5, 7.0, 2.0)
            assert b.scaler.launch.lease_s == 7.0  # servers started from now on are told
            assert b.scaler.limits.rules.cooldown_s == 5.0 and b.forecast.enabled is False
            assert b.scaler.limits.rules.policy == "harvest"  # the policy is reloadable too
            assert h.of("forecast.changed")[-1]["change"] == "disabled"
            assert b.reloader.status()["reloads"] == 1 and b.reloader.status()["rejected"] == 1

    asyncio.run(main())
