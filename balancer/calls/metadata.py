"""The metadata cache: ModelInfo, InputSizes and OutputSizes asked of one ready server once per
(operation, model, config), then answered from memory; the support flags and sizes the call path
checks requests against, parsed once.

Bounded (``LRU``): clients choose the configs, so no cache may grow with them. A reload forgets
what the changed specs' models answered (``reconfigure``); an answer asked of an old server before
a reload is not cached.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import orjson

from balancer.calls.dispatcher import Dispatcher
from balancer.http.messages import Reply
from balancer.http.upstream import UpstreamError
from balancer.pool.members import NoServerError
from balancer.pool.pool import Pool
from balancer.pool.servers import Server

CACHE_ENTRIES = 4096  # per cache: each distinct config a client sends adds an entry
# Per-connection headers of a model server's answer; the frontend frames its own answer.
_DROP_RAW = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})

K = TypeVar("K")
V = TypeVar("V")
Sizes = list[int]


class LRU(OrderedDict[K, V]):
    """A dict that forgets its least recently used entries beyond ``size``: clients choose the
    configs, so the metadata and sizes caches must not grow with them (~4.6 KB each)."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        super().__init__()
        self.size = size

    def get(self, key: K, default: Any = None) -> Any:
        try:
            self.move_to_end(key)
        except KeyError:
            return default
        return self[key]

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def pass_headers(raw: list[tuple[bytes, bytes]]) -> bytes:
    """A model server's headers, as it sent them, minus the per-connection ones."""
    out = []
    for k, v in raw:
        if k.lower() not in _DROP_RAW:
            out.append(b"%s: %s\r\n" % (k, v))
    return b"".join(out)


class Metadata:
    """What one ready server answered about a model, kept for everyone after."""

    def __init__(
        self,
        pool: Pool,
        disp: Dispatcher,
        lost: Callable[[Server, str], Awaitable[None]],
        wait: Callable[[str, Callable[[], bool]], Awaitable[None]],
    ) -> None:
        self.pool = pool
        self.disp = disp
        self._lost = lost  # a server's call broke: probe it, fail it if gone
        self._wait = wait  # wait for a condition, counting as demand for the model
        self.answers: dict[tuple[str, str, bytes], Reply] = LRU()
        self._inflight: dict[tuple[str, str, bytes], asyncio.Future[Reply]] = {}
        self.in_sizes: dict[tuple[str, bytes], Sizes] = LRU()
        self.out_sizes: dict[tuple[str, bytes], Sizes] = LRU()
        self.support: dict[str, dict[str, Any]] = {}  # model -> ModelInfo's "support" flags
        self._reloads = 0

    def reconfigure(self, stale: set[str]) -> None:
        """After a reload: the ``stale`` models (their servers' command changed) are asked again."""
        self._reloads += 1
        caches: tuple[dict[Any, Any], ...] = (self.answers, self.in_sizes, self.out_sizes)
        for cache in caches:
            for key in [k for k in cache if k[-2] in stale]:
                del cache[key]
        for model in stale:
            self.support.pop(model, None)

    def known_sizes(self, model: str, ckey: bytes, op: str) -> tuple[Sizes, Sizes | None] | None:
        """The sizes ``op`` is checked against when both are known already (the fast path), else None."""
        key = (model, ckey)
        ins = self.in_sizes.get(key)
        if ins is None:
            return None
        if op == "Evaluate":
            return ins, None
        outs = self.out_sizes.get(key)
        return None if outs is None else (ins, outs)

    async def get(self, op: str, model: str, ckey: bytes, body: bytes) -> tuple[Reply, bool]:
        """Ask one ready server once per (op, model, config); everyone else gets the cached answer."""
        key = (op, model, ckey)
        ans = self.answers.get(key)
        if ans is not None:
            return ans, True
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut), True
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            reloads = self._reloads
            ans = await self._fetch(op, model, body)
            if ans[0] == 200 and reloads == self._reloads:  # not an old server's, asked before a reload
                self.answers[key] = ans
            fut.set_result(ans)
            return ans, False
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: followers may not exist
            raise
        finally:
            del self._inflight[key]

    async def _fetch(self, op: str, model: str, body: bytes) -> Reply:
        for _ in range(3):
            s = await self._any_ready(model)
            try:
                assert s.upstream is not None  # set before a server becomes ready
                status, raw, data = await s.upstream.post("/" + op, body)
                return status, pass_headers(raw), data
            except (OSError, UpstreamError) as exc:
                await self._lost(s, f"{op}: {type(exc).__name__}: {exc}")
        raise NoServerError(f"no server answered {op} for model '{model}'")

    async def _any_ready(self, model: str) -> Server:
        """A ready server of ``model`` (no slot taken: metadata is cheap), waiting for one if needed."""
        disp, pool = self.disp, self.pool
        if not disp.by_model.get(model):
            await self._wait(model, lambda: bool(disp.by_model.get(model)) or not pool.can_serve(model))
        s = disp.least_loaded(model)
        if s is None:
            raise NoServerError(pool.unservable_reason(model))
        return cast(Server, s)  # the dispatcher's members are the pool's records

    async def load_support(self, model: str) -> dict[str, Any]:
        """The model's ModelInfo support flags (asked once, through the cache); empty, and asked
        again next time, when there is no usable answer: the server checks then."""
        ans, _ = await self.get("ModelInfo", model, b"{}", orjson.dumps({"name": model}))
        try:
            support = orjson.loads(ans[2])["support"] if ans[0] == 200 else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            support = None
        if not isinstance(support, dict):
            return {}
        self.support[model] = support
        return support

    async def sizes(self, model: str, config: Any, ckey: bytes, op: str) -> tuple[Sizes | None, Sizes | None]:
        """The model's input (and, for derivatives, output) sizes for this config, parsed once."""
        key = (model, ckey)
        ins = self.in_sizes.get(key)
        body = b""
        if ins is None:
            body = orjson.dumps({"name": model, "config": config})
            ans, _ = await self.get("InputSizes", model, ckey, body)
            if ans[0] != 200:
                return None, None
            ins = self.in_sizes[key] = orjson.loads(ans[2])["inputSizes"]
        if op == "Evaluate":
            return ins, None
        outs = self.out_sizes.get(key)
        if outs is None:
            body = body or orjson.dumps({"name": model, "config": config})
            ans, _ = await self.get("OutputSizes", model, ckey, body)
            if ans[0] == 200:
                outs = self.out_sizes[key] = orjson.loads(ans[2])["outputSizes"]
        return ins, outs
