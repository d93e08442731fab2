"""``POST /dlr/{route}?key=…``: delivery callbacks of HTTP providers (SMS.ru, SMSC).

Like the Bitrix24 handler, the shim only checks what needs no state (the URL
key of that route) and forwards the form to the daemon's ``dlr`` method, which
knows the provider's format and signature.  The body the provider expects
(``100`` for SMS.ru, ``OK`` for SMSC) comes back from the daemon and is sent
only after the statuses are committed, so an answer means nothing is lost; a
daemon that is down gets 503 and the provider retries later.

    401  key missing or wrong, no such route, or a route without a callback_key
         (not told apart: no probing; the log line tells the admin which)
    400  the daemon could not read the callback
    403  the provider's signature does not match
    503  the daemon did not answer, or its store cannot write now (``unavailable``)
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from shim.auth import Doors, Refusal, error_response
from shim.body import read_form
from smppd.config import Config, SmscRouteConfig, SmsRuRouteConfig
from smppd.ops.logs import LinePacer
from smppd.rpc import RpcClient, RpcError, RpcUnavailable

log = structlog.get_logger(__name__)

REFUSAL_LOG_EVERY = 60.0
"""Seconds between two ``dlr.unauthorized`` lines of one route and reason: a flood of
forged callbacks is one line a minute with a count, not a line each."""


def dlr_keys(config: Config) -> dict[str, str]:
    """route name → the key its callback URL must carry: the route's own ``callback_key``.

    Never the shim's handler key, which every HANDLER post carries in its URL
    (issue 18): an HTTP route without a ``callback_key`` is left out, and its
    ``/dlr/`` door stays closed.
    """
    return {name: r.callback_key for name, r in config.routes.items()
            if isinstance(r, (SmsRuRouteConfig, SmscRouteConfig)) and r.callback_key}


class DlrHandler:
    def __init__(self, *, doors: Doors, rpc: RpcClient) -> None:
        self._doors = doors
        self._rpc = rpc
        self._refusals = LinePacer(REFUSAL_LOG_EVERY, max_keys=1000)  # per (route, reason); made-up routes bounded

    def _log_refusal(self, route: str) -> None:
        keyless = route in self._doors.config.keyless_routes
        reason = "no_callback_key" if keyless else "wrong_key"
        count = self._refusals.note((route, reason), time.monotonic())
        if count is None:
            return
        extra = {"hint": "this route has no callback_key, so its callback door is closed and its statuses come "
                         "by polling; set [route.NAME] callback_key and give the provider the URL "
                         "`smppd check-config --callback-urls` prints"} if keyless else {}
        log.warning("dlr.unauthorized", route=route, reason=reason, refused_since_last_line=count - 1, **extra)

    async def handle(self, request: web.Request) -> web.Response:
        route = request.match_info["route"][:64]
        refusal = self._doors.check_route(request, route)  # the one door check (shim/auth.py)
        if refusal is not None:
            self._log_refusal(route)
            return error_response(refusal)
        form = list((await read_form(request)).items())  # a BodyError is answered by the guard (shim.body.guarded)
        form += [(k, v) for k, v in request.query.items() if k != "key"]
        try:
            result = await self._rpc.call("dlr", {"route": route, "form": form})
        except RpcUnavailable as exc:
            log.warning("dlr.daemon_unavailable", route=route, reason=str(exc))
            return error_response(Refusal(503, "unavailable"))
        except RpcError as exc:
            status = {"bad_request": 400, "forbidden": 403, "unavailable": 503}.get(exc.code, 500)
            log.warning("dlr.refused", route=route, code=exc.code, message=exc.message)
            field = exc.field if status != 500 else None  # the daemon names the field (hash, data, id, ...)
            return error_response(Refusal(status, exc.code if status != 500 else "internal", field,
                                          exc.message if status != 500 else None))
        log.info("dlr.post", route=route, records=len(form))
        return web.Response(text=str(result.get("answer", "OK")))
