"""A simulated Bitrix24 portal (REST + OAuth server) on loopback, for the demo and the tests.

Why it exists: the daemon's only door to Bitrix24 is `rest.RestClient`. Code that passes
against this simulator must also work against the real cloud, so the simulator follows
the real wire format (``shared/reference/bitrix24.md`` and the Bitrix core 22.x sources it
cites), including the inconvenient parts:

* ``messageservice.message.status.update`` has **no monotonic guard**: a late ``sent``
  overwrites ``delivered``. Every change is kept in ``SimMessage.history`` so tests can
  detect backwards moves (`SimMessage.regressions`).
* ``batch`` answers HTTP 200 even when sub-calls fail; empty maps come back as JSON ``[]``
  (PHP arrays), and a map whose keys are ``0..n-1`` comes back as a JSON list.
* The rate limiter is a leaky bucket per portal; a ``batch`` counts as one request; an
  exceeded bucket answers 503 with the exact cloud body.
* Access tokens expire; refreshing **rotates** the refresh token (the old one becomes
  ``invalid_grant``).
* The OAuth server listens on its **own port** (like ``oauth.bitrix.info`` is its own host),
  so a client that derives the token URL from ``client_endpoint`` instead of
  ``server_endpoint`` fails here too.

CRM methods for ``smppd contacts`` (issue 16), from Bitrix24's REST docs (b24-rest-docs,
``api-reference/…``; each method below cites its page):

* ``crm.{contact,lead,company}.list`` (crm/contacts/crm-contact-list.md): pages of 50,
  ``start`` = offset, ``total`` and (when more rows match) ``next`` beside ``result``;
  ``select`` ``*`` leaves out user fields and multiple fields, ``UF_*`` is every user field,
  ``PHONE`` only when named; filter prefixes ``>``, ``>=``, ``<``, ``<=``, ``@``, ``!``.
  ``start=-1`` skips the count: ``total`` 0, no ``next``; page by ``order[ID]=ASC`` and
  ``filter[>ID]`` = the last id, stop at a short page (performance/huge-data.md).
* A multiple-field value is ``{ID, VALUE_TYPE, VALUE, TYPE_ID}`` with string ids;
  ``crm.*.update`` rewrites the value whose ``ID`` it names, removes it with ``DELETE=Y`` or
  an empty ``VALUE``, adds one without ``ID`` (crm/contacts/crm-contact-update.md, "Working
  with Multiple Fields"); ``result`` is ``true``; unknown id: HTTP 400, empty code, "Contact
  is not found"; unknown fields are ignored.
* ``crm.*.userfield.list``/``.add`` (crm/contacts/userfield/crm-contact-userfield-list.md,
  -add.md): administrators only; ``FIELD_NAME`` of ``A-Z0-9_``, ``UF_CRM_`` put in front,
  20 characters in all; ``USER_TYPE_ID`` required; errors HTTP 400 with an empty code and
  texts such as "The 'FIELD_NAME' field is not found."; ``add`` answers the new id.
* Inside ``batch`` a list command's ``next``/``total`` come in ``result_next``/``result_total``.

Deliberate simplifications (documented, not hidden): one app per portal, ``$result[...]``
back-references inside ``batch`` are not expanded, PHP's "." -> "_" key mangling is not
reproduced, the source IP is ignored by the rate bucket; CRM list filters know ID ranges and
exact matches only, and a duplicate user field's refusal text is inferred (not in the docs).

The parts: this module (the portal's state, its HTTP servers, the REST entry with its
rate limits and ``batch``), ``oauth`` (tokens and app events), ``messageservice`` (SMS
messages, senders), ``crm`` (CRM rows and methods), ``wire`` (PHP-shaped answers, errors).
"""

from __future__ import annotations

import collections
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal
from urllib.parse import parse_qsl

import structlog
from aiohttp import web

from .crm import CrmMethods
from .messageservice import STATUSES, MessageService, SimMessage
from .oauth import OAuthServer
from .wire import (
    _EXPIRED_BODY,
    _NO_AUTH_BODY,
    _OVERLOAD_BODY,
    _QUERY_LIMIT_BODY,
    BATCH_MAX_LENGTH,
    _ApiError,
    _iso,
    _json,
    _Paged,
    _php_bool,
    _php_parse,
    _read_params,
    _Token,
    _upper,
    encode_form,
)

log = structlog.get_logger(__name__)

_OPERATING_WINDOW = 600.0  # ten 1-minute buckets (bitrix24.md §8)


def _new_member_id() -> str:
    return secrets.token_hex(16)


def _new_client_id() -> str:
    return f"local.{secrets.token_hex(7)}.{secrets.randbelow(90_000_000) + 10_000_000}"


@dataclass
class SimulatedPortal(OAuthServer, MessageService, CrmMethods):
    """A Bitrix24 portal with one installed local app, served on loopback.

    ``rate=None`` disables the leaky bucket. ``allow_local_handler`` lets ``sender.add``
    accept loopback/LAN handlers (the cloud refuses them, bitrix24.md §2; tests need them).
    ``batch_overflow`` picks how >50 commands fail: ``"per_command"`` is what the core does
    (the first 50 run, the rest get ``ERROR_BATCH_LENGTH_EXCEEDED`` in ``result_error``,
    HTTP 200); ``"http_400"`` is what the docs' error table says (whole call, HTTP 400).
    """

    member_id: str = field(default_factory=_new_member_id)
    domain: str = "demo.bitrix24.by"
    client_id: str = field(default_factory=_new_client_id)
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    application_token: str = field(default_factory=lambda: secrets.token_hex(16))
    rate: float | None = 2.0
    burst: int = 50
    access_ttl: float = 3600.0
    refresh_ttl: float = 180 * 86400.0
    scope: str = "messageservice"
    admin_user_id: int = 1
    allow_local_handler: bool = True
    batch_overflow: Literal["per_command", "http_400"] = "per_command"

    # Test knobs and observable state.
    overloaded: bool = field(default=False, init=False)  # manual block by support -> 503 OVERLOAD_LIMIT
    # issue 14 item 11: a portal whose CRM reads answer with a permission error for good:
    # "ERROR_METHOD_NOT_FOUND" (no CRM on the portal) or "ACCESS_DENIED" (the app's user may
    # not read it); insufficient_scope comes from ``scope`` without "crm".
    crm_error: str | None = field(default=None, init=False)
    messages: dict[str, SimMessage] = field(default_factory=dict, init=False)
    purged: dict[str, SimMessage] = field(default_factory=dict, init=False)
    senders: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    app_version: int = field(default=1, init=False)
    installed: bool = field(default=True, init=False)
    requests: int = field(default=0, init=False)
    rejected_rate_limited: int = field(default=0, init=False)
    updates_applied: int = field(default=0, init=False)  # status.update calls that changed a status
    updates_noop: int = field(default=0, init=False)  # accepted status.update with the same status
    token_requests: int = field(default=0, init=False)
    refreshes: int = field(default=0, init=False)
    method_calls: collections.Counter[str] = field(default_factory=collections.Counter, init=False)
    access_token: str = field(default="", init=False)
    refresh_token: str = field(default="", init=False)
    # CRM rows by entity ("contact", "lead", "deal", "company") and id; see add_crm_entity.
    crm: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict, init=False)
    crm_reads: collections.Counter[str] = field(default_factory=collections.Counter, init=False)
    crm_writes: collections.Counter[str] = field(default_factory=collections.Counter, init=False)
    # user fields by entity and FIELD_NAME, as crm.<entity>.userfield.list answers them
    user_fields: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict, init=False)
    user_fields_added: int = field(default=0, init=False)
    # (entity, id) -> description: crm.<entity>.update of that row fails with ERROR_CORE
    crm_update_errors: dict[tuple[str, int], str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._refresh_tokens: dict[str, float] = {}
        self._refresh_users: dict[str, int] = {}  # refresh token -> the user it was issued to
        self._flooded_until = 0.0  # wall clock; see flood()
        self._token_uses: collections.Counter[str] = collections.Counter()
        self._bucket_level = 0.0
        self._bucket_at = time.monotonic()
        self._blocked: dict[str, float] = {}
        # per method: (start, duration) of the calls in the window, oldest first, and their sum
        self._operating: dict[str, collections.deque[tuple[float, float]]] = {}
        self._operating_sum: dict[str, float] = {}
        self._next_internal_id = 1
        self._crm_ids: dict[str, list[int]] = {}  # sorted ids per entity: list pages by bisect
        self._next_multi_id = 0
        self._next_uf_id = 400
        self._refusals: dict[str, tuple[str, str]] = {}
        self._runners: list[web.AppRunner] = []
        self._base_url: str | None = None
        self._oauth_base_url: str | None = None
        self._method_table: dict[str, Callable[[dict[str, Any], _Token], Any]] | None = None
        self._issue_pair()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve REST on ``port`` and the OAuth server on a second, free port."""
        rest_app = web.Application()
        rest_app.router.add_route("*", "/rest/{method}", self._handle_rest)
        oauth_app = web.Application()
        oauth_app.router.add_route("*", "/oauth/token/", self._handle_token)
        oauth_app.router.add_route("*", "/oauth/token", self._handle_token)
        self._base_url = await self._serve(rest_app, host, port)
        self._oauth_base_url = await self._serve(oauth_app, host, 0)
        log.info("portal.started", base_url=self._base_url, oauth=self._oauth_base_url, domain=self.domain)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> SimulatedPortal:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, app: web.Application, host: str, port: int) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        bound_host, bound_port = runner.addresses[-1][:2]
        return f"http://{bound_host}:{bound_port}"

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("SimulatedPortal.start() has not been awaited")
        return self._base_url

    @property
    def client_endpoint(self) -> str:
        return f"{self.base_url}/rest/"

    @property
    def server_endpoint(self) -> str:
        """Like ``https://oauth.bitrix.info/rest/``: the token URL is ``<scheme://host>/oauth/token/``."""
        if self._oauth_base_url is None:
            raise RuntimeError("SimulatedPortal.start() has not been awaited")
        return f"{self._oauth_base_url}/rest/"

    @property
    def token_url(self) -> str:
        return f"{self._oauth_base_url}/oauth/token/"

    def portal_toml(self, **extra: float | int) -> str:
        """This portal as a ``[[portal]]`` table of config.toml, for tests and benches
        that run ``smppd run -c`` against it (``extra``: rate, burst)."""
        keys = ("member_id", "domain", "client_endpoint", "server_endpoint", "client_id", "client_secret",
                "application_token", "access_token", "refresh_token")
        lines = ["[[portal]]", *(f'{k} = "{getattr(self, k)}"' for k in keys),
                 *(f"{k} = {v}" for k, v in extra.items())]
        return "\n".join(lines) + "\n"

    def install_auth(self) -> dict[str, str]:
        """The fields ONAPPINSTALL would deliver: what the daemon persists per portal."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "application_token": self.application_token,
            "member_id": self.member_id,
            "domain": self.domain,
            "client_endpoint": self.client_endpoint,
            "server_endpoint": self.server_endpoint,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }

    # ------------------------------------------------------------------ test knobs

    def block_method(self, method: str, seconds: float) -> None:
        """Simulate the per-method operating-time limit: 429 until ``seconds`` from now."""
        self._blocked[method.lower()] = time.time() + seconds

    def flood(self, seconds: float) -> None:
        """Every REST request answers 503 ``QUERY_LIMIT_EXCEEDED`` for ``seconds``: the portal's
        bucket (per portal and source IP, bitrix24.md §8) is taken by other apps on our server."""
        self._flooded_until = time.time() + seconds

    def unblock_method(self, method: str) -> None:
        self._blocked.pop(method.lower(), None)

    def uses_of(self, access_token: str) -> int:
        """How many REST requests carried this access token (tests check ordering with it)."""
        return self._token_uses[access_token]

    # ------------------------------------------------------------------ REST entry

    async def _handle_rest(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._flooded_until > time.time() or not self._take_from_bucket():
            self.rejected_rate_limited += 1
            return _json(_QUERY_LIMIT_BODY, 503)
        method = request.match_info["method"].lower().removesuffix(".json")
        params = await _read_params(request)
        try:
            handler = self._methods().get(method)
            if handler is None:
                raise _ApiError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
            token = self._authenticate(request, params)
            response = self._invoke(method, handler, params, token)
        except _ApiError as exc:
            log.debug("portal.rest.error", method=method, error=exc.code)
            return _json(exc.body(), exc.status)
        return _json(response)

    def _take_from_bucket(self) -> bool:
        """Leaky bucket: +1 per accepted request, drains at ``rate``/s, rejects above ``burst``."""
        if self.rate is None:
            return True
        now = time.monotonic()
        self._bucket_level = max(0.0, self._bucket_level - (now - self._bucket_at) * self.rate)
        self._bucket_at = now
        if self._bucket_level + 1 > self.burst:
            return False
        self._bucket_level += 1
        return True

    def _authenticate(self, request: web.Request, params: dict[str, Any]) -> _Token:
        """Token from ``Authorization: Bearer`` or the ``auth``/``access_token`` param (exact names)."""
        key = None
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            key = header[7:].strip()
        for name in ("auth", "access_token"):
            value = params.pop(name, None)
            if key is None and isinstance(value, str):
                key = value
        token = self._tokens.get(key or "")
        if token is None:
            raise _ApiError(_NO_AUTH_BODY["error"], _NO_AUTH_BODY["error_description"], 401)
        self._token_uses[key or ""] += 1
        if self.overloaded:
            raise _ApiError(_OVERLOAD_BODY["error"], _OVERLOAD_BODY["error_description"], 503)
        if token.expires_at <= time.time():
            raise _ApiError(_EXPIRED_BODY["error"], _EXPIRED_BODY["error_description"], 401)
        return token

    def _methods(self) -> dict[str, Callable[[dict[str, Any], _Token], Any]]:
        """The REST methods by lower-case name, built once: a status batch looks one up per command."""
        if self._method_table is None:
            self._method_table = self._build_methods()
        return self._method_table

    def _build_methods(self) -> dict[str, Callable[[dict[str, Any], _Token], Any]]:
        return {
            "batch": self._batch,
            **self._messageservice_methods(),
            **self._crm_methods(),
        }

    def _invoke(
        self, method: str, handler: Callable[[dict[str, Any], _Token], Any], params: dict[str, Any], token: _Token
    ) -> dict[str, Any]:
        """Run one method like ``CRestServer::processCall``: operating-time gate, call, ``time``."""
        if self._blocked.get(method, 0.0) > time.time():
            raise _ApiError("OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.", 429)
        start = time.time()
        self.method_calls[method] += 1
        proc_start = time.time()
        result = handler(params, token)
        proc_finish = time.time()
        self._operating.setdefault(method, collections.deque()).append((proc_start, proc_finish - proc_start))
        self._operating_sum[method] = self._operating_sum.get(method, 0.0) + proc_finish - proc_start
        if isinstance(result, _Paged):  # list methods: next (when more) and total beside result
            paged: dict[str, Any] = {"result": result.rows}
            if result.next is not None:
                paged["next"] = result.next
            paged["total"] = result.total
            paged["time"] = self._time(method, start, proc_start, proc_finish)
            return paged
        return {"result": result, "time": self._time(method, start, proc_start, proc_finish)}

    def _time(self, method: str, start: float, proc_start: float, proc_finish: float) -> dict[str, Any]:
        finish = time.time()
        data: dict[str, Any] = {
            "start": start,
            "finish": finish,
            "duration": finish - start,
            "processing": proc_finish - proc_start,
            "date_start": _iso(start),
            "date_finish": _iso(finish),
        }
        # Why a deque and a running sum: a bench pushes ~20 batches/s for minutes, and
        # rescanning the whole window per call made the portal, not smppd, the bottleneck.
        usage = self._operating.setdefault(method, collections.deque())
        while usage and usage[0][0] <= finish - _OPERATING_WINDOW:
            self._operating_sum[method] -= usage.popleft()[1]
        if not usage:
            self._operating_sum[method] = 0.0
        blocked_until = self._blocked.get(method)
        if blocked_until and blocked_until > finish:
            data["operating_reset_at"] = int(blocked_until)
        elif usage:
            data["operating_reset_at"] = int(usage[0][0] + _OPERATING_WINDOW)
        data["operating"] = max(0.0, self._operating_sum.get(method, 0.0)) if usage else 0.0
        return data

    # ------------------------------------------------------------------ batch

    def _batch(self, params: dict[str, Any], token: _Token) -> dict[str, Any]:
        """``CRestProvider::methodsBatch``: run commands in order, split results and errors."""
        params = _upper(params)
        halt = _php_bool(params.get("HALT", False))
        cmd = params.get("CMD") or {}
        items = list(cmd.items()) if isinstance(cmd, dict) else list(enumerate(cmd))
        if self.batch_overflow == "http_400" and len(items) > BATCH_MAX_LENGTH:
            raise _ApiError("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded", 400)
        out: dict[str, dict[str, Any]] = {"result": {}, "error": {}, "total": {}, "next": {}, "time": {}}
        for count, (key, call) in enumerate(items):
            key = str(key)
            if count >= BATCH_MAX_LENGTH:
                outcome: dict[str, Any] = {"error": {"error": "ERROR_BATCH_LENGTH_EXCEEDED",
                                                     "error_description": "Max batch length exceeded"}}
            elif not isinstance(call, str):
                continue
            else:
                outcome = self._batch_item(call, token)
            for part, value in outcome.items():
                out[part][key] = value
            if "error" in outcome and halt:
                break
        return {
            "result": out["result"],
            "result_error": out["error"],
            "result_total": out["total"],
            "result_next": out["next"],
            "result_time": out["time"],
        }

    def _batch_item(self, call: str, token: _Token) -> dict[str, Any]:
        method, _, query = call.partition("?")
        method = method.lower()
        sub_params = _php_parse(parse_qsl(query, keep_blank_values=True))
        for name in ("auth", "access_token"):  # sub-calls reuse the outer auth
            sub_params.pop(name, None)
        try:
            if method == "batch":
                raise _ApiError("ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage", 405)
            handler = self._methods().get(method)
            if handler is None:
                raise _ApiError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
            return self._invoke(method, handler, sub_params, token)
        except _ApiError as exc:
            return {"error": exc.body()}


__all__ = ["BATCH_MAX_LENGTH", "STATUSES", "SimMessage", "SimulatedPortal", "encode_form"]
