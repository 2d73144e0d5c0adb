"""The two listeners' route tables: the launchers' control API and the owner's client port.

Which handler of which component answers which path; the components themselves are built in
``app.Balancer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from balancer.calls import protocol
from balancer.calls.path import shmem_unsupported, test_shmem
from balancer.http.messages import Reply, Request, error_reply
from balancer.http.router import Router

if TYPE_CHECKING:
    from balancer.app import Balancer


def control_router(b: Balancer) -> Router:
    """The launchers' API on its own listener (``control_host``: where compute nodes reach it),
    token only; the client port does not serve it."""
    r = Router()
    r.add("POST", "/api/servers/register", b.control.register)
    r.add_prefix("POST", "/api/servers/", b.control.servers)  # lease, exited
    # Prometheus on another host scrapes here (token), without opening the owner-only client port.
    r.add("GET", "/metrics", lambda req: b.metrics.endpoint(req, b.control.authorized))
    return r


def client_router(b: Balancer) -> Router:
    """UM-Bridge and the operator's routes, on the owner-only client port (``host``)."""
    calls, control, operator = b.calls, b.control, b.operator
    r = Router()
    r.add("GET", "/Info", calls.info)
    for op in protocol.EVAL_OPS:
        r.add("POST", f"/{op}", _bind(calls.evaluate, op))
        r.add_fast("POST", f"/{op}", _bind_fast(calls.evaluate_fast, op))
        r.add("POST", f"/{op}ShMem", shmem_unsupported)
    for op in protocol.META_OPS:
        r.add("POST", f"/{op}", _bind(calls.metadata, op))
    r.add("POST", "/TestShMem", test_shmem)
    r.add_prefix("POST", "/api/servers/", operator.server_action)  # drain, stop
    r.add_prefix("POST", "/api/specs/", operator.spec_action)
    r.add("POST", "/api/reload", operator.reload)
    r.add("GET", "/api/servers", operator.servers)
    r.add("GET", "/api/status", control.status)
    r.add("GET", "/metrics", lambda req: b.metrics.endpoint(req, control.authorized))
    r.add("GET", "/api/forecast", b.forecast_api.get)
    r.add("PUT", "/api/forecast", b.forecast_api.put)
    r.add("DELETE", "/api/forecast", b.forecast_api.delete)
    for method, path, handler, prefix in b.dashboard.routes():  # read-only: no token
        (r.add_prefix if prefix else r.add)(method, path, handler)
    r.add("GET", "/", root)
    return r


async def root(request: Request) -> Reply:
    """``GET /``: a browser (it accepts HTML) is sent to the dashboard; a UM-Bridge or script client
    gets the JSON 404 it always got."""
    if b"text/html" in request.headers.get(b"accept", b""):
        return 303, b"Location: /dashboard\r\nContent-Type: text/plain\r\n", b"see /dashboard\n"
    return error_reply("NotFound", "no route GET /", 404)


def _bind_fast(fn: Any, op: str) -> Any:
    def fast(request: Request, done: Any) -> bool:
        return bool(fn(request, op, done))

    return fast


def _bind(fn: Any, op: str) -> Any:
    async def handler(request: Request) -> Reply:
        return await fn(request, op)

    return handler
