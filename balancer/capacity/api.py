"""``/api/forecast``: the owner reads the forecast, switches it off and on, overrides it.

GET shows the forecast and why it is (not) in use; PUT takes ``{"enabled": bool}`` and/or
``{"override": {"idle_cpus": N, "idle_gpus": N, "expires_in_s": S | "expires_at": EPOCH,
"reason": "..."}}``; DELETE drops the override. Token required on all three (the forecast tells
when the cluster is idle, the switches change how the pool grows); every change is journaled by
the service. The forecast is of capacity = idle + ours (what a job of ours could use); an override
gives idle CPUs as the owner sees them and the view adds what our pool holds, so ``idle_cpus: 0``
means "start nothing more", never "stop what runs". Bad bodies get a 400 in UM-Bridge's error
shape, naming what is wrong.
"""

from __future__ import annotations

from typing import Any

import orjson

from balancer.capacity.service import MAX_OVERRIDE_S, ForecastService, Override
from balancer.http.messages import Reply, Request, clip, error_reply, json_reply

_UNAUTHORIZED = ("Unauthorized", "missing or wrong balancer token", 401)
_OVERRIDE_KEYS = {"idle_cpus", "idle_gpus", "expires_in_s", "expires_at", "reason"}


class BadRequest(ValueError):
    pass


class ForecastApi:
    def __init__(self, service: ForecastService, authorized: Any) -> None:
        self.service = service
        self.authorized = authorized  # Control.authorized(request) -> bool (journals refusals)

    async def get(self, request: Request) -> Reply:
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        return json_reply(self.service.status())

    async def put(self, request: Request) -> Reply:
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        try:
            enabled, override = parse_put(request.body or b"", self.service.wall())
        except BadRequest as exc:
            return error_reply("InvalidInput", str(exc), 400)
        if enabled is not None:
            self.service.set_enabled(enabled)
        if override is not None:
            self.service.set_override(override)
        return json_reply(self.service.status())

    async def delete(self, request: Request) -> Reply:
        if not self.authorized(request):
            return error_reply(*_UNAUTHORIZED)
        had = self.service.clear_override()
        return json_reply({**self.service.status(), "cleared": had})


def parse_put(body: bytes, now: float) -> tuple[bool | None, Override | None]:
    try:
        doc = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise BadRequest('expected a JSON object with "enabled" and/or "override"')
    unknown = set(doc) - {"enabled", "override"}
    if unknown:
        raise BadRequest(f"unknown key(s) {clip(', '.join(sorted(unknown)))} (known: enabled, override)")
    enabled = doc.get("enabled")
    if "enabled" in doc and not isinstance(enabled, bool):
        raise BadRequest(f'"enabled" must be true or false, got {clip(repr(enabled))}')
    override = None
    if "override" in doc:
        override = _override(doc["override"], now)
    return enabled, override


def _number(doc: dict[str, Any], key: str, required: bool = False) -> float | None:
    v = doc.get(key)
    if v is None:
        if required:
            raise BadRequest(f'override: "{key}" is required')
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise BadRequest(f'override: "{key}" must be a number, got {clip(repr(v))}')
    if v < 0:
        raise BadRequest(f'override: "{key}" must be >= 0, got {clip(repr(v))}')
    return float(v)


def _override(doc: Any, now: float) -> Override:
    if not isinstance(doc, dict):
        raise BadRequest('"override" must be an object such as {"idle_cpus": 0, "expires_in_s": 3600}')
    unknown = set(doc) - _OVERRIDE_KEYS
    if unknown:
        raise BadRequest(f"override: unknown key(s) {clip(', '.join(sorted(unknown)))} "
                         f"(known: {', '.join(sorted(_OVERRIDE_KEYS))})")  # fmt: skip
    cpus = _number(doc, "idle_cpus", required=True)
    gpus = _number(doc, "idle_gpus")
    if ("expires_in_s" in doc) == ("expires_at" in doc):
        raise BadRequest('override: give exactly one of "expires_in_s" or "expires_at"')
    if "expires_in_s" in doc:
        ttl = _number(doc, "expires_in_s", required=True)
        assert ttl is not None
        expires = now + ttl
    else:
        at = _number(doc, "expires_at", required=True)
        assert at is not None
        expires = at
    if expires <= now:
        raise BadRequest("override: the expiry is not in the future")
    if expires - now > MAX_OVERRIDE_S:
        raise BadRequest(f"override: expires more than {MAX_OVERRIDE_S / 86400:g} days ahead")
    reason = doc.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise BadRequest('override: "reason" must be a string of at most 500 characters')
    assert cpus is not None
    return Override(cpus, expires, gpus, reason)
