"""The HTTP front: Bitrix24 HANDLER posts in, ``intake`` calls to the daemon out.

The shim is stateless on purpose -- it can be restarted or run several times
-- so everything that needs state (the portal's application_token, dedupe,
the route) is decided by the daemon.  Per post the shim only parses, checks
what it can check without state, forwards, and answers 200 only after the
daemon has replied with a result, which it does only after COMMIT.

Answers (Bitrix24 ignores them, see reference/bitrix24.md §6; they are for
us, proxies and monitoring):

    401  URL key missing or wrong (checked first, so codes cannot be probed)
    404  unknown provider code
    413  body larger than ``max_body``
    400  missing/malformed field, form code != URL code, empty text
    403  the daemon refused the portal credentials
    503  the daemon did not answer (down, restarting, timeout)
    500  anything else
    200  stored: ``{"ok": true, "id", "status", "duplicate"}``

Deployment note: aiohttp's default access log prints the request line, which
contains ``?key=``; run this app with ``access_log=None`` (every post is
logged anyway: a refusal here, a stored message by the daemon's
``message_received``, and here too at debug level) or a format without ``%r``.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Collection, Mapping
from json.encoder import encode_basestring  # what json quotes strings with when ensure_ascii=False
from json.encoder import encode_basestring_ascii  # what json.dumps quotes strings with
from typing import Any

import structlog
from aiohttp import web

from shim.app_events import PATH as APP_EVENT_PATH
from shim.app_events import AppEventHandler
from shim.bitrix_form import FormError, HandlerPost, decode_form, parse_handler_post
from shim.body import BodyError, ClientGone, guard, read_bytes, read_form
from smppd import metrics
from smppd.phone import mask
from smppd.rpc import RpcClient, RpcError, RpcUnavailable

__all__ = ["make_app"]

log = structlog.get_logger(__name__)

HEALTH_TIMEOUT = 2.0
"""Seconds /healthz waits for the daemon: a probe must answer faster than
the load balancer gives up on it."""

# RpcError codes from intake that mean the caller, not we, got it wrong.
_CLIENT_ERRORS = {"forbidden": 403, "unknown_code": 404, "bad_request": 400}

# intake parameter -> the form field Bitrix24 sent it in, so a 400 names
# what the poster can recognise.
_FORM_FIELD = {"to": "message_to", "text": "message_body"}
_FIELD_PREFIX = re.compile(r"([a-z_]+): ")
_URLENCODED = "application/x-www-form-urlencoded"


def _refused_field(exc: RpcError) -> str | None:
    """The form field a daemon bad_request is about: ``exc.field``, or the
    ``"name: ..."`` prefix of its message, in the form's own naming."""
    name = exc.field
    if name is None:
        match = _FIELD_PREFIX.match(exc.message)
        name = match[1] if match else None
    return _FORM_FIELD.get(name, name) if name is not None else None


_INTAKE_JSON = (
    '{"member_id":%s,"domain":%s,"application_token":%s,"code":%s,"message_id":%s,"to":%s,"text":%s,'
    '"module_id":%s,"bindings":[%s],"ts":%s%s}'
)


def _json_text(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def _intake_json(post: HandlerPost) -> bytes:
    """The ``intake`` call's params for ``post``, encoded as the RPC client
    would encode them (``json`` with ``ensure_ascii=False`` and no spaces),
    byte for byte, written directly: the params dict and json's encoder
    were ~6 µs of every post, this is under 3.

    The params are ``member_id``, ``domain``, ``application_token`` (from the
    auth block, null when absent), ``code``, ``message_id``, ``to``,
    ``text``, ``module_id``, ``bindings`` (``owner_type_id``/``owner_id``
    objects), ``ts`` (null when absent) and, for a robot's post that names
    its CRM document instead of bindings (rules.py), ``document_id``.
    """
    auth = post.auth
    bindings = ",".join(['{"owner_type_id":%d,"owner_id":%d}' % binding for binding in post.bindings])
    document_id = (
        ',"document_id":[%s]' % ",".join([encode_basestring(part) for part in post.document_id])
        if post.document_id else ""
    )
    return (_INTAKE_JSON % (
        _json_text(auth.get("member_id")), _json_text(auth.get("domain")),
        _json_text(auth.get("application_token")), encode_basestring(post.code),
        encode_basestring(post.message_id), encode_basestring(post.message_to),
        encode_basestring(post.message_body), encode_basestring(post.module_id), bindings,
        "null" if post.ts is None else "%d" % post.ts, document_id,
    )).encode()


_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}  # as web.json_response sets it


def _json_response(status: int, body: Mapping[str, Any] | bytes) -> web.Response:
    """``web.json_response``'s answer, byte for byte, with the header given
    ready instead of worked out from a content type per answer."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return web.Response(body=body, status=status, headers=_JSON_HEADERS)


def _stored_body(result: Mapping[str, Any]) -> bytes:
    """The 200's JSON: ``json.dumps`` of ``{"ok": true, "id", "status",
    "duplicate"}``, formatted directly when the daemon's result has its
    usual types (an int, a str, a bool); json.dumps did a third of the
    answer's cost."""
    id_, status, duplicate = result["id"], result["status"], result["duplicate"]
    if type(id_) is int and type(status) is str and type(duplicate) is bool:
        return b'{"ok": true, "id": %d, "status": %s, "duplicate": %s}' % (
            id_, encode_basestring_ascii(status).encode(), b"true" if duplicate else b"false")
    return json.dumps({"ok": True, "id": id_, "status": status, "duplicate": duplicate}).encode()


class _Outcome(Exception):
    """Ends a post early with a JSON answer; ``outcome`` is the log word."""

    def __init__(self, status: int, outcome: str, body: Mapping[str, Any] | bytes) -> None:
        super().__init__(outcome)
        self.status = status
        self.outcome = outcome
        self.body = body


def _bad_request(field: str | None, message: str) -> _Outcome:
    body = {"error": "bad_request", "message": message}
    if field is not None:
        body["field"] = field
    return _Outcome(400, "bad_request", body)


class _PostLog:
    """What the ``bitrix24.post`` line says about a post, gathered as the
    post is read.  The number is kept as posted and masked in ``fields()``,
    the only way out of here to a log line, so the mask costs nothing for a
    post whose line is not written."""

    __slots__ = ("code", "message_id", "number")

    def __init__(self, code: str) -> None:
        self.code = code
        self.message_id: str | None = None
        self.number: str | None = None

    def __repr__(self) -> str:  # never the number
        return f"_PostLog(code={self.code!r}, message_id={self.message_id!r})"

    def fields(self) -> dict[str, Any]:
        if self.number is None:
            return {"code": self.code}
        return {"code": self.code, "message_id": self.message_id, "to": mask(self.number)}


def _debug_enabled() -> bool:
    """Whether ``log.debug`` writes anything (structlog's filtering loggers
    know; any other wrapper is taken to write it)."""
    try:
        return bool(log.is_enabled_for(logging.DEBUG))
    except AttributeError:
        return True


class BitrixHandler:
    """The request handlers, bound to one configuration and one RPC client."""

    def __init__(
        self, *, handler_key: str, codes: Collection[str], rpc: RpcClient, max_body: int
    ) -> None:
        if not handler_key:
            raise ValueError("handler_key must not be empty")
        self._key = handler_key.encode()
        self._codes = frozenset(codes)
        self._rpc = rpc
        self._max_body = max_body

    def reconfigure(self, *, handler_key: str, codes: Collection[str]) -> None:
        """SIGHUP: a new key or new provider CODEs apply to the next post."""
        if not handler_key:
            raise ValueError("handler_key must not be empty")
        self._key, self._codes = handler_key.encode(), frozenset(codes)

    async def post(self, request: web.Request) -> web.Response:
        """POST /bitrix24/{code}: one line of log per post, whatever happens.

        A stored post's line is at debug level: the daemon's
        ``message_received`` line carries the same ids, so at info level the
        shim logs only what the daemon never sees (refusals, failures).
        """
        ctx = _PostLog(request.match_info["code"][:128])
        started = time.monotonic()
        body: Mapping[str, Any] | bytes
        try:
            result = await self._accept(request, ctx)
            # a stored post, the usual answer, is not raised as an _Outcome
            status, outcome, body = 200, "duplicate" if result["duplicate"] else "stored", _stored_body(result)
        except _Outcome as exc:
            status, outcome, body = exc.status, exc.outcome, exc.body
        except Exception:
            log.exception("bitrix24.post_failed", **ctx.fields())
            status, outcome, body = 500, "internal", {"error": "internal"}
        metrics.shim_answered(status, outcome, time.monotonic() - started)
        if status >= 400:
            log.warning("bitrix24.post", **ctx.fields(), outcome=outcome, http_status=status)
        elif _debug_enabled():  # the number is masked only for a line that is written
            log.debug("bitrix24.post", **ctx.fields(), outcome=outcome, http_status=status)
        return _json_response(status, body)

    async def _accept(self, request: web.Request, ctx: _PostLog) -> Mapping[str, Any]:
        """The checks in their contractual order, then the intake call."""
        self._check_key(request)
        code = request.match_info["code"]
        if code not in self._codes:
            raise _Outcome(404, "unknown_code", {"error": "unknown_code"})
        post = await self._read_post(request)
        ctx.message_id, ctx.number = post.message_id, post.message_to
        if post.code != code:
            raise _bad_request("code", "form code does not match the URL")
        if not post.message_body.strip():
            raise _bad_request("message_body", "empty")
        return await self._intake(post)

    def _check_key(self, request: web.Request) -> None:
        key = request.query.get("key")
        # compare_digest on str refuses non-ASCII; compare bytes instead.
        if key is None or not hmac.compare_digest(key.encode(), self._key):
            raise _Outcome(401, "unauthorized", {"error": "unauthorized"})

    async def _read_post(self, request: web.Request) -> HandlerPost:
        length = request.content_length
        if length is not None and length > self._max_body:
            raise self._too_large()
        try:
            form = await self._read_form(request)
        except BodyError as exc:  # shim/body.py: the field at fault, never the bytes or the exception
            if isinstance(exc, ClientGone):
                raise _Outcome(400, "client_gone", exc.answer()) from None
            if exc.status == 413:
                raise self._too_large() from None
            raise _Outcome(exc.status, {400: "bad_request", 408: "timeout"}.get(exc.status, "unsupported"),
                           exc.answer()) from None
        except ValueError:  # the fast path's UTF-8 decoding
            raise _bad_request("body", "not UTF-8") from None
        try:
            return parse_handler_post(form)
        except FormError as exc:
            raise _bad_request(exc.field, exc.problem) from None

    def _too_large(self) -> _Outcome:
        # built when needed: an exception object and its body per post cost ~0.7 µs
        return _Outcome(413, "too_large", {"error": "too_large", "field": "body", "limit": self._max_body})

    @staticmethod
    async def _read_form(request: web.Request) -> Mapping[str, Any]:
        """The form as ``request.post()`` reads it.

        Bitrix24's own posts (urlencoded UTF-8, under aiohttp's field limit)
        are decoded by ``decode_form`` straight from the body, which skips
        aiohttp's MultiDict; anything else (multipart, another charset, too
        many fields, no form at all) goes to aiohttp, which reads the body
        already read and answers as it always did.
        """
        if request.content_type == _URLENCODED and request.charset in (None, "utf-8"):
            body = await read_bytes(request)
            limit = request.client_max_fields
            if limit <= 0 or body.count(b"&") < limit:
                return decode_form(body)
        return await read_form(request)

    async def _intake(self, post: HandlerPost) -> Mapping[str, Any]:
        try:
            result = await self._rpc.call("intake", _intake_json(post))
        except RpcUnavailable as exc:
            log.warning("bitrix24.daemon_unavailable", reason=str(exc))
            raise _Outcome(503, "unavailable", {"error": "unavailable"}) from None
        except RpcError as exc:
            raise self._refusal(exc) from None
        if not (isinstance(result, Mapping) and {"id", "status", "duplicate"} <= result.keys()):
            log.error("bitrix24.bad_intake_result", result_type=type(result).__name__)
            raise _Outcome(500, "internal", {"error": "internal"})
        return result

    @staticmethod
    def _refusal(exc: RpcError) -> _Outcome:
        status = _CLIENT_ERRORS.get(exc.code)
        if status is None:
            log.error("bitrix24.intake_failed", code=exc.code, message=exc.message)
            return _Outcome(500, "internal", {"error": "internal"})
        if status == 400:
            return _bad_request(_refused_field(exc), exc.message)
        if status == 403:  # do not tell a forger which check failed
            return _Outcome(403, "forbidden", {"error": "forbidden"})
        return _Outcome(status, exc.code, {"error": exc.code, "message": exc.message})

    async def healthz(self, request: web.Request) -> web.Response:
        """GET /healthz: the shim alone is useless, so health includes the daemon."""
        try:
            await self._rpc.call("ping", timeout=HEALTH_TIMEOUT)
        except RpcUnavailable:
            return _json_response(503, {"shim": "ok", "daemon": "unreachable"})
        except RpcError as exc:
            log.warning("healthz.ping_failed", code=exc.code)
            return _json_response(503, {"shim": "ok", "daemon": "error"})
        return _json_response(200, {"shim": "ok", "daemon": "ok"})


HANDLER = web.AppKey("handler", BitrixHandler)


def make_app(
    *,
    handler_key: str,
    codes: Collection[str],
    rpc: RpcClient,
    max_body: int = 64 * 1024,
    dlr_keys: Mapping[str, str] | None = None,
) -> web.Application:
    """Build the shim application.

    The caller owns ``rpc`` and closes it; the app never opens or closes it,
    so one client can serve the app for its whole life and across test apps.
    """
    handler = BitrixHandler(handler_key=handler_key, codes=codes, rpc=rpc, max_body=max_body)
    app = web.Application(client_max_size=max_body, middlewares=[guard])
    app.router.add_post("/bitrix24/{code}", handler.post)
    app.router.add_get("/healthz", handler.healthz)
    if dlr_keys:  # HTTP providers' delivery callbacks (shim/dlr.py)
        from shim.dlr import DlrHandler

        dlr = DlrHandler(keys=dlr_keys, rpc=rpc)
        app.router.add_route("POST", "/dlr/{route}", dlr.handle)
        app.router.add_route("GET", "/dlr/{route}", dlr.handle)
    app.router.add_post(APP_EVENT_PATH, AppEventHandler(handler_key=handler_key, rpc=rpc).post)
    app[HANDLER] = handler
    return app
