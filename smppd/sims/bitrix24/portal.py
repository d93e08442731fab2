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
"""

from __future__ import annotations

import bisect
import collections
import functools
import hashlib
import ipaddress
import json
import random
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

#: The five statuses REST may set (bitrix24.md §7), in rank order. Case-sensitive, as in
#: ``Sender\Sms\Rest::resolveStatus``.
STATUSES: tuple[str, ...] = ("queued", "sent", "delivered", "undelivered", "failed")
_RANK = {"queued": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3}

BATCH_MAX_LENGTH = 50
_OPERATING_WINDOW = 600.0  # ten 1-minute buckets (bitrix24.md §8)
_CODE_RE = re.compile(r"^[a-z0-9.\-_]+$", re.IGNORECASE)

# Exact cloud bodies (bitrix24.md §8, §10).
_QUERY_LIMIT_BODY = {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
_OVERLOAD_BODY = {"error": "OVERLOAD_LIMIT", "error_description": "REST API is blocked due to overload."}
_EXPIRED_BODY = {"error": "expired_token", "error_description": "The access token provided has expired."}
_NO_AUTH_BODY = {"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"}


class _ApiError(Exception):
    """A REST error as the core raises it: code, description, HTTP status (400 default)."""

    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


def _access_denied() -> _ApiError:
    return _ApiError("ACCESS_DENIED", "Access denied!", 403)


@dataclass
class SimMessage:
    """One message as the portal's ``b_messageservice_message`` row sees it."""

    message_id: str
    code: str
    to: str
    text: str
    module_id: str
    author_id: int
    status: str
    history: list[tuple[float, str]] = field(default_factory=list)

    def regressions(self) -> list[tuple[str, str]]:
        """(old, new) pairs where the status moved backwards or between final statuses.

        Why: the real core applies any change; this is how a test proves we never send one.
        """
        moves = []
        for (_, old), (_, new) in zip(self.history, self.history[1:]):
            if _RANK[new] < _RANK[old] or (_RANK[old] == 3 and new != old):
                moves.append((old, new))
        return moves


@dataclass
class _Token:
    user_id: int
    expires_at: float  # wall clock
    is_admin: bool


def _new_member_id() -> str:
    return secrets.token_hex(16)


def _new_client_id() -> str:
    return f"local.{secrets.token_hex(7)}.{secrets.randbelow(90_000_000) + 10_000_000}"


@dataclass
class SimulatedPortal:
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

    def expire_access_token(self) -> None:
        """Force the current access token to be expired now (next call gets ``expired_token``)."""
        self._tokens[self.access_token].expires_at = time.time() - 1

    def block_method(self, method: str, seconds: float) -> None:
        """Simulate the per-method operating-time limit: 429 until ``seconds`` from now."""
        self._blocked[method.lower()] = time.time() + seconds

    def flood(self, seconds: float) -> None:
        """Every REST request answers 503 ``QUERY_LIMIT_EXCEEDED`` for ``seconds``: the portal's
        bucket (per portal and source IP, bitrix24.md §8) is taken by other apps on our server."""
        self._flooded_until = time.time() + seconds

    def user_oauth_pair(self, user_id: int) -> tuple[str, str]:
        """(access, refresh) of our app for any user who opened it: a real pair of our app, for a
        user who is not necessarily an admin (``user.admin`` tells)."""
        pair = self._issue_pair(user_id, keep=False)
        return pair["access_token"], pair["refresh_token"]

    def unblock_method(self, method: str) -> None:
        self._blocked.pop(method.lower(), None)

    def purge(self, message_id: str) -> None:
        """The 14-day cleanup agent: the row is gone, later updates get ERROR_MESSAGE_NOT_FOUND."""
        message = self.messages.pop(message_id, None)
        if message is not None:
            self.purged[message_id] = message

    # ------------------------------------------------------------------ app lifecycle events

    def install_event(self) -> list[tuple[str, str]]:
        """The ``ONAPPINSTALL`` form the portal posts to the app's event handler (§11).

        Why tokens in the form: for a server-side local app this event is the only place the
        app ever learns its refresh token and ``application_token``.
        """
        self.installed = True
        return self._app_event("ONAPPINSTALL", [("data[VERSION]", str(self.app_version)),
                                                ("data[ACTIVE]", "Y"), ("data[INSTALLED]", "Y"),
                                                ("data[LANGUAGE_ID]", "ru")], tokens=True)

    def update_app(self) -> list[tuple[str, str]]:
        """A new app version: new ``application_token``, **all providers dropped** (core
        ``onRestAppUpdate`` calls ``onRestAppDelete``), and the ``ONAPPUPDATE`` form."""
        previous = self.app_version
        self.app_version += 1
        self.application_token = secrets.token_hex(16)
        self.senders.clear()
        return self._app_event("ONAPPUPDATE", [("data[VERSION]", str(self.app_version)),
                                               ("data[PREVIOUS_VERSION]", str(previous)),
                                               ("data[LANGUAGE_ID]", "ru")], tokens=True)

    def uninstall_app(self) -> list[tuple[str, str]]:
        """Uninstall: providers and every token of the app are gone (REST answers NO_AUTH_FOUND,
        a refresh invalid_grant); the ``ONAPPUNINSTALL`` form carries no access or refresh
        token, only the ``application_token``."""
        self.installed = False
        self.senders.clear()
        self._tokens.clear()  # every token of the app is revoked with it
        self._refresh_tokens.clear()
        self._refresh_users.clear()
        return self._app_event("ONAPPUNINSTALL", [("data[CLEAN]", "0"), ("data[LANGUAGE_ID]", "ru")],
                               tokens=False)

    def _app_event(self, event: str, data: list[tuple[str, str]], *, tokens: bool) -> list[tuple[str, str]]:
        form = [("event", event), ("event_handler_id", "1"), *data, ("ts", str(int(time.time())))]
        auth: list[tuple[str, str]] = []
        if tokens:
            pair = self._issue_pair()
            auth += [("access_token", pair["access_token"]), ("expires", str(pair["expires"])),
                     ("expires_in", str(pair["expires_in"])), ("scope", self.scope)]
        auth += [("domain", self.domain), ("server_endpoint", self.server_endpoint), ("status", "L"),
                 ("client_endpoint", self.client_endpoint), ("member_id", self.member_id)]
        if tokens:
            auth += [("user_id", str(self.admin_user_id)), ("refresh_token", self.refresh_token)]
        auth.append(("application_token", self.application_token))
        return form + [(f"auth[{k}]", v) for k, v in auth]

    def refuse(self, message_id: str, code: str, description: str = "refused by the test") -> None:
        """Make every ``status.update`` of one message fail with this error (in ``result_error``)."""
        self._refusals[message_id] = (code, description)

    def uses_of(self, access_token: str) -> int:
        """How many REST requests carried this access token (tests check ordering with it)."""
        return self._token_uses[access_token]

    # ------------------------------------------------------------------ messages

    def create_message(
        self,
        code: str,
        to: str,
        text: str,
        *,
        module_id: str = "crm",
        bindings: Iterable[tuple[int, int]] = ((2, 1541), (3, 877)),
        author: bool = True,
        author_id: int = 7,
    ) -> tuple[str, list[tuple[str, str]]]:
        """Register a message as sent by the core and return (message_id, HANDLER form fields).

        The core marks the message SENT as soon as it is handed to the queue server
        (bitrix24.md §6), so the message starts with status ``sent``. The form follows
        the §4 layout in the core's order: MESSAGE_HEADERS, properties, type, code,
        message_id, message_to, message_body, ts, then the event-style ``auth`` block
        (omitted when the message has no author).
        """
        internal_id = self._next_internal_id
        self._next_internal_id += 1
        message_id = hashlib.md5(f"{internal_id}|{uuid.uuid4().hex}".encode()).hexdigest()
        now = time.time()
        self.messages[message_id] = SimMessage(
            message_id=message_id, code=code, to=to, text=text, module_id=module_id,
            author_id=author_id if author else 0, status="sent", history=[(now, "sent")],
        )
        form = self._headers(module_id, bindings)
        form += [
            ("properties[phone_number]", to),
            ("properties[message_text]", text),
            ("type", "SMS"),
            ("code", code),
            ("message_id", message_id),
            ("message_to", to),
            ("message_body", text),
            ("ts", str(int(now))),
        ]
        if author:
            form += self._auth_block(author_id)
        return message_id, form

    def _headers(self, module_id: str, bindings: Iterable[tuple[int, int]]) -> list[tuple[str, str]]:
        form = [("module_id", module_id)]
        if module_id == "crm":
            for n, (owner_type, owner_id) in enumerate(bindings):
                form += [(f"bindings[{n}][OWNER_TYPE_ID]", str(owner_type)),
                         (f"bindings[{n}][OWNER_ID]", str(owner_id))]
        elif module_id == "bizproc":
            workflow_id = f"{secrets.token_hex(7)}.{secrets.randbelow(90_000_000) + 10_000_000}"
            document_id = ("crm", "CCrmDocumentLead", "LEAD_98")
            document_type = ("crm", "CCrmDocumentLead", "LEAD")
            form.append(("workflow_id", workflow_id))
            form += [(f"document_id[{i}]", v) for i, v in enumerate(document_id)]
            form += [(f"document_type[{i}]", v) for i, v in enumerate(document_type)]
        return form

    def _auth_block(self, author_id: int) -> list[tuple[str, str]]:
        """Event-style auth of the message author (not the admin), no refresh_token (§4)."""
        token = secrets.token_hex(35)
        expires = time.time() + self.access_ttl
        self._tokens[token] = _Token(author_id, expires, author_id == self.admin_user_id)
        fields = [
            ("application_token", self.application_token),
            ("member_id", self.member_id),
            ("domain", self.domain),
            ("access_token", token),
            ("expires_in", str(int(self.access_ttl))),
            ("scope", self.scope),
            ("user_id", str(author_id)),
            ("client_endpoint", self.client_endpoint),
            ("server_endpoint", self.server_endpoint),
            ("expires", str(int(expires))),
            ("status", "L"),
        ]
        return [(f"auth[{key}]", value) for key, value in fields]

    async def post_to_handler(
        self, http: aiohttp.ClientSession, handler_url: str, form: list[tuple[str, str]] | bytes
    ) -> tuple[int, str]:
        """POST the form urlencoded, as the Bitrix queue server does; the answer is not interpreted.

        ``form`` may come encoded already (``encode_form``): a load generator builds its
        posts before it starts the clock."""
        body = form if isinstance(form, bytes) else encode_form(form)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with http.post(handler_url, data=body, headers=headers) as resp:
            # read() and UTF-8, not text(): text() looks for the charset on every answer,
            # a cost a load generator pays per post (Kannel's reads bytes too).
            return resp.status, (await resp.read()).decode("utf-8", "replace")

    # ------------------------------------------------------------------ OAuth

    def _issue_pair(self, user_id: int | None = None, *, keep: bool = True) -> dict[str, Any]:
        """A new pair for ``user_id`` (the admin by default); ``keep``: it becomes the app's pair."""
        now = time.time()
        user = self.admin_user_id if user_id is None else user_id
        access, refresh = secrets.token_hex(35), secrets.token_hex(35)
        if keep:
            self.access_token, self.refresh_token = access, refresh
        self._tokens[access] = _Token(user, now + self.access_ttl, user == self.admin_user_id)
        self._refresh_tokens[refresh] = now + self.refresh_ttl
        self._refresh_users[refresh] = user
        return {
            "access_token": access,
            "expires": int(now + self.access_ttl),
            "expires_in": int(self.access_ttl),
            "scope": self.scope,
            # The real oauth.bitrix.info answers with its own host here, not the portal's.
            "domain": urlsplit(self._oauth_base_url or "http://oauth.local").netloc,
            "server_endpoint": self.server_endpoint if self._oauth_base_url else "",
            "status": "L",
            "client_endpoint": self.client_endpoint if self._base_url else "",
            "member_id": self.member_id,
            "user_id": user,
            "refresh_token": refresh,
        }

    async def _handle_token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        params = dict(request.query)
        if request.method == "POST":
            params.update(dict(await request.post()))
        try:
            body = self._refresh(params)
        except _ApiError as exc:
            log.info("portal.oauth.error", error=exc.code)
            return _json(exc.body(), exc.status)
        return _json(body)

    def _refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("grant_type") != "refresh_token":
            raise _ApiError("unsupported_grant_type", "The authorization grant type is not supported")
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            raise _ApiError("invalid_client", "Invalid client credentials", 401)
        old = str(params.get("refresh_token", ""))
        # Single use: the token is gone whatever the outcome; spent twice it is invalid_grant.
        user = self._refresh_users.pop(old, self.admin_user_id)
        if self._refresh_tokens.pop(old, 0.0) <= time.time():
            raise _ApiError("invalid_grant", "Invalid refresh token")
        self.refreshes += 1
        return self._issue_pair(user, keep=user == self.admin_user_id)

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
            "messageservice.message.status.update": self._status_update,
            "messageservice.sender.add": self._sender_add,
            "messageservice.sender.update": self._sender_update,
            "messageservice.sender.delete": self._sender_delete,
            "messageservice.sender.list": self._sender_list,
            "app.info": self._app_info,
            "user.admin": self._user_admin,
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

    # ------------------------------------------------------------------ messageservice

    def _status_update(self, params: dict[str, Any], token: _Token) -> bool:
        """``RestService::updateMessageStatus``: validate, find, apply — without a monotonic guard."""
        params = _upper(params)
        code = _validate_code(params.get("CODE"))
        message_id = params.get("MESSAGE_ID")
        if not message_id:
            raise _ApiError("ERROR_MESSAGE_NOT_FOUND", "Message not found!")
        status = params.get("STATUS")
        if status not in STATUSES:
            raise _ApiError("ERROR_MESSAGE_STATUS_INCORRECT", "Message status incorrect!")
        if str(message_id) in self._refusals:
            raise _ApiError(*self._refusals[str(message_id)])
        message = self.messages.get(str(message_id))
        if message is None or message.code != code:
            raise _ApiError("ERROR_MESSAGE_NOT_FOUND", "Message not found!")
        if message.author_id != token.user_id and not token.is_admin:
            raise _access_denied()
        if message.status == status:  # UPDATE ... WHERE STATUS_ID != new: a no-op
            self.updates_noop += 1
            return True
        message.status = status
        message.history.append((time.time(), status))
        self.updates_applied += 1
        return True

    def _app_info(self, params: dict[str, Any], token: _Token) -> dict[str, Any]:
        """``app.info``: ``CODE`` is the app's client_id (for a local app ``local.…``) [inferred]."""
        return {"ID": 1, "CODE": self.client_id, "VERSION": self.app_version, "STATUS": "L",
                "INSTALLED": self.installed, "PAYMENT_EXPIRED": "N", "DAYS": None, "LICENSE": "by_project"}

    def _user_admin(self, params: dict[str, Any], token: _Token) -> bool:
        """``user.admin``: whether the token's user may manage apps (true for the portal admin only)."""
        return token.is_admin

    def _require_admin(self, token: _Token) -> None:
        if not token.is_admin:
            raise _access_denied()

    def _sender_add(self, params: dict[str, Any], token: _Token) -> bool:
        self._require_admin(token)
        params = _upper(params)
        if not params:
            raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Empty data!")
        code = _validate_code(params.get("CODE"))
        self._validate_handler(params.get("HANDLER"))
        if not params.get("NAME"):
            raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Empty sender NAME!")
        if not params.get("TYPE"):
            raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Empty sender message TYPE!")
        if params["TYPE"] != "SMS":
            raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Unknown sender message TYPE!")
        if code in self.senders:
            raise _ApiError("ERROR_SENDER_ALREADY_INSTALLED", "Sender already installed!")
        self.senders[code] = {
            "CODE": code, "TYPE": "SMS", "HANDLER": params["HANDLER"],
            "NAME": params["NAME"], "DESCRIPTION": params.get("DESCRIPTION", ""),
        }
        return True

    def _sender_update(self, params: dict[str, Any], token: _Token) -> bool:
        """Cloud-only method (bitrix24.md §3); descriptions are not documented, ours are plain."""
        self._require_admin(token)
        params = _upper(params)
        code = params.get("CODE")
        if not code:
            raise _ApiError("ERROR_SENDER_CODE_REQUIRED", "Sender code is required")
        changes = {k: params[k] for k in ("HANDLER", "NAME", "DESCRIPTION") if params.get(k)}
        if not changes:
            raise _ApiError("ERROR_SENDER_OTHER_PARAMS_REQUIRED", "HANDLER, NAME or DESCRIPTION is required")
        if code not in self.senders:
            raise _ApiError("ERROR_SENDER_NOT_FOUND", "Sender not found!")
        if "HANDLER" in changes:
            self._validate_handler(changes["HANDLER"])
        self.senders[code].update(changes)
        return True

    def _sender_delete(self, params: dict[str, Any], token: _Token) -> bool:
        self._require_admin(token)
        code = _validate_code(_upper(params).get("CODE"))
        if self.senders.pop(code, None) is None:
            raise _ApiError("ERROR_SENDER_NOT_FOUND", "Sender not found!")
        return True

    def _sender_list(self, params: dict[str, Any], token: _Token) -> list[str]:
        self._require_admin(token)
        return list(self.senders)

    def _validate_handler(self, handler: Any) -> None:
        """``HandlerHelper::checkCallback`` (host with a dot, http/https) plus the cloud's no-LAN rule."""
        parts = urlsplit(handler) if isinstance(handler, str) else None
        host = parts.hostname if parts else None
        if not host or host.find(".") <= 0:
            raise _ApiError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
        if parts.scheme not in ("http", "https"):
            raise _ApiError("ERROR_UNSUPPORTED_PROTOCOL", "Unsupported handler protocol")
        if len(handler) > 1000:
            raise _ApiError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
        if not self.allow_local_handler and _is_local(host):
            raise _ApiError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL")


    # ------------------------------------------------------------------ CRM reads (issue 8: consent)
    #
    # ``crm.<entity>.get`` as the core answers it (CCrm*RestProxy::innerGet): every field in
    # the result, ids and user-field values as strings, a yes/no user field as "1"/"0", phones
    # as the multi-field list; an unknown id is HTTP 400 with an *empty* error code and
    # "Not found"; without the ``crm`` scope the app gets 401 ``insufficient_scope``.
    # ``crm.duplicate.findbycomm`` answers ``{"CONTACT": [ids], "LEAD": [...]}`` (integers),
    # or ``[]`` when nothing matches; the core compares normalized phone numbers.

    def add_crm_entity(self, entity: str, entity_id: int, *, phones: Iterable[str | tuple[str, str]] = (),
                       **fields: Any) -> None:
        """Create a lead/deal/contact/company row; values are stored the way REST returns them.

        A phone is a value (``VALUE_TYPE`` WORK) or a (value, value type) pair; multi-field
        value ids are unique across the portal, as in ``b_crm_field_multi``."""
        row: dict[str, Any] = {"ID": str(entity_id), **{k: _crm_value(v) for k, v in fields.items()}}
        if phones:
            row["PHONE"] = [self._multi_value(p) for p in phones]
        table = self.crm.setdefault(entity, {})
        ids = self._crm_ids.setdefault(entity, [])
        if entity_id not in table:
            if not ids or entity_id > ids[-1]:
                ids.append(entity_id)
            else:
                bisect.insort(ids, entity_id)
        table[entity_id] = row

    def _multi_value(self, phone: str | tuple[str, str]) -> dict[str, str]:
        value, value_type = (phone, "WORK") if isinstance(phone, str) else phone
        self._next_multi_id += 1
        return {"ID": str(self._next_multi_id), "VALUE_TYPE": value_type, "VALUE": value, "TYPE_ID": "PHONE"}

    def seed_crm(self, contacts: int, seed: int = 11) -> None:
        """A messy CRM for the demo and the bench: ``contacts`` contacts and a tenth as many
        leads and companies, ids with gaps, some rows with two numbers, numbers stored the
        ways CRMs hold them (``8029…``, ``375 44 …``, ``29 1…``, ``+7 …``, typos), some shared."""
        rnd = random.Random(seed)
        for entity, count in (("contact", contacts), ("lead", contacts // 10), ("company", contacts // 10)):
            next_id = max(self.crm.get(entity) or {0: None})
            for _ in range(count):
                next_id += rnd.choice((1, 1, 1, 2, 5))
                phones = []
                for _ in range(rnd.choice((1, 1, 1, 2))):
                    form = rnd.choice(_SEED_FORMS)
                    n = rnd.randrange(10**6) if rnd.random() > 0.1 else rnd.randrange(100)
                    parts = (n // 10000 % 100, n // 100 % 100, n % 100) if form.count("{") == 3 else (n,)
                    phones.append((form.format(*parts), rnd.choice(("WORK", "MOBILE", "HOME"))))
                self.add_crm_entity(entity, next_id, phones=phones)

    def add_user_field(self, entity: str, field_name: str, user_type_id: str = "string") -> None:
        """A user field that exists before the test (the admin made it in the UI)."""
        self._uf_add(entity, {"FIELD_NAME": field_name, "USER_TYPE_ID": user_type_id})

    def _crm_methods(self) -> dict[str, Callable[[dict[str, Any], _Token], Any]]:
        methods = {f"crm.{entity}.get": self._crm_get(entity) for entity in ("contact", "lead", "deal", "company")}
        methods["crm.duplicate.findbycomm"] = self._crm_find_by_comm
        for entity in _LISTED_ENTITIES:
            methods[f"crm.{entity}.list"] = functools.partial(self._crm_list, entity)
            methods[f"crm.{entity}.update"] = functools.partial(self._crm_update, entity)
            methods[f"crm.{entity}.userfield.list"] = functools.partial(self._uf_list, entity)
            methods[f"crm.{entity}.userfield.add"] = functools.partial(self._uf_add_method, entity)
        return methods

    # ``crm.<entity>.list`` (CCrm*RestProxy::innerGetList), as api-reference/crm/contacts/
    # crm-contact-list.md and api-reference/performance/huge-data.md (b24-rest-docs) describe it:
    # * pages of 50; ``start`` = offset; the answer has ``total`` and, when more rows match,
    #   ``next`` (the next ``start``). ``start=-1`` skips the count: ``total`` is 0 and there
    #   is no ``next`` (huge-data.md's sample answer); the caller pages by ``filter[>ID]`` with
    #   ``order[ID]=ASC`` and stops at a page shorter than 50.
    # * ``select``: ``*`` is every field except user and multiple fields, ``UF_*`` every user
    #   field; multiple fields (``PHONE``, ``EMAIL``...) only when named. Default ``*`` + ``UF_*``.
    # * a multiple field comes as a list of {ID, VALUE_TYPE, VALUE, TYPE_ID}, ids as strings.
    # * filter prefixes ``>``, ``>=``, ``<``, ``<=``, ``=``, ``!``/``!=``, ``@`` (IN); multiple fields
    #   match exactly only. Simplified here: ID filters, and exact matches of plain fields.

    def _crm_list(self, entity: str, params: dict[str, Any], token: _Token) -> "_Paged":
        self._require_crm_scope()
        params = _upper(params)
        table = self.crm.get(entity, {})
        ids = self._crm_ids.get(entity, [])
        lo, hi, rest = _id_range(params.get("FILTER"))
        order = params.get("ORDER") if isinstance(params.get("ORDER"), dict) else {}
        descending = str(_upper(order).get("ID", "ASC")).upper() == "DESC"
        try:
            start = int(params.get("START", 0) or 0)
        except (TypeError, ValueError):
            start = 0
        left, right = bisect.bisect_left(ids, lo), bisect.bisect_right(ids, hi)
        span = ids[left:right] if not descending else ids[left:right][::-1]
        select = _select(params.get("SELECT"))
        rows: list[dict[str, Any]] = []
        matched = 0
        for entity_id in span:
            row = table[entity_id]
            if rest and not all(_matches_plain(row, k, v) for k, v in rest.items()):
                continue
            matched += 1
            if (start < 0 and len(rows) < BATCH_MAX_LENGTH) or (start >= 0 and start < matched <= start + 50):
                rows.append(_project(row, select))
            elif start < 0:
                break
        self.crm_reads[f"{entity}.list"] += 1
        if start < 0:
            return _Paged(rows, 0, None)
        return _Paged(rows, matched, start + 50 if matched > start + 50 else None)

    # ``crm.<entity>.update`` (crm-contact-update.md, "Working with Multiple Fields"): only the
    # fields passed change; a ``PHONE`` item with ``ID`` rewrites that value (and its
    # ``VALUE_TYPE`` when given), with ``DELETE=Y`` or an empty ``VALUE`` removes it, without
    # ``ID`` adds one. Unknown fields are ignored. An unknown id is HTTP 400, empty code,
    # "Contact is not found". ``result`` is ``true``.

    def _crm_update(self, entity: str, params: dict[str, Any], token: _Token) -> bool:
        self._require_crm_scope()
        params = _upper(params)
        raw = params.get("ID")
        if not isinstance(raw, str) or not raw.strip().isdigit() or int(raw) <= 0:
            raise _ApiError("", "ID is not defined or invalid.")
        fields = params.get("FIELDS")
        if not isinstance(fields, dict):
            raise _ApiError("", "Parameter 'fields' must be array")
        row = self.crm.get(entity, {}).get(int(raw))
        if row is None:
            raise _ApiError("", f"{entity.capitalize()} is not found")
        if self.crm_update_errors.get((entity, int(raw))):
            raise _ApiError("ERROR_CORE", self.crm_update_errors[(entity, int(raw))])
        fields = _upper(fields)
        phones = fields.get("PHONE")
        if isinstance(phones, dict):
            phones = list(phones.values())
        if isinstance(phones, list):
            current = row.setdefault("PHONE", [])
            for item in phones:
                if not isinstance(item, dict):
                    continue
                item = _upper(item)
                value = item.get("VALUE")
                if item.get("ID"):
                    target = next((v for v in current if v["ID"] == str(item["ID"])), None)
                    if target is None:
                        continue
                    if item.get("DELETE") == "Y" or value == "" or "VALUE" not in item:
                        current.remove(target)
                        continue
                    target["VALUE"] = str(value)
                    if item.get("VALUE_TYPE"):
                        target["VALUE_TYPE"] = str(item["VALUE_TYPE"])
                elif value:
                    current.append(self._multi_value((str(value), str(item.get("VALUE_TYPE") or "WORK"))))
        known = self.user_fields.get(entity, {})
        for name, value in fields.items():
            if name in known:
                row[name] = _uf_value(known[name]["USER_TYPE_ID"], value)
        self.crm_writes[entity] += 1
        return True

    # ``crm.<entity>.userfield.list`` / ``.add`` (api-reference/crm/contacts/userfield/
    # crm-contact-userfield-list.md, -add.md): administrators only. ``add`` takes
    # ``fields[FIELD_NAME]`` (``A-Z``, ``0-9``, ``_``; the core puts ``UF_CRM_`` in front when it
    # is missing; 20 characters at most with the prefix) and ``fields[USER_TYPE_ID]``, answers
    # the new field's id (an integer); errors are HTTP 400 with an *empty* code and a
    # description such as "The 'FIELD_NAME' field is not found.". The answer to a name that
    # exists already is not in the docs [inferred from CUserTypeEntity: refused, empty code].

    def _uf_list(self, entity: str, params: dict[str, Any], token: _Token) -> list[dict[str, Any]]:
        self._require_crm_scope()
        self._require_admin(token)
        wanted = _upper(params).get("FILTER")
        wanted = _upper(wanted) if isinstance(wanted, dict) else {}
        return [dict(f) for f in self.user_fields.get(entity, {}).values()
                if all(str(f.get(k)) == str(v) for k, v in wanted.items() if k != "LANG")]

    def _uf_add_method(self, entity: str, params: dict[str, Any], token: _Token) -> int:
        self._require_crm_scope()
        self._require_admin(token)
        fields = _upper(params).get("FIELDS")
        if not isinstance(fields, dict):
            raise _ApiError("", "The 'FIELD_NAME' field is not found.")
        return self._uf_add(entity, _upper(fields))

    def _uf_add(self, entity: str, fields: dict[str, Any]) -> int:
        name = fields.get("FIELD_NAME")
        if not isinstance(name, str) or not name:
            raise _ApiError("", "The 'FIELD_NAME' field is not found.")
        if not re.fullmatch(r"[A-Z0-9_]+", name):
            raise _ApiError("", "Field name contains invalid characters. Allowed characters are: A-Z, 0-9 and _")
        if not name.startswith("UF_CRM_"):
            name = "UF_CRM_" + name
        if len(name) > 20:
            raise _ApiError("", "Field name is too long")
        type_id = fields.get("USER_TYPE_ID")
        if not type_id:
            raise _ApiError("", "The 'USER_TYPE_ID' field is not found.")
        if type_id not in _UF_TYPES:
            raise _ApiError("", "Incorrect custom type specified")
        existing = self.user_fields.setdefault(entity, {})
        if name in existing:
            raise _ApiError("", "A user field with this code already exists")
        self._next_uf_id += 1
        existing[name] = {
            "ID": str(self._next_uf_id), "ENTITY_ID": f"CRM_{entity.upper()}", "FIELD_NAME": name,
            "USER_TYPE_ID": str(type_id), "XML_ID": fields.get("XML_ID"), "SORT": str(fields.get("SORT", 100)),
            "MULTIPLE": fields.get("MULTIPLE", "N"), "MANDATORY": fields.get("MANDATORY", "N"),
            "SHOW_FILTER": "N" if fields.get("SHOW_FILTER", "N") == "N" else "E",
            "SHOW_IN_LIST": fields.get("SHOW_IN_LIST", "N"), "EDIT_IN_LIST": fields.get("EDIT_IN_LIST", "Y"),
            "IS_SEARCHABLE": fields.get("IS_SEARCHABLE", "N"), "SETTINGS": fields.get("SETTINGS") or [],
        }
        self.user_fields_added += 1
        return self._next_uf_id

    def _require_crm_scope(self) -> None:
        if self.crm_error == "ERROR_METHOD_NOT_FOUND":  # what the core answers for a method it lacks
            raise _ApiError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
        if self.crm_error == "ACCESS_DENIED":
            raise _access_denied()
        if "crm" not in self.scope.split(","):
            raise _ApiError("insufficient_scope",
                            "The request requires higher privileges than provided by the access token", 401)

    def _crm_find_by_comm(self, params: dict[str, Any], token: _Token) -> Any:
        self._require_crm_scope()
        params = _upper(params)
        if params.get("TYPE") != "PHONE":
            raise _ApiError("", "Communication type is not defined or invalid.")
        values = params.get("VALUES")
        values = list(values.values()) if isinstance(values, dict) else values
        if not isinstance(values, list) or not values or len(values) > 20:
            raise _ApiError("", "Communication values are not defined or too many (20 at most).")
        wanted = {_comm_key(str(v)) for v in values}
        found: dict[str, list[int]] = {}
        for entity in ("lead", "contact", "company"):
            for entity_id, row in sorted(self.crm.get(entity, {}).items()):
                phones = {_comm_key(p.get("VALUE", "")) for p in row.get("PHONE", [])}
                if phones & wanted:
                    found.setdefault(entity.upper(), []).append(entity_id)
        self.crm_reads["findbycomm"] += 1
        return found

    def _crm_get(self, entity: str) -> Callable[[dict[str, Any], _Token], Any]:
        def get(params: dict[str, Any], token: _Token) -> dict[str, Any]:
            self._require_crm_scope()
            raw = _upper(params).get("ID")
            if not isinstance(raw, str) or not raw.strip().isdigit() or int(raw) <= 0:
                raise _ApiError("", "ID is not defined or invalid.")
            row = self.crm.get(entity, {}).get(int(raw))
            if row is None:
                raise _ApiError("", "Not found")
            self.crm_reads[entity] += 1
            return dict(row)

        return get


_LISTED_ENTITIES = ("contact", "lead", "company")
_SEED_FORMS = ("+375291{:06d}", "80291{:06d}", "375 44 7{:02d}-{:02d}-{:02d}", "29 1{:06d}",
               "+7 916 1{:02d}-{:02d}-{:02d}", "8 (033) 1{:06d}", "+375255{:06d}", "1{:04d}")
#: USER_TYPE_ID values crm-contact-userfield-add.md lists (custom types left out).
_UF_TYPES = frozenset({"string", "integer", "double", "boolean", "datetime", "date", "money", "url", "address",
                       "enumeration", "file", "employee", "crm_status", "iblock_section", "iblock_element", "crm"})
_MULTI_FIELDS = frozenset({"PHONE", "EMAIL", "WEB", "IM", "LINK"})


@dataclass
class _Paged:
    """A list method's page: ``result`` plus ``total`` and ``next`` beside it in the answer."""

    rows: list[dict[str, Any]]
    total: int
    next: int | None


def _id_range(raw: Any) -> tuple[int, int, dict[str, Any]]:
    """(lowest id, highest id, other filter keys) of a list filter's ID conditions."""
    lo, hi = 0, 2**63
    rest: dict[str, Any] = {}
    for key, value in (raw.items() if isinstance(raw, dict) else ()):
        op = re.match(r"^(>=|<=|>|<|=|!=|!|@)?(.*)$", str(key))
        assert op is not None
        prefix, name = op.group(1) or "", op.group(2).upper()
        if name != "ID":
            rest[str(key)] = value
            continue
        try:
            number = int(value) if prefix != "@" else 0
        except (TypeError, ValueError):
            raise _ApiError("", "Invalid filter value for ID") from None
        if prefix == ">":
            lo = max(lo, number + 1)
        elif prefix == ">=":
            lo = max(lo, number)
        elif prefix == "<":
            hi = min(hi, number - 1)
        elif prefix == "<=":
            hi = min(hi, number)
        elif prefix in ("", "="):
            lo, hi = max(lo, number), min(hi, number)
        else:
            rest[str(key)] = value
    return lo, hi, rest


def _matches_plain(row: dict[str, Any], key: str, value: Any) -> bool:
    op = re.match(r"^(>=|<=|>|<|=|!=|!|@)?(.*)$", key)
    assert op is not None
    prefix, name = op.group(1) or "", op.group(2).upper()
    if name in _MULTI_FIELDS:  # exact match only (crm-contact-list.md)
        found = any(v.get("VALUE") == value for v in row.get(name, []))
    elif prefix == "@" or prefix == "!@":
        values = list(value.values()) if isinstance(value, dict) else value
        found = str(row.get(name)) in {str(v) for v in values}
    else:
        found = str(row.get(name, "")) == str(value)
    return not found if prefix in ("!", "!=") else found


def _select(raw: Any) -> tuple[bool, bool, frozenset[str]]:
    """(all plain fields, all user fields, named fields) of a ``select``."""
    names = [str(v) for v in (raw.values() if isinstance(raw, dict) else raw or ())]
    if not names:
        return True, True, frozenset()
    return "*" in names, "UF_*" in names, frozenset(n.upper() for n in names)


def _project(row: dict[str, Any], select: tuple[bool, bool, frozenset[str]]) -> dict[str, Any]:
    plain, user, named = select
    out: dict[str, Any] = {"ID": row["ID"]}
    for key, value in row.items():
        if key in named or (plain and key not in _MULTI_FIELDS and not key.startswith("UF_")) or (
                user and key.startswith("UF_")):
            out[key] = [dict(v) for v in value] if key in _MULTI_FIELDS else value
    return out


def _uf_value(type_id: str, value: Any) -> Any:
    """A user field's value as ``crm.<entity>.get`` answers it: a yes/no field as "1"/"0"."""
    if type_id == "boolean":
        return "1" if str(value).upper() in ("1", "Y", "TRUE") else "0"
    return value if isinstance(value, (list, dict)) else str(value)


def _comm_key(value: str) -> str:
    """What findbycomm compares: the core normalizes a phone before it looks (so
    ``8 029 100-00-01`` and ``+375291000001`` meet); digits when it cannot be read."""
    from .. import phone

    try:
        return phone.normalize(value)
    except phone.InvalidNumber:
        return re.sub(r"\D", "", value)


def _crm_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return value


# ---------------------------------------------------------------------- helpers


def _validate_code(code: Any) -> str:
    if not code:
        raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Empty sender code!")
    if not isinstance(code, str) or not _CODE_RE.match(code):
        raise _ApiError("ERROR_SENDER_VALIDATION_FAILURE", "Wrong sender code!")
    return code


def _is_local(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.endswith(".local") or host.endswith(".localhost")
    return ip.is_private or ip.is_loopback or ip.is_link_local


def _upper(params: dict[str, Any]) -> dict[str, Any]:
    """``array_change_key_case(..., CASE_UPPER)``: top-level keys only."""
    return {str(k).upper(): v for k, v in params.items()}


def _php_bool(value: Any) -> bool:
    """PHP ``(bool)``: "" and "0" are false, any other string is true."""
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def _php_parse(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``parse_str`` for bracket keys: ``a[b][]=1`` -> ``{"a": {"b": {"0": "1"}}}``."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        base, bracket, rest = key.partition("[")
        segments = re.findall(r"\[([^\]]*)\]", bracket + rest) if bracket else []
        if not segments:
            root[key] = value
            continue
        node = root
        path = [base, *segments]
        for depth, segment in enumerate(path):
            if segment == "":
                segment = str(sum(1 for k in node if k.isdigit()))
            if depth == len(path) - 1:
                node[segment] = value
            else:
                child = node.get(segment)
                if not isinstance(child, dict):
                    child = node[segment] = {}
                node = child
    return root


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string merged with the body (form or JSON), like PHP's ``$_REQUEST`` + JSON input."""
    params = _php_parse(request.query.items())
    if request.method != "POST" or not request.can_read_body:
        return params
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if isinstance(body, dict):
            params.update(body)
        return params
    form = await request.post()
    params.update(_php_parse((k, v) for k, v in form.items() if isinstance(v, str)))
    return params


def _phpify(value: Any) -> Any:
    """Encode maps as PHP's ``json_encode`` would: empty -> ``[]``, keys 0..n-1 -> list.

    Only containers are visited: a batch answer holds ~20 scalars per command, and a
    call per scalar made this the simulated portal's largest cost under a bench (the
    portal shares the cores with the gateway it measures).
    """
    if isinstance(value, dict):
        if not value:
            return []
        if next(iter(value)) == "0" and all(k == str(i) for i, k in enumerate(value)):
            return [_phpify(v) if isinstance(v, (dict, list)) else v for v in value.values()]
        return {k: _phpify(v) if isinstance(v, (dict, list)) else v for k, v in value.items()}
    if isinstance(value, list):
        return [_phpify(v) if isinstance(v, (dict, list)) else v for v in value]
    return value


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    text = json.dumps(_phpify(body), separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json")


def encode_form(form: list[tuple[str, str]]) -> bytes:
    """A HANDLER form as the queue server puts it on the wire (application/x-www-form-urlencoded)."""
    return urlencode(form).encode()


def _iso(ts: float) -> str:
    return _iso_second(int(ts))


@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str:
    """Two per command in every answer's ``time`` block: a bench's portal formatted the same
    second thousands of times (astimezone() looks the zone up on each call)."""
    return datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")


__all__ = ["STATUSES", "SimMessage", "SimulatedPortal"]
