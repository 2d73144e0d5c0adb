"""``/api/forecast`` on a real balancer (in-process, fake scheduler): switches, overrides, expiry,
bad bodies, the token, and what an override does to the pool's pending starts."""

from __future__ import annotations

import time

from balancer.app import Balancer
from balancer.capacity.service import Override
from tests.fakes import in_loop, running, until

SPEC = {"name": "m", "command": "true", "models": ["forward"], "max_servers": 8, "backlog": 2,
        "startup_timeout_s": 600}  # fmt: skip
NO_COLLECTOR = {"forecast": {"collect": False}}


@in_loop
async def test_the_forecast_api_needs_the_token(tmp_path):
    async with running(tmp_path, [SPEC], **NO_COLLECTOR) as h:
        for method, body in (("GET", None), ("PUT", {"enabled": False}), ("DELETE", None)):
            status, doc = await h.call(method, "/api/forecast", body, token="wrong")
            assert status == 401 and doc["error"]["type"] == "Unauthorized"
            status, _ = await h.call(method, "/api/forecast", body, token=None)
            assert status == 401
        assert h.balancer.forecast.enabled  # nothing changed
        await h.event("auth.refused")


@in_loop
async def test_status_says_why_no_forecast_is_used(tmp_path):
    async with running(tmp_path, [SPEC], **NO_COLLECTOR) as h:
        status, doc = await h.call("GET", "/api/forecast")
        assert status == 200
        assert (doc["enabled"], doc["in_use"], doc["override"]) == (True, False, None)
        assert doc["state"].startswith("cold")
        assert (await h.get("/api/status"))["forecast"]["in_use"] is False


@in_loop
async def test_disable_enable_and_override_are_journaled(tmp_path):
    async with running(tmp_path, [SPEC], **NO_COLLECTOR) as h:
        status, doc = await h.call("PUT", "/api/forecast", {"enabled": False})
        assert status == 200 and doc["enabled"] is False and doc["state"].startswith("disabled")
        await h.event("forecast.changed", change="disabled")
        status, doc = await h.call("PUT", "/api/forecast", {"enabled": True})
        assert doc["enabled"] is True
        await h.event("forecast.changed", change="enabled")
        body = {"override": {"idle_cpus": 3, "expires_in_s": 600, "reason": "maintenance"}}
        status, doc = await h.call("PUT", "/api/forecast", body)
        assert status == 200 and doc["state"] == "override" and doc["in_use"]
        assert doc["override"]["idle_cpus"] == 3 and doc["next"]["idle"][:2] == [3, 3]
        ev = await h.event("forecast.changed", change="override set")
        assert ev["override"]["reason"] == "maintenance"
        status, doc = await h.call("DELETE", "/api/forecast")
        assert status == 200 and doc["cleared"] is True and doc["override"] is None
        await h.event("forecast.changed", change="override cleared")
        status, doc = await h.call("DELETE", "/api/forecast")
        assert doc["cleared"] is False


@in_loop
async def test_an_override_expires(tmp_path):
    async with running(tmp_path, [SPEC], **NO_COLLECTOR) as h:
        svc = h.balancer.forecast
        now = [1_000_000.0]
        svc.wall = lambda: now[0]
        await h.call("PUT", "/api/forecast", {"override": {"idle_cpus": 0, "expires_in_s": 60}})
        assert svc.view() is not None and svc.view().source == "override"
        now[0] += 59
        assert (await h.call("GET", "/api/forecast"))[1]["override"] is not None
        now[0] += 2
        doc = (await h.call("GET", "/api/forecast"))[1]
        assert doc["override"] is None and doc["in_use"] is False
        await h.event("forecast.changed", change="override expired")
        # An absolute expiry works too, and one in the past is refused.
        ok = await h.call("PUT", "/api/forecast", {"override": {"idle_cpus": 1, "expires_at": now[0] + 10}})
        assert ok[0] == 200
        past = await h.call("PUT", "/api/forecast", {"override": {"idle_cpus": 1, "expires_at": now[0] - 1}})
        assert past[0] == 400 and "not in the future" in past[1]["error"]["message"]


@in_loop
async def test_bad_bodies_get_a_400_that_says_what_is_wrong(tmp_path):
    cases = [
        (b"{not json", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b"{}", "expected a JSON object"),
        ({"enabled": "no"}, '"enabled" must be true or false'),
        ({"enable": True}, "unknown key(s) enable"),
        ({"override": 5}, '"override" must be an object'),
        ({"override": {"expires_in_s": 60}}, '"idle_cpus" is required'),
        ({"override": {"idle_cpus": -1, "expires_in_s": 60}}, "must be >= 0"),
        ({"override": {"idle_cpus": "lots", "expires_in_s": 60}}, "must be a number"),
        ({"override": {"idle_cpus": 1}}, 'exactly one of "expires_in_s" or "expires_at"'),
        ({"override": {"idle_cpus": 1, "expires_in_s": 60, "expires_at": 1}}, "exactly one of"),
        ({"override": {"idle_cpus": 1, "expires_in_s": 1e9}}, "more than 30 days"),
        ({"override": {"idle_cpus": 1, "expires_in_s": 60, "cpus": 2}}, "unknown key(s) cpus"),
    ]
    async with running(tmp_path, [SPEC], **NO_COLLECTOR) as h:
        for body, message in cases:
            status, doc = await h.call("PUT", "/api/forecast", body)
            assert status == 400, body
            assert doc["error"]["type"] == "InvalidInput"
            assert message in doc["error"]["message"], (body, doc)
        status, doc = await h.call("GET", "/api/forecast")
        assert doc["enabled"] is True and doc["override"] is None  # nothing changed


@in_loop
async def test_an_override_of_no_idle_capacity_keeps_one_job_pending(tmp_path):
    """The spec wants 8 servers (min_servers); with "no idle CPUs" the pool keeps one start in the
    queue, with 6 idle CPUs it has 6 in flight at once (beyond the backlog of 2), and cleared it is
    demand-only again: the backlog caps the starts in flight, so none is added."""
    spec = {**SPEC, "min_servers": 8}

    def full(b: Balancer) -> None:  # before the first scaler pass
        b.forecast.set_override(Override(0.0, time.time() + 600))

    forecast = {"forecast": {"collect": False, "policy": "forecast"}}  # the rules (default: demand)
    async with running(tmp_path, [spec], setup=full, **forecast) as h:
        scaler = h.balancer.scaler
        await until(lambda: h.backend.submitted, what="a first start")
        passes = scaler.passes
        await until(lambda: scaler.passes >= passes + 20, what="20 more scaler passes")
        assert len(h.backend.submitted) == 1
        d = h.of("scale.decision", action="start")[0]
        assert (d["forecast"], d["idle_cpus"], d["admit_cpus"], d["count"]) == ("override", 0, 0, 1)
        await h.call("PUT", "/api/forecast", {"override": {"idle_cpus": 6, "expires_in_s": 600}})
        await until(lambda: len(h.backend.submitted) == 6, what="6 starts")
        d = h.of("scale.decision", action="start")[1]
        assert (d["idle_cpus"], d["admit_cpus"], d["count"]) == (6, 6, 5)
        await h.call("DELETE", "/api/forecast")
        passes = scaler.passes
        await until(lambda: scaler.passes >= passes + 20, what="20 more scaler passes")
        assert len(h.backend.submitted) == 6
        assert (await h.get("/api/status"))["forecast"]["in_use"] is False
