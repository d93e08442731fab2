"""The app's credentials on the simulated portal: its OAuth server, token pairs, and the
install/update/uninstall events that carry them to the app (bitrix24.md §11).

Why a part of its own: the token rules (single-use refresh tokens, revocation on
uninstall, a separate OAuth host) are what the daemon's refresh and recovery are
tested against.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from .wire import _ApiError, _json, _Token

log = structlog.get_logger(__name__)


class OAuthServer:
    """Mixed into ``SimulatedPortal``; the state it uses is the portal's (declared here)."""

    member_id: str
    domain: str
    client_id: str
    client_secret: str
    application_token: str
    access_ttl: float
    refresh_ttl: float
    scope: str
    admin_user_id: int
    app_version: int
    installed: bool
    senders: dict[str, dict[str, Any]]
    token_requests: int
    refreshes: int
    access_token: str
    refresh_token: str
    _tokens: dict[str, _Token]
    _refresh_tokens: dict[str, float]
    _refresh_users: dict[str, int]
    _base_url: str | None
    _oauth_base_url: str | None

    client_endpoint: str  # properties of the portal, once started
    server_endpoint: str

    def expire_access_token(self) -> None:
        """Force the current access token to be expired now (next call gets ``expired_token``)."""
        self._tokens[self.access_token].expires_at = time.time() - 1

    def user_oauth_pair(self, user_id: int) -> tuple[str, str]:
        """(access, refresh) of our app for any user who opened it: a real pair of our app, for a
        user who is not necessarily an admin (``user.admin`` tells)."""
        pair = self._issue_pair(user_id, keep=False)
        return pair["access_token"], pair["refresh_token"]

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
