"""``POST /dlr/{route}?key=…``: delivery callbacks of HTTP providers (SMS.ru, SMSC).

Like the Bitrix24 handler, the shim only checks what needs no state (the URL
key of that route) and forwards the form to the daemon's ``dlr`` method, which
knows the provider's format and signature.  The body the provider expects
(``100`` for SMS.ru, ``OK`` for SMSC) comes back from the daemon and is sent
only after the statuses are committed, so an answer means nothing is lost; a
daemon that is down gets 503 and the provider retries later.

    401  key missing or wrong, or no such route (not told apart: no probing)
    400  the daemon could not read the callback
    403  the provider's signature does not match
    503  the daemon did not answer, or its store cannot write now (``unavailable``)
"""

from __future__ import annotations

import structlog
from aiohttp import web

from shim.auth import Doors, Refusal, error_response
from smppd.rpc import RpcClient, RpcError, RpcUnavailable

log = structlog.get_logger(__name__)

def dlr_keys(config: object) -> dict[str, str]:
    """route name → the key its callback URL must carry (per-route key, else the shim key)."""
    out = {}
    for name, r in getattr(config, "routes").items():
        if getattr(r, "kind", "smpp") in ("smsru", "smsc"):
            out[name] = getattr(r, "callback_key", "") or getattr(config, "shim").handler_key
    return out


class DlrHandler:
    def __init__(self, *, doors: Doors, rpc: RpcClient) -> None:
        self._doors = doors
        self._rpc = rpc

    async def handle(self, request: web.Request) -> web.Response:
        route = request.match_info["route"][:64]
        refusal = self._doors.check_route(request, route)  # the one door check (shim/auth.py)
        if refusal is not None:
            log.warning("dlr.unauthorized", route=route)
            return error_response(refusal)
        try:
            form = [(k, str(v)) for k, v in (await request.post()).items()]
        except (ValueError, web.HTTPRequestEntityTooLarge):
            return error_response(Refusal(400, "bad_request", None, "unreadable form"))
        form += [(k, v) for k, v in request.query.items() if k != "key"]
        try:
            result = await self._rpc.call("dlr", {"route": route, "form": form})
        except RpcUnavailable as exc:
            log.warning("dlr.daemon_unavailable", route=route, reason=str(exc))
            return error_response(Refusal(503, "unavailable"))
        except RpcError as exc:
            status = {"bad_request": 400, "forbidden": 403, "unavailable": 503}.get(exc.code, 500)
            log.warning("dlr.refused", route=route, code=exc.code, message=exc.message)
            field = exc.field or ("hash" if exc.code == "forbidden" else None)
            return error_response(Refusal(status, exc.code if status != 500 else "internal", field,
                                          exc.message if status != 500 else None))
        log.info("dlr.post", route=route, records=len(form))
        return web.Response(text=str(result.get("answer", "OK")))
