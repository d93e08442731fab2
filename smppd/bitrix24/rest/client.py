"""One portal's REST client: the request loop, its retry rules, and ``batch``.

Why in-house (bitrix24.md §12): we need per-item ``batch`` results (fast-bitrix24 raises for
the whole call), a single-flight OAuth refresh that persists the rotated refresh token
*before* it is used (`oauth.Tokens`), and retry rules that differ per error: 503
``QUERY_LIMIT_EXCEEDED`` is retried with backoff, 503 ``OVERLOAD_LIMIT`` (a manual block) is
not, 429 ``OPERATION_TIME_LIMIT`` waits until ``operating_reset_at``, 401 ``expired_token``
refreshes once. Tokens and the client secret travel only in POST bodies and are never logged.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
import structlog

from ...backoff import backoff
from ... import http_client
from ...model import PortalRecord
from .budget import PRIORITY_NORMAL, LeakyBucket
from .errors import EXPIRED, NETWORK, OPERATION_LIMITED, RATE_LIMITED, RestError
from .form import command_value, encode_params, form_urlencode, quote_plus
from .oauth import RefreshTurn, SaveTokens, Tokens

log = structlog.get_logger(__name__)

BATCH_MAX_COMMANDS = 50
#: HTTP statuses without a JSON body that a proxy in front of Bitrix24 may answer.
_TRANSIENT_HTTP = frozenset({502, 503, 504})
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


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
        portal: PortalRecord,
        *,
        rate: float | None,
        burst: int = 0,
        on_tokens: SaveTokens | None = None,
        refresh_turn: RefreshTurn | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        max_attempts: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_operating_wait: float = 600.0,
        request_timeout: float = 65.0,
    ) -> None:
        """``rate`` and ``burst`` are the portal's budget, from its ``[[app]]`` or ``[[portal]]``
        (config holds the defaults, once); ``rate=None`` leaves the client unmetered (tests, benches)."""
        if rate is not None and burst < 1:
            raise ValueError("a rate needs its burst: both come from the portal's [[app]] or [[portal]]")
        self._http = http
        self._sleep = sleep
        self._wall = wall_clock
        self._bucket = LeakyBucket(rate, burst, clock, sleep)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_operating_wait = max_operating_wait
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._tokens = Tokens(http, portal, on_tokens, self._timeout, refresh_turn)
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
            parts.append(f"cmd%5B{quote_plus(key)}%5D={command_value(method, params)}")
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
        auth = f"auth={quote_plus(access_token)}"
        status, payload = await self._post(method, f"{form}&{auth}" if form else auth)
        if "result" in payload:
            self._note_time(method, payload.get("time"))
            return payload["result"]
        error = str(payload.get("error", "bad_response"))
        if error == RATE_LIMITED:
            self._bucket.saturate()
        raise RestError(error, str(payload.get("error_description", "")), status)

    @property
    def portal(self) -> PortalRecord:
        """The portal as this client last knew it: its tokens are the ones now in use."""
        return self._tokens.current

    def adopt(self, portal: PortalRecord) -> None:
        """Take a record that came from elsewhere (an app update event) and is already stored."""
        self._tokens.adopt(portal)

    # ------------------------------------------------------------------ request loop

    async def _request(self, method: str, form: str, priority: int = PRIORITY_NORMAL) -> dict[str, Any]:
        """POST ``form`` (urlencoded, without the token) until it gets an answer or gives up."""
        attempts = _Attempts(self._max_attempts)
        refreshed = False
        while True:
            await self._tokens.ensure_stored()
            await self._bucket.acquire(priority)
            token = self._tokens.current.access_token
            try:
                status, payload = await self._post(method, f"{form}&auth={quote_plus(token)}" if form
                                                   else f"auth={quote_plus(token)}")
            except RestError as exc:
                await self._retry_or_raise(method, exc, attempts)
                continue
            error = payload.get("error") if "result" not in payload else None
            if error is None:
                self._note_time(method, payload.get("time"))
                return payload
            exc = RestError(str(error), str(payload.get("error_description", "")), status)
            if error == EXPIRED and not refreshed:
                log.info("bitrix24.rest.token_expired", method=method, domain=self.portal.domain)
                await self._tokens.refresh(token)
                refreshed = True
                continue
            if error == RATE_LIMITED:
                self._bucket.saturate()
            elif error == OPERATION_LIMITED:
                await self._wait_operating(method, payload, attempts, exc)
                continue
            await self._retry_or_raise(method, exc, attempts)

    async def _post(self, method: str, form: str) -> tuple[int, dict[str, Any]]:
        """One POST; no answer and non-JSON 5xx become retryable ``RestError("network")``."""
        try:
            answer = await http_client.post(self._http, f"{self.portal.client_endpoint}{method}", form.encode(),
                                            headers=_FORM, timeout=self._timeout)
        except (http_client.Unavailable, http_client.Ambiguous) as exc:
            raise RestError(NETWORK, exc.cause) from exc
        try:
            payload = answer.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            code = NETWORK if answer.status in _TRANSIENT_HTTP else "bad_response"
            raise RestError(code, f"HTTP {answer.status} without a JSON object", answer.status)
        return answer.status, payload

    async def _retry_or_raise(self, method: str, exc: RestError, attempts: _Attempts) -> None:
        """Back off and return for the retryable errors; raise everything else."""
        if exc.code not in (RATE_LIMITED, NETWORK):
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


__all__ = ["BATCH_MAX_COMMANDS", "RestClient"]
