"""The daemon's only door to Bitrix24: a small REST client on aiohttp.

Why in-house (bitrix24.md §12): we need per-item ``batch`` results (fast-bitrix24 raises for
the whole call), a single-flight OAuth refresh that persists the rotated refresh token
*before* it is used, and retry rules that differ per error: 503 ``QUERY_LIMIT_EXCEEDED`` is
retried with backoff, 503 ``OVERLOAD_LIMIT`` (a manual block) is not, 429
``OPERATION_TIME_LIMIT`` waits until ``operating_reset_at``, 401 ``expired_token`` refreshes
once. Tokens and the client secret travel only in POST bodies and are never logged.
"""

from __future__ import annotations

import asyncio
import json
from collections import abc
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
import structlog

from ..backoff import backoff

log = structlog.get_logger(__name__)

BATCH_MAX_COMMANDS = 50

#: Call priorities (issue 16). ``PRIORITY_NORMAL`` is everything that always was (the status
#: pusher, registration); ``PRIORITY_BULK`` is a long job (``smppd contacts``) that must never
#: delay the others: it only takes budget the normal callers leave unused.
PRIORITY_BULK = 0
PRIORITY_NORMAL = 1
#: Units of the burst a bulk caller never takes, so a normal call finds room at once.
BULK_HEADROOM = 10

#: Errors that mean "slow down and try again".
_RATE_LIMITED = "QUERY_LIMIT_EXCEEDED"
_OPERATION_LIMITED = "OPERATION_TIME_LIMIT"
_EXPIRED = "expired_token"
#: HTTP statuses without a JSON body that a proxy in front of Bitrix24 may answer.
_TRANSIENT_HTTP = frozenset({502, 503, 504})


@dataclass(frozen=True)
class PortalAuth:
    """Everything needed to talk to one portal; tokens and secret are kept out of ``repr``."""

    member_id: str
    domain: str
    client_endpoint: str
    server_endpoint: str
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    client_id: str
    client_secret: str = field(repr=False)


class RestError(Exception):
    """A Bitrix24 error code (or ``network``/``bad_response``), its description and HTTP status."""

    def __init__(self, code: str, description: str = "", http_status: int | None = None) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.http_status = http_status


def token_url(server_endpoint: str) -> str:
    """``https://oauth.bitrix.info/rest/`` -> ``https://oauth.bitrix.info/oauth/token/``.

    Why from ``server_endpoint``: RU portals use ``oauth.bitrix24.tech`` (bitrix24.md §10),
    so the host must come from what the portal told us, never be hard-coded.
    """
    parts = urlsplit(server_endpoint)
    if not parts.scheme or not parts.netloc:
        raise ValueError("server_endpoint must be an absolute URL")
    return f"{parts.scheme}://{parts.netloc}/oauth/token/"


def encode_params(params: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Flatten params like PHP ``http_build_query``: nested maps/lists become ``a[b][0]`` keys.

    ``None`` values are skipped and booleans become ``1``/``0``, as PHP does.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        _flatten(str(key), value, pairs)
    return pairs


# quote_plus(s, safe="") of every byte: the unreserved set as is, space as "+", the rest %XX.
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
# A full list, not a dict of the quoted bytes only: str.translate raises and catches a
# LookupError for every character a mapping leaves out, which would cost more than it saves.
_UNRESERVED_CHARS = _UNRESERVED.decode()
_QUOTE_PLUS = [chr(b) if b in _UNRESERVED else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)]


def form_urlencode(pairs: list[tuple[str, str]]) -> str:
    """``urllib.parse.urlencode(pairs)``, byte for byte, at C speed.

    Why not urlencode itself: it quotes byte by byte in Python, and a status batch
    quotes every update twice (the command's query, then the command as a form value):
    a sixth of the pusher's CPU. The UTF-8 bytes seen as Latin-1 characters let
    ``str.translate`` do the percent-encoding.
    """
    return "&".join(f"{_quote_plus(k)}={_quote_plus(v)}" for k, v in pairs)


def command_value(method: str, params: Mapping[str, Any] | None) -> str:
    """``form_urlencode([("x", f"{method}?{form_urlencode(encode_params(params))}")])`` after
    the ``x=``: a batch command as its form value, byte for byte.

    Why not that expression: it percent-encodes each command twice over its whole length,
    the second time a string three times longer, and a status batch does it 50 times
    a request. Percent-encoding is character by character, so the encoding of a
    concatenation is the concatenation of the encodings: each key and value is quoted
    twice on its own (nothing to do for the usual alphanumeric ids and words), and the
    separators ``?``, ``=`` and ``&`` are written as their encoded forms.
    """
    pairs = encode_params(params)
    head = _quote_plus(method) + "%3F"  # the method is not quoted inside the command
    return head + "%26".join(f"{_quote_twice(k)}%3D{_quote_twice(v)}" for k, v in pairs)


def _quote_twice(s: str) -> str:
    if not s.strip(_UNRESERVED_CHARS):  # what quoting leaves as is, quoting twice does too
        return s
    return _quote_plus(_quote_plus(s))


def _quote_plus(s: str) -> str:
    if not s.strip(_UNRESERVED_CHARS):  # only unreserved characters (or none): nothing to quote
        return s
    return s.encode("utf-8").decode("latin-1").translate(_QUOTE_PLUS)


def _flatten(key: str, value: Any, out: list[tuple[str, str]]) -> None:
    if type(value) is str:  # nearly every value: no isinstance chain for it
        out.append((key, value))
        return
    if value is None:
        return
    if isinstance(value, abc.Mapping):
        for sub, item in value.items():
            _flatten(f"{key}[{sub}]", item, out)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _flatten(f"{key}[{index}]", item, out)
    elif isinstance(value, bool):
        out.append((key, "1" if value else "0"))
    else:
        out.append((key, str(value)))


class _LeakyBucket:
    """Client-side mirror of the portal's bucket, so we rarely meet its 503.

    Each request reserves one unit at once (no lock needed in asyncio) and sleeps until the
    level it reserved is back under ``burst``; concurrent callers therefore queue in order.
    A bulk request instead waits, without reserving, until the level is below
    ``burst - BULK_HEADROOM``: normal callers (who reserve at once) always go first, and
    ``bulk_waiting`` tells them someone would use what they leave.
    """

    def __init__(self, rate: float | None, burst: int, clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._level = 0.0
        self._at = clock()
        self.bulk_waiting = 0

    def _drain(self) -> None:
        now = self._clock()
        if self._rate is not None:
            self._level = max(0.0, self._level - (now - self._at) * self._rate)
        self._at = now

    async def acquire(self, priority: int = PRIORITY_NORMAL) -> None:
        if self._rate is None:
            return
        if priority < PRIORITY_NORMAL:
            await self._acquire_bulk()
            return
        self._drain()
        self._level += 1
        excess = self._level - self._burst
        if excess > 0:
            await self._sleep(excess / self._rate)

    async def _acquire_bulk(self) -> None:
        ceiling = max(1.0, self._burst - BULK_HEADROOM)
        self.bulk_waiting += 1
        try:
            while True:
                self._drain()
                if self._level + 1 <= ceiling:
                    self._level += 1
                    return
                assert self._rate is not None
                await self._sleep(max(0.01, (self._level + 1 - ceiling) / self._rate))
        finally:
            self.bulk_waiting -= 1

    def saturate(self) -> None:
        """The portal said its bucket is full: assume ours is too, so others slow down."""
        self._drain()
        self._level = max(self._level, float(self._burst))


@dataclass
class _Attempts:
    """Per-call retry budget shared by rate limits, operating-time limits and network errors."""

    limit: int
    used: int = 0

    def spend(self) -> bool:
        self.used += 1
        return self.used < self.limit


class RestClient:
    """One portal's REST client. Share one instance per portal so the bucket and refresh are shared."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        auth: PortalAuth,
        *,
        rate: float | None = 2.0,
        burst: int = 50,
        on_tokens: Callable[[PortalAuth], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        max_attempts: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_operating_wait: float = 600.0,
        request_timeout: float = 65.0,
    ) -> None:
        self.auth = auth
        self._http = http
        self._on_tokens = on_tokens
        self._sleep = sleep
        self._wall = wall_clock
        self._bucket = _LeakyBucket(rate, burst, clock, sleep)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_operating_wait = max_operating_wait
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._refresh_lock = asyncio.Lock()
        self._pending: PortalAuth | None = None  # refreshed but not yet persisted
        self._operating_reset: dict[str, float] = {}
        self.last_time: dict[str, Any] | None = None  # the last ``time`` block, for metrics

    # ------------------------------------------------------------------ public API

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *,
                   priority: int = PRIORITY_NORMAL) -> Any:
        """Call one method and return its ``result``; raise `RestError` on failure."""
        payload = await self._request(method, form_urlencode(encode_params(params)), priority)
        return payload.get("result")

    @property
    def bulk_waiting(self) -> bool:
        """A bulk job waits for budget: a normal caller with little to send may hold it back a bit."""
        return self._bucket.bulk_waiting > 0

    async def batch_answer(
        self, commands: Mapping[str, tuple[str, Mapping[str, Any]]], *, halt: bool = False,
        priority: int = PRIORITY_NORMAL,
    ) -> tuple[dict[str, Any], dict[str, RestError], dict[str, Any]]:
        """`batch`, plus each command's ``next``/``total`` (``result_next``/``result_total``)
        for list methods: {key: {"next": n, "total": t}} where the portal sent them."""
        payload = await self._batch_payload(commands, halt, priority)
        if payload is None:
            return {}, {}, {}
        ok, failed = _split_batch(payload.get("result"), commands)
        block = payload.get("result") if isinstance(payload.get("result"), dict) else {}
        nexts, totals = _as_map(block.get("result_next")), _as_map(block.get("result_total"))
        paging = {k: {"next": nexts.get(k), "total": totals.get(k)} for k in commands if k in nexts or k in totals}
        return ok, failed, paging

    async def batch(
        self, commands: Mapping[str, tuple[str, Mapping[str, Any]]], *, halt: bool = False,
        priority: int = PRIORITY_NORMAL,
    ) -> tuple[dict[str, Any], dict[str, RestError]]:
        """Run ≤50 commands as one request; return (results by key, errors by key).

        Why split: ``batch`` answers 200 even when items fail, and each item must be handled
        on its own (bitrix24.md §9). With ``halt`` a key missing from both maps was not run.
        """
        payload = await self._batch_payload(commands, halt, priority)
        if payload is None:
            return {}, {}
        return _split_batch(payload.get("result"), commands)

    async def _batch_payload(
        self, commands: Mapping[str, tuple[str, Mapping[str, Any]]], halt: bool, priority: int
    ) -> dict[str, Any] | None:
        if len(commands) > BATCH_MAX_COMMANDS:
            raise ValueError(f"batch takes at most {BATCH_MAX_COMMANDS} commands, got {len(commands)}")
        if not commands:
            return None
        parts = ["halt=1" if halt else "halt=0"]
        for key, (method, params) in commands.items():
            if any(c in key for c in "[]&=") or not key:
                raise ValueError(f"batch key {key!r} cannot be encoded as cmd[<key>]")
            parts.append(f"cmd%5B{_quote_plus(key)}%5D={command_value(method, params)}")
        return await self._request("batch", "&".join(parts), priority)

    async def call_as(self, access_token: str, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """One call with a token that is not this portal's (an app event's, a post's) on this
        portal's budget and endpoint: one try, no refresh, every error raised.

        Why shared: a proof sent beside the bucket would spend the portal's requests behind the
        pusher's back and meet QUERY_LIMIT_EXCEEDED; why one try: the caller keeps the event
        stored and retries it on its own back-off, for as long as it takes.
        """
        await self._bucket.acquire()
        form = form_urlencode(encode_params(params))
        auth = f"auth={_quote_plus(access_token)}"
        status, payload = await self._post(method, f"{form}&{auth}" if form else auth)
        if "result" in payload:
            self._note_time(method, payload.get("time"))
            return payload["result"]
        error = str(payload.get("error", "bad_response"))
        if error == _RATE_LIMITED:
            self._bucket.saturate()
        raise RestError(error, str(payload.get("error_description", "")), status)

    def adopt(self, auth: PortalAuth) -> None:
        """Take tokens that came from elsewhere (an app update event) and are already stored.

        Why drop ``_pending``: it holds a pair from our own refresh that the event supersedes.
        """
        self.auth = auth
        self._pending = None

    # ------------------------------------------------------------------ request loop

    async def _request(self, method: str, form: str, priority: int = PRIORITY_NORMAL) -> dict[str, Any]:
        """POST ``form`` (urlencoded, without the token) until it gets an answer or gives up."""
        attempts = _Attempts(self._max_attempts)
        refreshed = False
        while True:
            await self._ensure_persisted()
            await self._bucket.acquire(priority)
            token = self.auth.access_token
            try:
                status, payload = await self._post(method, f"{form}&auth={_quote_plus(token)}" if form
                                                   else f"auth={_quote_plus(token)}")
            except RestError as exc:
                await self._retry_or_raise(method, exc, attempts)
                continue
            error = payload.get("error") if "result" not in payload else None
            if error is None:
                self._note_time(method, payload.get("time"))
                return payload
            exc = RestError(str(error), str(payload.get("error_description", "")), status)
            if error == _EXPIRED and not refreshed:
                log.info("bitrix24.rest.token_expired", method=method, domain=self.auth.domain)
                await self._refresh(token)
                refreshed = True
                continue
            if error == _RATE_LIMITED:
                self._bucket.saturate()
            elif error == _OPERATION_LIMITED:
                await self._wait_operating(method, payload, attempts, exc)
                continue
            await self._retry_or_raise(method, exc, attempts)

    async def _post(self, method: str, form: str) -> tuple[int, dict[str, Any]]:
        """One POST; network trouble and non-JSON 5xx become retryable ``RestError("network")``."""
        url = f"{self.auth.client_endpoint}{method}"
        body = form.encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        try:
            async with self._http.post(url, data=body, headers=headers, timeout=self._timeout) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise RestError("network", type(exc).__name__) from exc
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            code = "network" if status in _TRANSIENT_HTTP else "bad_response"
            raise RestError(code, f"HTTP {status} without a JSON object", status)
        return status, payload

    async def _retry_or_raise(self, method: str, exc: RestError, attempts: _Attempts) -> None:
        """Back off and return for the retryable errors; raise everything else."""
        if exc.code not in (_RATE_LIMITED, "network"):
            log.warning("bitrix24.rest.error", method=method, error=exc.code, http_status=exc.http_status)
            raise exc
        if not attempts.spend():
            log.error("bitrix24.rest.gave_up", method=method, error=exc.code, attempts=attempts.used)
            raise exc
        delay = self._backoff(attempts.used)
        log.info("bitrix24.rest.retry", method=method, error=exc.code, attempt=attempts.used, delay=round(delay, 3))
        await self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt, self._backoff_base, self._backoff_max)

    async def _wait_operating(
        self, method: str, payload: dict[str, Any], attempts: _Attempts, exc: RestError
    ) -> None:
        """429: wait until ``operating_reset_at`` (from this answer or the last success), else back off."""
        if not attempts.spend():
            log.error("bitrix24.rest.gave_up", method=method, error=exc.code, attempts=attempts.used)
            raise exc
        reset_at = _reset_at(payload.get("time")) or self._operating_reset.get(method)
        wait = (reset_at - self._wall()) if reset_at else 0.0
        if not 0 < wait <= self._max_operating_wait:
            wait = self._backoff(attempts.used)
        log.warning("bitrix24.rest.operating_limit", method=method, wait=round(wait, 3), attempt=attempts.used)
        await self._sleep(wait)

    def _note_time(self, method: str, block: Any) -> None:
        if not isinstance(block, dict):
            return
        self.last_time = block
        reset_at = _reset_at(block)
        if reset_at:
            self._operating_reset[method] = reset_at

    # ------------------------------------------------------------------ OAuth

    async def _refresh(self, stale_token: str) -> None:
        """Single-flight refresh: whoever holds the lock refreshes; the others find it done.

        The rotated pair is handed to ``on_tokens`` (persist it) before anyone uses it: a
        crash after using but before persisting would lose the only valid refresh token.
        """
        async with self._refresh_lock:
            current = self._pending or self.auth
            if current.access_token != stale_token:
                return  # another caller already refreshed
            self._pending = await refresh_tokens(self._http, current, timeout=self._timeout)
            log.info("bitrix24.token.refreshed", domain=self._pending.domain)
            await self._persist_locked()

    async def _ensure_persisted(self) -> None:
        if self._pending is None:
            return
        async with self._refresh_lock:
            await self._persist_locked()

    async def _persist_locked(self) -> None:
        """Hand the pending pair to ``on_tokens``; adopt it only when that succeeded."""
        pending = self._pending
        if pending is None:
            return
        if self._on_tokens is not None:
            try:
                await self._on_tokens(pending)
            except Exception as exc:
                # Keep the pair pending (the old refresh token is already burnt): the next
                # call retries persisting before it uses the new access token.
                log.error("bitrix24.token.persist_failed", domain=pending.domain, error=type(exc).__name__)
                raise RestError("token_persist_failed", type(exc).__name__) from exc
        self.auth = pending
        self._pending = None


async def refresh_tokens(
    http: aiohttp.ClientSession, auth: PortalAuth, *, timeout: aiohttp.ClientTimeout | None = None
) -> PortalAuth:
    """Exchange the refresh token for a new pair (rotation) at ``<server host>/oauth/token/``.

    A form POST keeps the client secret out of URLs and logs. Only a failure to *connect* is
    retried: after a request was sent its outcome is unknown, and a retry with a refresh
    token the server may already have rotated would only turn the error into
    ``invalid_grant``. Errors (``invalid_grant``, ``invalid_client``…) raise `RestError`.
    """
    form = {
        "grant_type": "refresh_token",
        "client_id": auth.client_id,
        "client_secret": auth.client_secret,
        "refresh_token": auth.refresh_token,
    }
    url = token_url(auth.server_endpoint)
    for attempt in range(3):
        try:
            async with http.post(url, data=form, timeout=timeout) as resp:
                status, text = resp.status, await resp.text()
            break
        except aiohttp.ClientConnectorError as exc:
            if attempt == 2:
                raise RestError("network", type(exc).__name__) from exc
            await asyncio.sleep(backoff(attempt + 1, 0.5, 1.0))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise RestError("network", type(exc).__name__) from exc
    return _parse_token_response(auth, status, text)


def _parse_token_response(auth: PortalAuth, status: int, text: str) -> PortalAuth:
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise RestError("bad_response", f"token endpoint answered HTTP {status} without JSON", status)
    if "error" in data or not data.get("access_token") or not data.get("refresh_token"):
        code = str(data.get("error", "bad_response"))
        log.warning("bitrix24.token.refresh_failed", error=code, http_status=status, domain=auth.domain)
        raise RestError(code, str(data.get("error_description", "")), status)
    if data.get("member_id") and data["member_id"] != auth.member_id:
        raise RestError("member_mismatch", "token response belongs to another portal", status)
    client_endpoint = str(data.get("client_endpoint") or auth.client_endpoint)
    # ``domain`` in the token response is the OAuth server's own host (oauth.bitrix.info),
    # so the portal domain is taken from client_endpoint, which follows a domain change.
    parts = urlsplit(client_endpoint)
    domain = f"{parts.hostname}:{parts.port}" if parts.hostname and parts.port else parts.hostname or auth.domain
    if client_endpoint == auth.client_endpoint:
        domain = auth.domain
    return replace(
        auth,
        access_token=str(data["access_token"]),
        refresh_token=str(data["refresh_token"]),
        client_endpoint=client_endpoint,
        server_endpoint=str(data.get("server_endpoint") or auth.server_endpoint),
        domain=domain,
    )


def _reset_at(block: Any) -> float | None:
    if isinstance(block, dict) and isinstance(block.get("operating_reset_at"), (int, float)):
        return float(block["operating_reset_at"])
    return None


def _as_map(value: Any) -> dict[str, Any]:
    """PHP sends an empty map as ``[]`` and a 0..n-1 map as a list; make both a dict."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    return {}


def _split_batch(
    result: Any, commands: Mapping[str, tuple[str, Mapping[str, Any]]]
) -> tuple[dict[str, Any], dict[str, RestError]]:
    block = result if isinstance(result, dict) else {}
    results = _as_map(block.get("result"))
    errors = _as_map(block.get("result_error"))
    ok = {key: results[key] for key in commands if key in results}
    failed = {}
    for key in commands:
        if key in errors:
            item = errors[key] if isinstance(errors[key], dict) else {}
            failed[key] = RestError(str(item.get("error", "unknown")), str(item.get("error_description", "")))
    if failed:
        codes = sorted({e.code for e in failed.values()})
        log.info("bitrix24.batch.partial", ok=len(ok), failed=len(failed), errors=codes)
    return ok, failed


__all__ = ["BATCH_MAX_COMMANDS", "PRIORITY_BULK", "PRIORITY_NORMAL", "PortalAuth", "RestClient", "RestError", "encode_params",
           "refresh_tokens", "token_url"]
