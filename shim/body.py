"""Reading a request's body for every door of the shim, refusing what is malformed first.

Bitrix24, SMS.ru and SMSC.ru post forms (urlencoded, SMS.ru sometimes multipart). Anything
else -- a charset no codec knows, a Content-Encoding aiohttp cannot undo, a gzip body that
does not inflate, a file where a text field belongs, a client that hangs up mid-body -- is
the client's fault and must end in a 400/413/415 that names the field, never a 500, a
traceback or an echo of the bytes received (a body carries numbers, texts and tokens).

``add_routes`` puts every route behind the guard: it checks the headers before the handler
runs (cheap, no body read) and turns a ``BodyError`` raised while a handler reads the body into
its answer. The handlers read bodies only through ``read_bytes`` and ``read_form``, so every
door has the same limits and the same answers.

The guard wraps each handler where its route is registered rather than being an aiohttp
middleware: aiohttp runs a middleware under a wrapper of its own (``current_app`` set and
restored), two more coroutine layers for every request, a few µs of every post. A middleware also
saw the requests no route matched; here ``add_routes`` registers the guard's own 405 (another
method on a path of the app) and 404 (any other path), so those meet the guard too (the edge's
header deadline needs every request's start and end, shim/edge.py).
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import re
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import BodyPartReader, web
from multidict import MultiDict, MultiDictProxy

from shim import edge
from smppd.ops.logs import RepeatLimiter

__all__ = ["BodyError", "ClientGone", "Handler", "add_routes", "guarded", "read_bytes", "read_form"]

log = structlog.get_logger(__name__)

FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
"""Content-Encodings aiohttp undoes without optional packages (zlib is in the standard library)."""

MAX_FIELDS = 1000
"""Most fields one multipart form may carry (a HANDLER post has ~25)."""

BODY_TIMEOUT = 10.0
"""Seconds a request's whole body may take once its headers are in (Bitrix24 posts a few kB at
once); a slower client holds a connection and a handler for nothing. The headers' own deadline
is in ``shim.edge``."""

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,31}(\[[A-Za-z0-9_]{0,32}\]){0,3}")

_ERROR_WORD = {400: "bad_request", 408: "timeout", 413: "too_large", 415: "unsupported_media_type"}


class BodyError(Exception):
    """The request's body (or a header about it) cannot be read; ``field`` names the culprit."""

    def __init__(self, status: int, field: str, problem: str) -> None:
        # a form's own field names come from the client: named back only when they look like a
        # form key (``auth[domain]``), never as arbitrary bytes (a number, a text, a token)
        field = field if _FIELD_NAME.fullmatch(field) else "(a field name)"
        super().__init__(f"{field}: {problem}")
        self.status = status
        self.field = field
        self.problem = problem

    def answer(self) -> dict[str, str]:
        """The JSON body: fixed words and the field's name, never anything the client sent
        (a field name comes from a fixed list or from the form's own keys, shortened)."""
        return {"error": _ERROR_WORD.get(self.status, "bad_request"), "field": self.field,
                "message": self.problem}


class ClientGone(BodyError):
    """The client hung up before its body arrived: nobody is left to answer."""

    def __init__(self) -> None:
        super().__init__(400, "body", "client disconnected before the body was complete")


def _known_charset(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def check_headers(request: web.BaseRequest) -> BodyError | None:
    """What is wrong with the headers describing the body, before any of it is read."""
    if not request.body_exists:
        return None
    headers = request.headers
    if request.content_type == "application/x-www-form-urlencoded" and request.charset is None \
            and "Content-Encoding" not in headers:  # Bitrix24's own posts: nothing else to look at
        return None
    if "Content-Type" in headers and request.content_type not in FORM_TYPES:
        return BodyError(415, "Content-Type", "must be application/x-www-form-urlencoded or multipart/form-data")
    charset = request.charset
    if charset is not None and not _known_charset(charset):
        return BodyError(415, "charset", "unknown charset")
    encoding = headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        return BodyError(415, "Content-Encoding", "must be gzip, deflate or identity")
    return None


def _payload_error(exc: BaseException) -> BodyError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return BodyError(413, "body", "too large")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
        return ClientGone()
    if isinstance(exc, web.RequestPayloadError) and "encoding" in str(exc).lower():
        return BodyError(400, "Content-Encoding", "the body does not decode")
    return BodyError(400, "body", "unreadable")


async def read_bytes(request: web.BaseRequest) -> bytes:
    """The whole (decompressed) body, at most the app's ``client_max_size``."""
    try:
        if request.content.is_eof():  # all of it arrived with the headers (a post of a few kB): no wait
            return await request.read()
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except TimeoutError:
        raise BodyError(408, "body", "not received in time") from None
    except (web.HTTPRequestEntityTooLarge, web.RequestPayloadError, ConnectionResetError,
            ConnectionAbortedError) as exc:
        raise _payload_error(exc) from None


async def read_form(request: web.BaseRequest) -> MultiDictProxy[str]:
    """The form's fields, every value text; a file field, a nested multipart or a body that does
    not decode is a ``BodyError``. Multipart is read part by part so a file is refused from its
    headers, before its content is read or written anywhere."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            if request.content_type == "multipart/form-data":
                return await _read_multipart(request)
            form = await request.post()
    except TimeoutError:
        raise BodyError(408, "body", "not received in time") from None
    except (web.HTTPRequestEntityTooLarge, web.RequestPayloadError, ConnectionResetError,
            ConnectionAbortedError) as exc:
        raise _payload_error(exc) from None
    except (ValueError, LookupError):  # undecodable text, a charset the codec refuses mid-way
        raise BodyError(400, "body", "not a form in its charset") from None
    out: MultiDict[str] = MultiDict()
    for name, value in form.items():
        if not isinstance(value, str):
            raise BodyError(400, name, "must be a text field, not a file")
        out.add(name, value)
    return MultiDictProxy(out)


async def _read_multipart(request: web.BaseRequest) -> MultiDictProxy[str]:
    limit = request.client_max_size
    size = 0
    out: MultiDict[str] = MultiDict()
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BodyError(400, "body", "nested multipart is not a form field")
            name = part.name
            if name is None:
                raise BodyError(400, "body", "a part without a field name")
            if part.filename is not None:
                raise BodyError(400, name, "must be a text field, not a file")
            if len(out) >= MAX_FIELDS:
                raise BodyError(413, "body", "too many fields")
            raw = bytearray()
            while chunk := await part.read_chunk():
                size += len(chunk)
                if limit and size > limit:
                    raise BodyError(413, "body", "too large")
                raw += chunk
            charset = part.get_charset(default=request.charset or "utf-8")
            if not _known_charset(charset):
                raise BodyError(415, name, "unknown charset")
            try:
                out.add(name, part.decode(bytes(raw)).decode(charset))
            except (ValueError, RuntimeError):  # bad transfer encoding, undecodable text
                raise BodyError(400, name, "does not decode") from None
    except BodyError:
        raise
    except (web.RequestPayloadError, ConnectionResetError, ConnectionAbortedError) as exc:
        raise _payload_error(exc) from None
    except Exception:  # noqa: BLE001 -- whatever aiohttp's multipart parser raises (InvalidHeader for a NUL
        # in a part's header, ValueError, AssertionError...) is about the client's bytes, never ours
        raise BodyError(400, "body", "not a multipart form") from None
    return MultiDictProxy(out)


def error_response(exc: BodyError) -> web.Response:
    return web.json_response(exc.answer(), status=exc.status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_lines = RepeatLimiter(burst=10, window=60.0)
"""Refusals here are info lines (the client's fault), so the logging set-up does not limit
them; a fuzzer or a broken client sending thousands must not write thousands."""


def _log_refused(event: str, request: web.Request, **fields: object) -> None:
    write, left_out = _lines.admit(event, time.monotonic())
    if write:
        log.info(event, path=request.rel_url.path[:64], **fields, **({"repeated": left_out} if left_out else {}))


def _closing_if_unread(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """``Connection: close`` on an answer given before the body was read to its end (a 401
    before the form, a 415 from the headers, a body that would not decode): aiohttp closes
    such a connection after the answer, and a client told so does not send its next request
    into a closing socket."""
    if request.body_exists and not request.content.at_eof():
        response.force_close()
    return response


def guarded(handler: Handler) -> Handler:
    """``handler`` behind the guard: bad body headers refused before it runs, a ``BodyError`` it
    raises answered, and the connection's guard (``shim.edge``) told when the request starts and
    ends. One wrapper for all of it, as each coroutine layer costs every post a few tenths of a µs.

    A client that hung up mid-body gets one info line and no traceback: it is not our error,
    and there is nobody to answer.
    """

    @functools.wraps(handler)
    async def guard(request: web.Request) -> web.StreamResponse:
        connection = edge.request_started(request)  # the header deadline is met (shim/edge.py)
        try:
            problem = check_headers(request)
            if problem is not None:
                _log_refused("http.refused", request, http_status=problem.status, field=problem.field)
                return _closing_if_unread(request, error_response(problem))
            try:
                return _closing_if_unread(request, await handler(request))
            except ClientGone:
                _log_refused("http.client_gone", request)
                return _closing_if_unread(request, error_response(ClientGone()))
            except BodyError as exc:
                _log_refused("http.refused", request, http_status=exc.status, field=exc.field)
                return _closing_if_unread(request, error_response(exc))
        finally:
            if connection is not None:
                connection.request_ended()

    return guard


def _method_not_allowed(allowed: frozenset[str]) -> Handler:
    async def method_not_allowed(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)  # aiohttp's own 405, Allow header and all

    return method_not_allowed


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()  # aiohttp's own 404


def add_routes(router: web.UrlDispatcher, routes: Iterable[tuple[str, str, Handler]]) -> None:
    """Register ``(method, path, handler)`` routes, each ``guarded``, then the guard's answers for
    every other request: 405 for another method on one of these paths, 404 for any other path.

    aiohttp answers those two itself, before any handler, so without them a request for an
    unknown path would never tell the edge it started, and the header deadline armed by its
    first byte would cut a kept-alive connection that carried on after the 404. The router
    looks for the longest matching path first, so the catch-all ``/{tail}`` is reached only when
    nothing else matched, and routes added later still take precedence over it.
    """
    methods: dict[str, set[str]] = {}
    for method, path, handler in routes:
        router.add_route(method, path, guarded(handler))
        methods.setdefault(path, set()).add(method)
    for path, allowed in methods.items():
        router.add_route("*", path, guarded(_method_not_allowed(frozenset(allowed))))
    router.add_route("*", "/{tail:.*}", guarded(_not_found))
