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
    503  the daemon did not answer
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

import structlog
from aiohttp import web

from shim.body import read_form
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
    def __init__(self, *, keys: Mapping[str, str], rpc: RpcClient) -> None:
        self._keys = {route: key.encode() for route, key in keys.items()}
        self._rpc = rpc

    async def handle(self, request: web.Request) -> web.Response:
        route = request.match_info["route"][:64]
        expected = self._keys.get(route)
        key = request.query.get("key")
        if expected is None or key is None or not hmac.compare_digest(key.encode(), expected):
            log.warning("dlr.unauthorized", route=route)
            return web.Response(status=401, text="unauthorized")
        form = list((await read_form(request)).items())  # a BodyError is answered by shim.body.guard
        form += [(k, v) for k, v in request.query.items() if k != "key"]
        try:
            result = await self._rpc.call("dlr", {"route": route, "form": form})
        except RpcUnavailable as exc:
            log.warning("dlr.daemon_unavailable", route=route, reason=str(exc))
            return web.Response(status=503, text="unavailable")
        except RpcError as exc:
            status = {"bad_request": 400, "forbidden": 403}.get(exc.code, 500)
            log.warning("dlr.refused", route=route, code=exc.code, message=exc.message)
            return web.Response(status=status, text=exc.code)
        log.info("dlr.post", route=route, records=len(form))
        return web.Response(text=str(result.get("answer", "OK")))
