"""``POST /bitrix24-app?key=…``: the local app's event handler (install, update, uninstall).

Bitrix24 posts lifecycle events as the same kind of bracket-keyed form as HANDLER posts
(bitrix24.md §11). The shim checks the URL key (so nobody can make the daemon call out
without it), picks ``event`` and the ``auth[...]`` block, and forwards them; whether the
event is genuine is decided by the daemon (``smppd/bitrix24/install.py``), which holds
the portal table. Tokens travel only in the RPC call, never into a log line.

Answers: 403 address_not_allowed, 401 bad key (both from shim/auth.py), 400 malformed,
503 daemon unreachable, 200 stored (the daemon proves and applies the event in the
background, or refuses it there).
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from aiohttp import web

from shim.auth import Doors, error_response
from shim.body import read_form
from smppd.rpc import RpcClient, RpcError, RpcUnavailable

__all__ = ["AppEventHandler", "PATH"]

log = structlog.get_logger(__name__)

PATH = "/bitrix24-app"
_AUTH_KEY = re.compile(r"auth\[([a-z_]{1,64})\]")
_STATUS = {"bad_request": 400, "forbidden": 403, "unavailable": 503}


_EVENTS = frozenset({"ONAPPINSTALL", "ONAPPUPDATE", "ONAPPUNINSTALL"})
_DOMAIN = re.compile(r"[a-z0-9.-]{1,253}(:[0-9]{1,5})?")


def _loggable_event(event: object) -> str | None:
    """The event's name for a log line: one of Bitrix24's, else "other" (a client's arbitrary
    string never reaches a log)."""
    if not isinstance(event, str):
        return None
    return event.upper() if event.upper() in _EVENTS else "other"


def _loggable_domain(domain: str | None) -> str | None:
    """The portal's domain for a log line when it looks like a host name, else "invalid"."""
    if domain is None:
        return None
    return domain.lower() if _DOMAIN.fullmatch(domain.lower()) else "invalid"


class AppEventHandler:
    def __init__(self, *, doors: Doors, rpc: RpcClient) -> None:
        self._doors = doors
        self._rpc = rpc

    async def post(self, request: web.Request) -> web.Response:
        refusal = self._doors.check_bitrix24(request)  # the one door check (shim/auth.py)
        if refusal is not None:
            log.warning("bitrix24.app_event_post", outcome=refusal.error, http_status=refusal.status)
            return error_response(refusal)
        form = await read_form(request)  # a BodyError is answered by the guard (shim.body.guarded)
        auth = {}
        for name, value in form.items():
            match = _AUTH_KEY.fullmatch(name)
            if match and isinstance(value, str):
                auth[match[1]] = value
        event = form.get("event")
        ctx = {"event_name": _loggable_event(event), "domain": _loggable_domain(auth.get("domain"))}
        try:
            result = await self._rpc.call("app_event", {"event": event, "auth": auth})
        except RpcUnavailable:
            return self._answer(503, "unavailable", ctx)
        except RpcError as exc:
            status = _STATUS.get(exc.code, 500)
            return self._answer(status, exc.code if status != 500 else "internal", ctx,
                                exc.message if status == 400 else None)
        return self._answer(200, "ok", ctx, result=result)

    @staticmethod
    def _answer(status: int, outcome: str, ctx: dict[str, Any], message: str | None = None,
                result: Any = None) -> web.Response:
        (log.info if status < 400 else log.warning)("bitrix24.app_event_post", **ctx, outcome=outcome,
                                                      http_status=status)
        body: dict[str, Any] = {"ok": True, **result} if status == 200 and isinstance(result, dict) else {
            "error": outcome}
        if message:
            body["message"] = message
        return web.json_response(body, status=status)
