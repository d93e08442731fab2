"""App lifecycle events: ONAPPINSTALL, ONAPPUPDATE, ONAPPUNINSTALL (bitrix24.md §11).

The shim only checks the URL key and forwards the form; trust is decided here because
the portal table lives in the daemon. Why each check:

* **install / update** carry fresh tokens but nothing we already know (update even brings a
  *new* ``application_token``), so the event proves itself by working: its access token
  must answer ``app.info`` with our ``client_id`` on the ``client_endpoint`` of the
  configured ``[[app]]``, never on an endpoint taken from the event. The event's endpoints
  must also equal the configured ones: ``server_endpoint`` receives our client secret on
  every refresh, so it can never come from a post.
* **install before configuration**: Bitrix24 installs a server-side local app the moment
  the admin saves it, before they could copy its client_id and secret into ``[[app]]``
  [inferred from the local-app flow]. Such an event (URL key correct, no ``[[app]]`` for its
  domain) is kept as a *pending* portal (empty client_id), unused; ``activate_pending`` at
  the next start verifies it exactly like a live event once ``[[app]]`` exists.
* **uninstall** carries no token, only ``application_token``: it must match the stored one
  (constant time), and the portal must be known.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
import structlog

from ..config import AppConfig, Config
from ..rpc import RpcError
from ..store import PortalRecord
from .rest import PortalAuth, RestClient, RestError

log = structlog.get_logger(__name__)

EVENTS = ("ONAPPINSTALL", "ONAPPUPDATE", "ONAPPUNINSTALL")
_TOKEN_KEYS = ("access_token", "refresh_token")
_ALWAYS_KEYS = ("member_id", "domain", "application_token", "client_endpoint", "server_endpoint")


@dataclass(frozen=True)
class AppEvent:
    """One lifecycle event as posted (``event`` + the ``auth[...]`` block)."""

    event: str
    member_id: str
    domain: str
    application_token: str = field(repr=False)
    client_endpoint: str
    server_endpoint: str
    access_token: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AppEvent:
        """Validate what the shim forwarded; every refusal names the form field."""
        event = params.get("event")
        if not isinstance(event, str) or event.upper() not in EVENTS:
            raise RpcError("bad_request", f"event: must be one of {', '.join(EVENTS)}", field="event")
        event = event.upper()
        auth = params.get("auth")
        if not isinstance(auth, Mapping):
            raise RpcError("bad_request", "auth: missing", field="auth")
        needed = _ALWAYS_KEYS + (_TOKEN_KEYS if event != "ONAPPUNINSTALL" else ())
        values: dict[str, str] = {}
        for key in needed:
            value = auth.get(key)
            if not isinstance(value, str) or not value:
                raise RpcError("bad_request", f"auth[{key}]: missing", field=f"auth[{key}]")
            values[key] = value
        values["domain"] = values["domain"].lower()
        for key in ("client_endpoint", "server_endpoint"):
            if not values[key].endswith("/"):
                values[key] += "/"
        return cls(event=event, **values)


class Installer:
    """Turns verified lifecycle events into portal records; the daemon does the wiring."""

    def __init__(
        self,
        config: Config,
        http: aiohttp.ClientSession,
        portals: Callable[[], Mapping[str, PortalRecord]],
        *,
        installed: Callable[[PortalRecord, str], Awaitable[None]],
        uninstalled: Callable[[str], Awaitable[None]],
        pending: Callable[[PortalRecord], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self._http = http
        self._portals = portals
        self._installed = installed
        self._uninstalled = uninstalled
        self._pending = pending

    async def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        event = AppEvent.from_params(params)
        if event.event == "ONAPPUNINSTALL":
            await self._uninstall(event)
            return {"event": event.event, "member_id": event.member_id}
        if event.domain not in self.config.apps and self._pending is not None \
                and event.member_id not in self._portals():
            await self._pending(pending_record(event))
            log.warning("bitrix24.app_event.pending", event_name=event.event, domain=event.domain,
                        member_id=event.member_id,
                        hint="add an [[app]] with this domain, client_id and client_secret, then restart smppd")
            return {"event": event.event, "member_id": event.member_id, "pending": True}
        app = self._app_for(event)
        record = await self._verify(event, app)
        await self._installed(record, event.event)
        log.info("bitrix24.app_event", event_name=event.event, domain=event.domain, member_id=event.member_id)
        return {"event": event.event, "member_id": event.member_id}

    def _app_for(self, event: AppEvent) -> AppConfig:
        app = self.config.apps.get(event.domain)
        if app is None:
            log.warning("bitrix24.app_event.refused", event_name=event.event, domain=event.domain,
                        reason="no [[app]] for this domain")
            raise RpcError("forbidden", "no [[app]] is configured for this domain")
        for key in ("client_endpoint", "server_endpoint"):
            if getattr(event, key) != getattr(app, key):
                log.warning("bitrix24.app_event.refused", event_name=event.event, domain=event.domain,
                            reason=f"{key} differs from the configured one")
                raise RpcError("forbidden", f"{key} differs from app.{key}")
        known = self._portals().get(event.member_id)
        if known is not None and known.domain != event.domain:
            raise RpcError("forbidden", "this member_id is installed under another domain")
        return app

    async def _verify(self, event: AppEvent, app: AppConfig) -> PortalRecord:
        """Prove the tokens by using them; keep a pair the call itself may have rotated."""
        auth = PortalAuth(member_id=event.member_id, domain=event.domain, client_endpoint=app.client_endpoint,
                          server_endpoint=app.server_endpoint, access_token=event.access_token,
                          refresh_token=event.refresh_token, client_id=app.client_id,
                          client_secret=app.client_secret)
        latest = [auth]

        async def keep(new: PortalAuth) -> None:
            latest.append(new)

        client = RestClient(self._http, auth, rate=None, on_tokens=keep, max_attempts=3)
        try:
            info = await client.call("app.info")
        except RestError as e:
            log.warning("bitrix24.app_event.refused", event_name=event.event, domain=event.domain,
                        reason="app.info failed", error=e.code)
            if e.code in ("network", "bad_response", "QUERY_LIMIT_EXCEEDED", "OVERLOAD_LIMIT"):
                raise RpcError("unavailable", f"cannot verify the event with the portal: {e.code}") from None
            raise RpcError("forbidden", "the event's token is not valid on the configured portal") from None
        code = info.get("CODE") if isinstance(info, Mapping) else None
        if not isinstance(code, str) or not hmac.compare_digest(code.encode(), app.client_id.encode()):
            log.warning("bitrix24.app_event.refused", event_name=event.event, domain=event.domain,
                        reason="app.info names another application")
            raise RpcError("forbidden", "the event's token belongs to another application")
        final = latest[-1]
        return PortalRecord(
            member_id=event.member_id, domain=event.domain, client_endpoint=app.client_endpoint,
            server_endpoint=app.server_endpoint, client_id=app.client_id, client_secret=app.client_secret,
            application_token=event.application_token, access_token=final.access_token,
            refresh_token=final.refresh_token,
        )

    async def _uninstall(self, event: AppEvent) -> None:
        known = self._portals().get(event.member_id)
        if known is None or not hmac.compare_digest(event.application_token.encode(),
                                                     known.application_token.encode()):
            log.warning("bitrix24.app_event.refused", event_name=event.event, domain=event.domain,
                        reason="unknown portal" if known is None else "application_token does not match")
            raise RpcError("forbidden", "unknown portal or wrong application_token")
        await self._uninstalled(event.member_id)
        log.info("bitrix24.app_event", event_name=event.event, domain=event.domain, member_id=event.member_id)


    async def activate(self, pending: PortalRecord) -> PortalRecord | None:
        """Verify a pending install now that ``[[app]]`` may exist; None while it does not."""
        event = AppEvent(event="ONAPPINSTALL", member_id=pending.member_id, domain=pending.domain,
                         application_token=pending.application_token,
                         client_endpoint=pending.client_endpoint, server_endpoint=pending.server_endpoint,
                         access_token=pending.access_token, refresh_token=pending.refresh_token)
        if event.domain not in self.config.apps:
            return None
        return await self._verify(event, self._app_for(event))


def pending_record(event: AppEvent) -> PortalRecord:
    """An install we cannot verify yet: no client_id, so nothing will ever use it as is."""
    return PortalRecord(member_id=event.member_id, domain=event.domain, client_endpoint=event.client_endpoint,
                        server_endpoint=event.server_endpoint, client_id="", client_secret="",
                        application_token=event.application_token, access_token=event.access_token,
                        refresh_token=event.refresh_token)


def is_pending(portal: PortalRecord) -> bool:
    return not portal.client_id


__all__ = ["AppEvent", "EVENTS", "Installer", "is_pending", "pending_record"]
