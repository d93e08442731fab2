"""The HTTP front: Bitrix24 HANDLER posts in, ``intake`` calls to the daemon out.

The shim keeps no state but its spool (shim/spool.py) -- it can be restarted
or run several times, each with its own spool -- so everything that needs
state (the portal's application_token, dedupe, the route) is decided by the
daemon.  Per post the shim only parses, checks what it can check without
state, forwards, and answers 200 only after the daemon has replied with a
result, which it does only after COMMIT, or after the spool has fsynced the
post because the daemon did not answer in time.

Answers (Bitrix24 ignores them, see reference/bitrix24.md §6; they are for
us, proxies and monitoring):

    403  the peer is not on ``[shim] allow_from`` (checked before anything else)
    401  URL key missing or wrong (checked first, so codes cannot be probed)
    404  unknown provider code
    413  body larger than ``max_body``
    400  missing/malformed field, form code != URL code, empty text, no ``ts``
    403  ``ts`` outside ``[shim] ts_window`` ("stale"), or the daemon refused
         the portal credentials ("forbidden")
    503  the daemon did not answer (or answered ``unavailable``: a full disk) and
         the spool could not keep the post (full, or its disk failed); without a
         spool: the daemon did not answer or answered ``unavailable``
    500  anything else
    200  stored: ``{"ok": true, "id", "status", "duplicate"}``, or kept in
         the spool (shim/spool.py) because the daemon did not commit within
         ``shim.spool_after`` or answered "unavailable":
         ``{"ok": true, "id": null, "status": "spooled", "duplicate": false}``

A post whose body was read is stored or spooled even when the client goes
away before the answer: that step runs in a task of its own, shielded from
aiohttp's handler cancellation, and the shim waits for such tasks on stop.

Deployment note: aiohttp's default access log prints the request line, which
contains ``?key=``; run this app with ``access_log=None`` (every post is
logged anyway: a refusal here, a stored message by the daemon's
``message_received``, and here too at debug level) or a format without ``%r``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from dataclasses import replace
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web

from shim.app_events import PATH as APP_EVENT_PATH
from shim.app_events import AppEventHandler
from shim.auth import DoorConfig, Doors, Refusal, ts_fresh
from shim.dlr import DlrHandler
from shim.bitrix_form import FormError, HandlerPost, decode_form, parse_handler_post
from shim.body import BodyError, ClientGone, add_routes, read_bytes, read_form
from smppd.config import ShimConfig
from smppd.ops import metrics
from smppd.phone import mask
from smppd.rpc import RpcClient, RpcError, RpcUnavailable

from .spool import Spool, SpoolError, spooled_params

__all__ = ["make_app"]

log = structlog.get_logger(__name__)

HEALTH_TIMEOUT = 2.0
"""Seconds /healthz waits for the daemon: a probe must answer faster than
the load balancer gives up on it."""

# RpcError codes from intake that mean the caller, not we, got it wrong.
_CLIENT_ERRORS = {"forbidden": 403, "unknown_code": 404, "bad_request": 400}

# intake parameter -> the form field Bitrix24 sent it in, so a 400 names
# what the poster can recognise.
_FORM_FIELD = {"b24_id": "message_id", "to": "message_to", "text": "message_body"}
_FIELD_PREFIX = re.compile(r"([a-z][a-z0-9_]*): ")
_URLENCODED = "application/x-www-form-urlencoded"


def _refused_field(exc: RpcError) -> str | None:
    """The form field a daemon bad_request is about: ``exc.field``, or the
    ``"name: ..."`` prefix of its message, in the form's own naming."""
    name = exc.field
    if name is None:
        match = _FIELD_PREFIX.match(exc.message)
        name = match[1] if match else None
    return _FORM_FIELD.get(name, name) if name is not None else None


def _intake_json(post: HandlerPost) -> bytes:
    """The ``intake`` call's params for ``post``, as the bytes the RPC client
    sends and the spool keeps: UTF-8 JSON without spaces, as the RPC client
    encodes params, written by orjson (~0.5 µs; json's encoder took ~3).
    orjson refuses ints beyond 64 bits and lone surrogates; the form parser
    lets neither through (integers of at most 18 digits, strict UTF-8).

    The params are ``member_id``, ``domain``, ``application_token``, ``access_token`` (from
    the auth block, null when absent; the access token lets the daemon recover a missed
    app update, intake.py), ``code``, ``b24_id``, ``to``,
    ``text``, ``module_id``, ``bindings`` (``owner_type_id``/``owner_id``
    objects), ``ts`` (null when absent) and, for a robot's post that names
    its CRM document instead of bindings (rules.py), ``document_id``.
    """
    auth = post.auth
    params: dict[str, Any] = {
        "member_id": auth.get("member_id"),
        "domain": auth.get("domain"),
        "application_token": auth.get("application_token"),
        "access_token": auth.get("access_token"),
        "code": post.code,
        "b24_id": post.b24_id,
        "to": post.message_to,
        "text": post.message_body,
        "module_id": post.module_id,
        "bindings": [{"owner_type_id": type_id, "owner_id": owner_id} for type_id, owner_id in post.bindings],
        "ts": post.ts,
    }
    if post.document_id:
        params["document_id"] = list(post.document_id)
    return orjson.dumps(params)


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
            id_, json.dumps(status).encode(), b"true" if duplicate else b"false")
    return json.dumps({"ok": True, "id": id_, "status": status, "duplicate": duplicate}).encode()


_SPOOLED: Mapping[str, Any] = {"id": None, "status": "spooled", "duplicate": False}


_RESULT_KEYS = frozenset({"id", "status", "duplicate"})


def _is_intake_result(result: Any) -> bool:
    # the RPC's JSON gives a dict: checked first, as isinstance against the Mapping ABC is slow (0.34 -> 0.20 µs)
    return (type(result) is dict or isinstance(result, Mapping)) and result.keys() >= _RESULT_KEYS


def _stored_outcome(result: Mapping[str, Any]) -> str:
    if result is _SPOOLED:
        return "spooled"
    return "duplicate" if result["duplicate"] else "stored"


class _Outcome(Exception):
    """Ends a post early with a JSON answer; ``outcome`` is the log word."""

    def __init__(self, status: int, outcome: str, body: Mapping[str, Any] | bytes) -> None:
        super().__init__(outcome)
        self.status = status
        self.outcome = outcome
        self.body = body


def _refused(refusal: Refusal) -> _Outcome:
    return _Outcome(refusal.status, refusal.error, refusal.body())


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

    __slots__ = ("code", "b24_id", "number")

    def __init__(self, code: str) -> None:
        self.code = code
        self.b24_id: str | None = None
        self.number: str | None = None

    def __repr__(self) -> str:  # never the number
        return f"_PostLog(code={self.code!r}, b24_id={self.b24_id!r})"

    def fields(self) -> dict[str, Any]:
        if self.number is None:
            return {"code": self.code}
        return {"code": self.code, "b24_id": self.b24_id, "to": mask(self.number)}


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
        self, *, doors: Doors, codes: Collection[str], rpc: RpcClient, max_body: int,
        spool: Spool | None = None, spool_after: float = ShimConfig.spool_after,
    ) -> None:
        self._doors = doors
        self._codes = frozenset(codes)
        self._rpc = rpc
        self._max_body = max_body
        self._spool = spool
        self._spool_after = spool_after
        self._storing: dict[asyncio.Task[None], asyncio.Future[Mapping[str, Any]]] = {}  # post being stored -> its handler's waiter
        self._closing = False

    def reconfigure(self, *, codes: Collection[str], handler_key: str | None = None) -> None:
        """SIGHUP: new provider CODEs apply to the next post.  The keys live in
        the shared ``Doors`` (rotate that); ``handler_key`` is kept for callers
        that rotate the Bitrix24 key only."""
        if handler_key is not None:
            self._doors.rotate(replace(self._doors.config, handler_key=handler_key))
        self._codes = frozenset(codes)

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
            status, outcome, body = 200, _stored_outcome(result), _stored_body(result)
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
        response = _json_response(status, body)
        if self._closing:  # the shim is stopping: the client must not send its next post here
            response.force_close()
        return response

    async def _accept(self, request: web.Request, ctx: _PostLog) -> Mapping[str, Any]:
        """The checks in their contractual order, then the intake call."""
        refusal = self._doors.check_bitrix24(request)
        if refusal is not None:
            raise _refused(refusal)
        code = request.match_info["code"]
        if code not in self._codes:
            raise _Outcome(404, "unknown_code", {"error": "unknown_code"})
        post = await self._read_post(request)
        ctx.b24_id, ctx.number = post.b24_id, post.message_to
        if post.code != code:
            raise _bad_request("code", "form code does not match the URL")
        if not post.message_body.strip():
            raise _bad_request("message_body", "empty")
        refusal = ts_fresh(post.ts, time.time(), self._doors.ts_window)
        if refusal is not None:  # a replay or a forgery: Bitrix24 posts within seconds
            raise _refused(refusal)
        # From here the post is ours: a client that goes away must not cancel it. The store
        # runs in a task of its own and settles ``waiter``, which is all this handler awaits:
        # cancelling the handler cancels the waiter, never the task (asyncio.shield's guarantee,
        # without its extra future and two callback hops: ~3 µs of every post).
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Mapping[str, Any]] = loop.create_future()
        self._storing[loop.create_task(self._settle(post, waiter))] = waiter
        return await waiter

    async def _settle(self, post: HandlerPost, waiter: asyncio.Future[Mapping[str, Any]]) -> None:
        """``_store``'s outcome into ``waiter``, unless the handler has gone (its waiter
        cancelled): the outcome then has nobody to go to, as with a shielded task whose
        awaiter was cancelled. It leaves ``_storing`` itself, not in a done callback (one more
        trip through the loop per post); ``drain`` settles a task cancelled before its first step."""
        try:
            result = await self._store(post)
        except Exception as exc:  # an _Outcome (a refusal, a 503) or a bug: the handler answers it
            if not waiter.done():
                waiter.set_exception(exc)
        else:
            if not waiter.done():
                waiter.set_result(result)
        finally:
            self._storing.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if not waiter.done():  # the task was cancelled (the loop stopping) before it settled
                waiter.cancel()

    def closing(self) -> None:
        """The shim is stopping: answers from now on close their connection."""
        self._closing = True

    async def drain(self) -> None:
        """Wait for the posts being stored or spooled (their clients may be gone)."""
        while self._storing:
            await asyncio.gather(*[task for task in self._storing if not task.done()], return_exceptions=True)
            for task in [task for task in self._storing if task.done()]:  # cancelled before their first step
                if not (waiter := self._storing.pop(task)).done():
                    waiter.cancel()

    async def _store(self, post: HandlerPost) -> Mapping[str, Any]:
        """The daemon commits the post in time, or the spool keeps it."""
        if self._spool is None:
            return await self._intake(post)
        params = _intake_json(post)
        try:
            result = await self._rpc.call("intake", params, timeout=self._spool_after)
        except RpcUnavailable:
            pass  # no answer in time: down, restarting, stopped or slow
        except RpcError as exc:
            if exc.code in _CLIENT_ERRORS:  # the post is wrong: spooling would not make it right
                raise self._refusal(exc) from None
            # "unavailable"/"storage full"/"internal": the daemon cannot keep it now
        else:
            if _is_intake_result(result):
                return result
            log.error("bitrix24.bad_intake_result", result_type=type(result).__name__)
        try:
            await self._spool.append(params)
        except SpoolError as exc:
            log.error("bitrix24.spool_refused", reason=str(exc), b24_id=post.b24_id, code=post.code)
            raise _Outcome(503, "unavailable", {"error": "unavailable"}) from None
        return _SPOOLED

    async def replay(self, batch: list[bytes]) -> list[bool]:
        """The spool's sender: True for each post the daemon is done with."""
        outcomes = await asyncio.gather(*(self._rpc.call("intake", spooled_params(params)) for params in batch),
                                        return_exceptions=True)
        done = []
        for outcome in outcomes:
            if isinstance(outcome, RpcError) and outcome.code in _CLIENT_ERRORS:
                log.warning("bitrix24.spooled_post_refused", code=outcome.code, message=outcome.message)
                done.append(True)
            else:
                done.append(not isinstance(outcome, BaseException) and _is_intake_result(outcome))
        return done

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
            if exc.code == "unavailable":  # the daemon cannot store now (a full disk): as if it were down
                raise _Outcome(503, "unavailable", {"error": "unavailable"}) from None
            raise self._refusal(exc) from None
        if not _is_intake_result(result):
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
DOORS = web.AppKey("doors", Doors)


async def _spooling(handler: BitrixHandler, spool: Spool, app: web.Application) -> AsyncIterator[None]:
    """The spool's life: open (replaying what a previous run left), forward
    in the background, and on stop let the posts under way finish first."""
    spool.open()
    replay = asyncio.create_task(spool.replay(handler.replay), name="spool-replay")
    try:
        yield
    finally:
        await handler.drain()
        replay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replay
        await spool.close()


def make_app(
    *,
    handler_key: str,
    codes: Collection[str],
    rpc: RpcClient,
    max_body: int = 512 * 1024,  # a 50,000-character Cyrillic text (intake.MAX_TEXT) is ~300 KB as a form
    dlr_keys: Mapping[str, str] | None = None,
    doors: DoorConfig | None = None,
    spool: Spool | None = None,
    spool_after: float = ShimConfig.spool_after,
) -> web.Application:
    """Build the shim application.

    The caller owns ``rpc`` and closes it; the app never opens or closes it,
    so one client can serve the app for its whole life and across test apps.
    ``doors`` (``DoorConfig.from_config``) carries the address list and ``ts``
    window too; without it only the keys are checked.
    ``spool``, when given, is opened with the app and closed after it, with
    its replay task running in between.
    """
    gate = Doors(doors or DoorConfig(handler_key=handler_key, route_keys=dict(dlr_keys or {})))
    handler = BitrixHandler(doors=gate, codes=codes, rpc=rpc, max_body=max_body,
                            spool=spool, spool_after=spool_after)
    app = web.Application(client_max_size=max_body)  # no middleware: the guard is on each route (shim/body.py)
    if spool is not None:
        app.cleanup_ctx.append(functools.partial(_spooling, handler, spool))
    # HTTP providers' delivery callbacks (shim/dlr.py) are always routed, so a
    # route added by SIGHUP is served, and an unknown one is a 401 like a bad key
    dlr = DlrHandler(doors=gate, rpc=rpc)
    add_routes(app.router, [("POST", "/bitrix24/{code}", handler.post),
                            ("GET", "/healthz", handler.healthz), ("HEAD", "/healthz", handler.healthz),
                            ("POST", "/dlr/{route}", dlr.handle), ("GET", "/dlr/{route}", dlr.handle),
                            ("POST", APP_EVENT_PATH, AppEventHandler(doors=gate, rpc=rpc).post)])
    app[HANDLER] = handler
    app[DOORS] = gate
    return app
