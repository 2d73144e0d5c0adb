"""Serve UM-Bridge models the way the balancer's launcher asks: on ``$PORT``, with
``$UMBRIDGE_SERVER_CONCURRENCY`` workers, bound to ``$UMBRIDGE_HOST`` when it is set, or on the
Unix socket ``$UMBRIDGE_SOCKET`` instead of any port when the spec sets ``isolate = "socket"``.

The launcher sets ``UMBRIDGE_HOST=127.0.0.1`` when the balancer runs on the same machine (the
local backend): then nobody else needs to reach the model server. ``umbridge.serve_models`` binds
every interface and takes no host, so this passes the host to the aiohttp app it runs.
"""

from __future__ import annotations

import functools
import os

import umbridge
from aiohttp import web


def serve(models: list[umbridge.Model]) -> None:
    host = os.environ.get("UMBRIDGE_HOST")
    sock = os.environ.get("UMBRIDGE_SOCKET")
    if sock:
        # isolate = "socket": listen on the launcher's Unix socket (in an owner-only directory), on no port.
        run_app = web.run_app

        def on_socket(app: web.Application, **kw: object) -> None:
            kw.pop("port", None)
            kw.pop("host", None)
            run_app(app, path=sock, **kw)  # type: ignore[arg-type]

        web.run_app = on_socket
    elif host:
        # serve_models ends in web.run_app(app, port=port): add the host to that call.
        web.run_app = functools.partial(web.run_app, host=host)
    umbridge.serve_models(
        models,
        int(os.environ.get("PORT", "4242")),
        max_workers=int(os.environ.get("UMBRIDGE_SERVER_CONCURRENCY", "1")),
    )
