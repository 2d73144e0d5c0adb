"""The balancer answers as a UM-Bridge model server does: same error types in the same order of checks,
the same acceptance of bare NaN/Infinity, and a readable, journaled 400 for hostile input.

Each request goes to a real ``models/testmodel.py`` server directly and through the in-process
balancer; the answers are compared."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp

from tests.fakes import model_server, running, until

SPEC = {"name": "t", "command": [sys.executable, "-c", "pass"], "min_servers": 1, "max_servers": 1}

# (path, raw body): each the official server answers with a well-defined status and error type.
SAME = [
    ("/Evaluate", b'{"name": "wrong"}'),  # ModelNotFound although "input" is missing
    ("/Gradient", b'{"name": "wrong", "input": [[1.0]]}'),
    ("/Gradient", b'{"name": "nan", "input": [[1.0]]}'),  # UnsupportedFeature although outWrt is missing
    ("/ApplyJacobian", b'{"name": "nan", "input": [[1.0]], "outWrt": 5, "inWrt": 0, "vec": [1.0]}'),
    ("/ApplyHessian", b'{"name": "nan"}'),
    ("/Evaluate", b'{"name": "forward", "input": [[NaN]]}'),  # a bare NaN: 200 from the official server
    ("/Evaluate", b'{"name": "forward", "input": [[Infinity]], "config": {}}'),
    ("/Evaluate", b'{"name": "forward", "input": [[1.0, 2.0]]}'),  # wrong size: InvalidInput
    ("/Evaluate", b'{"name": "fail", "input": [[1.0]]}'),  # the model's own error, passed on
    ("/InputSizes", b'{"name": "wrong"}'),
]


async def post(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str | None, bytes]:
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        data = await r.read()
    try:
        kind = json.loads(data)["error"]["type"]
    except (ValueError, KeyError, TypeError):
        kind = None
    return r.status, kind, data


def test_errors_and_nan_as_the_official_server_answers_them(tmp_path: Path):
    async def main() -> None:
        async with model_server(TEST_EXTRA_MODELS="1") as direct, running(tmp_path, [SPEC]) as h:
            sid = (await until(lambda: h.backend.submitted))[0].server_id
            await h.register(sid, direct)
            await h.event("server.ready", server=sid)
            async with aiohttp.ClientSession() as http:
                for path, body in SAME:
                    want = await post(http, direct + path, body)
                    got = await post(http, h.url + path, body)
                    assert got[:2] == want[:2], (path, body, got, want)
                    if want[0] == 200:
                        assert got[2] == want[2]  # byte for byte (NaN comes back as a bare nan)
            failed = {e["call"] for e in h.of("call.failed")}
            received = {e["call"] for e in h.of("call.received")}
            assert failed <= received  # every rejection is journaled with its request

    asyncio.run(main())


def test_hostile_nesting_is_a_journaled_400_not_a_500(tmp_path: Path):
    deep_config = b'{"name": "forward", "input": [[1.0]], "config": ' + b'{"a": ' * 255 + b"1" + b"}" * 256
    deep_input = b'{"name": "forward", "input": [[' + b"[" * 1000 + b"1" + b"]" * 1000 + b"]]}"
    deep_json = b'{"name": "forward", "input": [[1.0]], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"

    async def main() -> None:
        async with model_server() as direct, running(tmp_path, [SPEC]) as h:
            sid = (await until(lambda: h.backend.submitted))[0].server_id
            await h.register(sid, direct)
            await h.event("server.ready", server=sid)
            async with aiohttp.ClientSession() as http:
                for body in (deep_config, deep_input, deep_json):
                    n = len(h.of("call.failed"))
                    status, kind, data = await post(http, h.url + "/Evaluate", body)
                    assert (status, kind) == (400, "InvalidInput"), data[:300]
                    assert len(data) < 1000  # no echo of the hostile structure
                    assert len(h.of("call.failed")) == n + 1
                ok = await post(http, h.url + "/Evaluate", b'{"name": "forward", "input": [[1.0]]}')
                assert ok[0] == 200

    asyncio.run(main())


ODD_FORWARD = """
import os, umbridge
class Forward(umbridge.Model):  # the same name as testmodel's, another model: two inputs
    def __init__(self): super().__init__("forward")
    def get_input_sizes(self, config): return [2]
    def get_output_sizes(self, config): return [1]
    def __call__(self, parameters, config): return [[sum(parameters[0])]]
    def supports_evaluate(self): return True
umbridge.serve_models([Forward()], int(os.environ["PORT"]))
"""


def test_two_specs_serving_one_model_name_with_other_sizes_are_refused(tmp_path: Path):
    odd = tmp_path / "odd.py"
    odd.write_text(ODD_FORWARD)
    specs = [
        {"name": "a", "command": ["x"], "models": ["forward"], "min_servers": 1, "max_servers": 1},
        {"name": "b", "command": ["x"], "models": ["forward"], "min_servers": 1, "max_servers": 1},
    ]

    async def main() -> None:
        async with running(tmp_path, specs) as h, model_server() as good, model_server(odd) as bad:
            launches = await until(lambda: len(h.backend.submitted) == 2 and h.backend.submitted)
            sid = {x.spec.name: x.server_id for x in launches}
            await h.register(sid["a"], good)
            await h.event("server.ready", server=sid["a"])
            await h.register(sid["b"], bad)
            failed = await h.event("server.failed", server=sid["b"])
            assert "'b'" in failed["reason"] and "'a'" in failed["reason"] and "[2]" in failed["reason"]
            held = await h.event("spec.held", spec="b")
            assert held["reason"] == failed["reason"]
            async with aiohttp.ClientSession() as http:  # the status wants the token
                headers = {"Authorization": "Bearer test-token"}
                async with http.get(h.url + "/api/status", headers=headers) as r:
                    status = await r.json()
            assert "'a'" in status["held"]["b"]
            answers = await asyncio.gather(*(h.evaluate(float(i)) for i in range(20)))
            assert answers == [(200, {"output": [[2.0 * i]]}) for i in range(20)]
            assert {e["server"] for e in h.of("call.dispatched")} == {sid["a"]}

    asyncio.run(main())
