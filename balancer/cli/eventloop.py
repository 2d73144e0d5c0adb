"""Which event loop runs the balancer: uvloop where it is installed, else asyncio's own.

uvloop (libuv, Cython) runs the same protocols and tasks with less interpreter work per loop pass:
measured side by side (``bench/haproxy.py``) it takes ~10-25% off the balancer's CPU per call. The
balancer runs on either (the in-process tests run on asyncio's, the subprocess tests on the default);
``[balancer] loop`` or ``UMBRIDGE_BALANCER_LOOP`` chooses. "uvloop" where it is not installed is a
readable error, not a silent fallback: the user asked for it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ENV = "UMBRIDGE_BALANCER_LOOP"


class LoopUnavailable(RuntimeError):
    """The chosen loop cannot run here."""


def loop_factory(choice: str = "auto") -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """(the loop's name, a function that makes one) for ``choice`` ("auto", "asyncio", "uvloop");
    the environment's ``UMBRIDGE_BALANCER_LOOP`` overrides the config."""
    choice = os.environ.get(ENV) or choice
    if choice not in ("auto", "asyncio", "uvloop"):
        raise LoopUnavailable(f"{ENV}={choice!r}: expected auto, asyncio or uvloop")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                why = "loop = uvloop, but uvloop is not installed (pip install uvloop)"
                raise LoopUnavailable(why) from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(coro)`` on the chosen loop."""
    try:
        name, factory = loop_factory(choice)
    except LoopUnavailable:
        coro.close()
        raise
    if hasattr(asyncio, "Runner"):  # Python 3.11+
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    if name == "uvloop":  # Python 3.10: asyncio.run takes no loop factory, only a policy
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(coro)
