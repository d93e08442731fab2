"""OAuth 2.0 for one portal: the refresh at the OAuth server, and the rule that a rotated
refresh token is stored durably before anyone uses it.

Refresh tokens are single-use: the refresh that rotates them burns the old one. A crash after
using the new pair but before storing it would leave the portal with no valid refresh token
(an administrator would have to reinstall the app), so `Tokens` hands the pair to the store
first and adopts it only when that succeeded.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import structlog

from ...backoff import backoff
from ... import http_client
from ...model import PortalRecord
from .errors import NETWORK, RestError

log = structlog.get_logger(__name__)

#: Where a refreshed record goes before it is used (the store's ``save_tokens``).
SaveTokens = Callable[[PortalRecord], Awaitable[None]]

#: Held (by member_id) while this node refreshes a portal when other nodes share the
#: portal's store: it yields the pair stored once no other node refreshes it (the store's
#: ``refresh_turn``), None when the portal is not stored.
RefreshTurn = Callable[[str], AbstractAsyncContextManager[PortalRecord | None]]


def token_url(server_endpoint: str) -> str:
    """``https://oauth.bitrix.info/rest/`` -> ``https://oauth.bitrix.info/oauth/token/``.

    Why from ``server_endpoint``: RU portals use ``oauth.bitrix24.tech`` (bitrix24.md §10),
    so the host must come from what the portal told us, never be hard-coded.
    """
    parts = urlsplit(server_endpoint)
    if not parts.scheme or not parts.netloc:
        raise ValueError("server_endpoint must be an absolute URL")
    return f"{parts.scheme}://{parts.netloc}/oauth/token/"


async def refresh_tokens(
    http: aiohttp.ClientSession, portal: PortalRecord, *, timeout: aiohttp.ClientTimeout | None = None
) -> PortalRecord:
    """Exchange the refresh token for a new pair (rotation) at ``<server host>/oauth/token/``.

    A form POST keeps the client secret out of URLs and logs. Only a failure to *connect* is
    retried: after a request was sent its outcome is unknown, and a retry with a refresh
    token the server may already have rotated would only turn the error into
    ``invalid_grant``. Errors (``invalid_grant``, ``invalid_client``…) raise `RestError`.
    """
    form = {
        "grant_type": "refresh_token",
        "client_id": portal.client_id,
        "client_secret": portal.client_secret,
        "refresh_token": portal.refresh_token,
    }
    url = token_url(portal.server_endpoint)
    for attempt in range(3):
        try:
            answer = await http_client.post(http, url, form, timeout=timeout)
            break
        except http_client.Unavailable as exc:  # never sent: the refresh token is not spent
            if attempt == 2:
                raise RestError(NETWORK, exc.cause) from exc
            await asyncio.sleep(backoff(attempt + 1, 0.5, 1.0))
        except http_client.Ambiguous as exc:
            raise RestError(NETWORK, exc.cause) from exc
    return parse_token_response(portal, answer.status, answer.text())


def parse_token_response(portal: PortalRecord, status: int, text: str) -> PortalRecord:
    """The portal's record with the answer's tokens (and endpoints, which follow a domain change)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise RestError("bad_response", f"token endpoint answered HTTP {status} without JSON", status)
    if "error" in data or not data.get("access_token") or not data.get("refresh_token"):
        code = str(data.get("error", "bad_response"))
        log.warning("bitrix24.token.refresh_failed", error=code, http_status=status, domain=portal.domain)
        raise RestError(code, str(data.get("error_description", "")), status)
    if data.get("member_id") and data["member_id"] != portal.member_id:
        raise RestError("member_mismatch", "token response belongs to another portal", status)
    client_endpoint = str(data.get("client_endpoint") or portal.client_endpoint)
    # ``domain`` in the token response is the OAuth server's own host (oauth.bitrix.info),
    # so the portal domain is taken from client_endpoint, which follows a domain change.
    parts = urlsplit(client_endpoint)
    domain = f"{parts.hostname}:{parts.port}" if parts.hostname and parts.port else parts.hostname or portal.domain
    if client_endpoint == portal.client_endpoint:
        domain = portal.domain
    return replace(
        portal.with_tokens(str(data["access_token"]), str(data["refresh_token"])),
        client_endpoint=client_endpoint,
        server_endpoint=str(data.get("server_endpoint") or portal.server_endpoint),
        domain=domain,
    )


class Tokens:
    """The portal's current record for one client: single-flight refresh, stored before use."""

    def __init__(self, http: aiohttp.ClientSession, portal: PortalRecord, on_tokens: SaveTokens | None,
                 timeout: aiohttp.ClientTimeout, refresh_turn: RefreshTurn | None = None) -> None:
        self.current = portal
        self._refresh_turn = refresh_turn
        self._http = http
        self._on_tokens = on_tokens
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._pending: PortalRecord | None = None  # refreshed but not yet stored

    def adopt(self, portal: PortalRecord) -> None:
        """Take a record that came from elsewhere (an app update event) and is already stored.

        Why drop ``_pending``: it holds a pair from our own refresh that the event supersedes.
        """
        self.current = portal
        self._pending = None

    async def refresh(self, stale_token: str) -> None:
        """Single-flight refresh: whoever holds the lock refreshes; the others find it done.

        The rotated pair is handed to ``on_tokens`` (persist it) before anyone uses it: a
        crash after using but before persisting would lose the only valid refresh token.
        """
        async with self._lock:
            current = self._pending or self.current
            if current.access_token != stale_token:
                return  # another caller already refreshed
            if self._refresh_turn is None:
                await self._spend_locked(current)
                return
            async with self._refresh_turn(current.member_id) as stored:
                if (self._pending is None and stored is not None
                        and stored.refresh_token != current.refresh_token):
                    # Another node spent our refresh token and stored its successor: spending
                    # ours now would be invalid_grant, so the stored pair is ours too.
                    self.current = current.with_tokens(stored.access_token, stored.refresh_token)
                    log.info("bitrix24.token.adopted", domain=current.domain)
                    return
                await self._spend_locked(current)

    async def _spend_locked(self, current: PortalRecord) -> None:
        """Spend the refresh token at the OAuth server and store the new pair before its use."""
        self._pending = await refresh_tokens(self._http, current, timeout=self._timeout)
        log.info("bitrix24.token.refreshed", domain=self._pending.domain)
        await self._persist_locked()

    async def ensure_stored(self) -> None:
        """Before a request: a pair whose storing failed is stored now, or the request fails."""
        if self._pending is None:
            return
        async with self._lock:
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
        self.current = pending
        self._pending = None


__all__ = ["RefreshTurn", "SaveTokens", "Tokens", "parse_token_response", "refresh_tokens", "token_url"]
