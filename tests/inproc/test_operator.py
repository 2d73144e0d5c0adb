"""The operator API in-process: drain, stop, scale, pause, resume; bad input (every operator command
of the CLI against a real balancer process: system/test_operator_cli)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from balancer.ops.views import decision_lines
from tests.fakes import model_server, running, until

SPEC = {"name": "t", "command": [sys.executable, "-c", "pass"], "models": ["forward"], "max_servers": 3}


def test_operator_api_drains_stops_scales_pauses_and_resumes(tmp_path: Path):
    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h, model_server() as m:
            call = asyncio.ensure_future(h.evaluate(1.0))
            s1 = (await until(lambda: h.backend.submitted, what="a start"))[0].server_id
            await h.register(s1, m)
            assert await call == (200, {"output": [[2.0]]})
            servers = (await h.get("/api/servers"))["servers"]
            assert [(s["id"], s["state"], s["calls"]) for s in servers] == [(s1, "ready", 1)]

            # Pause: calls wait, nothing starts (checked over several scaler passes), nothing is lost.
            assert (await h.call("POST", f"/api/servers/{s1}/drain", {}))[1]["state"] == "draining"
            await h.event("server.stopping", server=s1)
            status, doc = await h.call("POST", "/api/specs/t/pause", {})
            assert (status, doc["paused"], doc["changed"]) == (200, True, True)
            call = asyncio.ensure_future(h.evaluate(2.0))
            await h.event("call.queued")
            passes = h.balancer.scaler.passes
            await until(lambda: h.balancer.scaler.passes >= passes + 5, what="scaler passes while paused")
            assert len(h.backend.submitted) == 1 and not call.done()
            st = await h.get("/api/status")
            assert st["specs"]["t"]["paused"] is True and st["queues"] == {"forward": 1}
            status, doc = await h.call("POST", "/api/specs/t/resume", {})
            assert (status, doc["unpaused"]) == (200, True)
            s2 = (await until(lambda: h.backend.submitted[1:], what="a start after resume"))[0].server_id
            await h.register(s2, m)
            assert await call == (200, {"output": [[4.0]]})

            # Scale: min_servers 2 starts one more at once; limits show in the status.
            status, doc = await h.call("POST", "/api/specs/t/scale", {"min_servers": 2, "backlog": 1})
            assert (status, doc) == (200, {"spec": "t", "min_servers": 2, "max_servers": 3, "backlog": 1})
            await until(lambda: h.backend.submitted[2:], what="a start for min_servers")
            assert h.of("server.requested")[-1]["reason"] == "min_servers"
            assert (await h.get("/api/status"))["specs"]["t"]["min_servers"] == 2

            # Stop: now, journaled with who asked.
            status, doc = await h.call("POST", f"/api/servers/{s2}/stop", {})
            assert (status, doc["was"], doc["state"]) == (200, "ready", "stopping")
            acts = [(e["action"], e["target"]) for e in h.of("operator.action")]
            assert acts == [("drain", s1), ("pause", "t"), ("resume", "t"), ("scale", "t"), ("stop", s2)]
            scale = h.of("operator.action", action="scale")[0]
            assert scale["before"] == {"min_servers": 0, "backlog": 2} and scale["remote"] == "127.0.0.1"
            assert h.of("scale.decision", action="stop", server=s1)[0]["reason"] == "drained by operator"
            # The dashboard lists them among the scaler's decisions.
            decisions = decision_lines(h.balancer.recent.decisions)  # what a tab opened now is shown
            ops = [(d["spec"], d["reason"]) for d in decisions if d["action"] == "operator"]
            assert ops[0] == ("t", f"drain {s1} by 127.0.0.1") and ops[1] == ("t", "pause by 127.0.0.1")

    asyncio.run(main())


def test_operator_api_bad_input_gets_a_clear_error_and_changes_nothing(tmp_path: Path):
    async def main() -> None:
        async with running(tmp_path, [SPEC]) as h:
            cases = [
                ("POST", "/api/specs/t/scale", {"min_servers": 4, "max_servers": 3}, 400, "must not exceed"),
                ("POST", "/api/specs/t/scale", {"size": 1}, 400, "unknown key"),
                ("POST", "/api/specs/t/scale", {"max_servers": -1}, 400, "integer >= 0"),
                ("POST", "/api/specs/t/scale", {"max_servers": "2"}, 400, "integer >= 0"),
                ("POST", "/api/specs/t/scale", {"backlog": 0}, 400, "backlog must be >= 1"),
                ("POST", "/api/specs/t/scale", {}, 400, "expected a JSON object"),
                ("POST", "/api/specs/t/scale", b"{not json", 400, "not JSON"),
                ("POST", "/api/specs/nope/pause", {}, 404, "no server spec 'nope'"),
                ("POST", "/api/specs/t/explode", {}, 404, "no route"),
                ("POST", "/api/servers/s99/drain", {}, 404, "no server 's99'"),
                ("POST", "/api/servers/s99/stop", {}, 404, "no server 's99'"),
            ]
            for method, path, body, code, words in cases:
                status, doc = await h.call(method, path, body)
                assert status == code and words in doc["error"]["message"], (path, body, doc)
            for method, path in (("GET", "/api/servers"), ("POST", "/api/specs/t/pause")):
                assert (await h.call(method, path, {}, token=None))[0] == 401
                assert (await h.call(method, path, {}, token="wrong"))[0] == 401
            # A server that is not ready cannot drain.
            call = asyncio.ensure_future(h.evaluate(1.0))
            sid = (await until(lambda: h.backend.submitted, what="a start"))[0].server_id
            status, doc = await h.call("POST", f"/api/servers/{sid}/drain", {})
            assert status == 409 and "only a ready server can drain" in doc["error"]["message"]
            limits = h.balancer.scaler.limits.specs[0]
            assert (limits.min_servers, limits.max_servers, limits.backlog) == (0, 3, 2)
            assert not h.balancer.pool.specs["t"].paused and not h.of("operator.action")
            call.cancel()

    asyncio.run(main())
