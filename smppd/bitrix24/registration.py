"""Provider registration: our CODEs as SMS providers of one portal (bitrix24.md §2, §3).

Why idempotent by comparison: ``sender.add`` refuses a CODE that exists, and an app update
silently drops every provider (§11), so "make the portal's list equal ours" is the only
safe operation to run after install, after update, and by hand. ``sender.list`` returns
plain CODE strings, not objects (§13 lists code that got this wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import quote

import structlog

from ..config import Config, SenderConfig
from .rest import RestClient, RestError

log = structlog.get_logger(__name__)

#: What an admin should do about each Bitrix24 error, in one line.
_HINTS: dict[str, str] = {
    "ACCESS_DENIED": "the token is not a portal administrator's or has no application context; "
                     "install the local app as an administrator (an incoming webhook cannot register providers)",
    "insufficient_scope": "the local app lacks the 'messageservice' scope; add it and reinstall",
    "invalid_scope": "the local app lacks the 'messageservice' scope; add it and reinstall",
    "ERROR_WRONG_HANDLER_URL": "Bitrix24 refused the HANDLER URL: shim.public_url must be a public "
                               "host name with a dot, reachable from the internet",
    "ERROR_UNSUPPORTED_PROTOCOL": "the HANDLER URL must start with http:// or https://",
    "ERROR_SENDER_VALIDATION_FAILURE": "Bitrix24 refused the provider fields",
    "ERROR_SENDER_ADD_FAILURE": "Bitrix24 could not save the provider; try again later",
    "ERROR_SENDER_NOT_FOUND": "the provider is not registered",
    "expired_token": "the access token expired and could not be refreshed",
    "invalid_grant": "the refresh token is no longer valid; reinstall the local app",
    "invalid_client": "client_id/client_secret are wrong or the app was removed; check [[app]]",
    "PAYMENT_REQUIRED": "the application's subscription has lapsed",
    "NO_AUTH_FOUND": "the portal does not accept our token; reinstall the local app",
    "QUERY_LIMIT_EXCEEDED": "the portal's rate limit held for too long; try again in a minute",
    "OPERATION_TIME_LIMIT": "the method's operating-time limit is exhausted; try again in ten minutes",
    "OVERLOAD_LIMIT": "Bitrix24 support blocked REST for this portal; contact them",
    "network": "the portal could not be reached",
    "bad_response": "the portal answered something that is not Bitrix24 REST",
    "token_persist_failed": "the refreshed tokens could not be saved",
}


def explain(err: RestError) -> str:
    """``CODE: description — what to do``: the text an admin sees for a Bitrix24 error."""
    text = err.code + (f" ({err.description})" if err.description else "")
    hint = _HINTS.get(err.code)
    return f"{text}: {hint}" if hint else text


@dataclass
class RegistrationReport:
    """What one portal's registration did, per CODE; ``errors`` maps CODE (or ``*``) to text."""

    member_id: str
    domain: str
    added: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "domain": self.domain, "added": self.added,
                "present": self.present, "updated": self.updated, "removed": self.removed, "errors": self.errors, "ok": self.ok}


def handler_url(public_url: str, code: str, key: str) -> str:
    """``https://host/bitrix24/CODE?key=…``: the URL key is what lets the shim tell our posts apart."""
    return f"{public_url.rstrip('/')}/bitrix24/{quote(code, safe='')}?key={quote(key, safe='')}"


def senders_for(config: Config, member_id: str) -> list[SenderConfig]:
    """The CODEs this portal should have: those bound to it plus those bound to none."""
    return [s for s in config.senders.values() if s.portal in (None, member_id)]


async def _listed(client: RestClient) -> set[str]:
    result = await client.call("messageservice.sender.list")
    if isinstance(result, dict):  # PHP list that came back as a map
        result = list(result.values())
    if not isinstance(result, list):
        raise RestError("bad_response", "messageservice.sender.list did not return a list")
    return {str(code).lower() for code in result}


def _fields(sender: SenderConfig, public_url: str, handler_key: str) -> dict[str, str]:
    return {
        "HANDLER": handler_url(public_url, sender.code, handler_key),
        "NAME": sender.name,
        "DESCRIPTION": f"smppd: SMS from {sender.sender_id}",
    }


async def register(client: RestClient, senders: Iterable[SenderConfig], *, public_url: str,
                   handler_key: str, update: bool = False) -> RegistrationReport:
    """Add every CODE the portal lacks; never raises `RestError`.

    Present CODEs are left alone unless ``update``: ``sender.list`` shows no HANDLER, so
    after a new ``handler_key`` or ``public_url`` only ``sender.update`` can bring them in line.
    """
    report = RegistrationReport(client.portal.member_id, client.portal.domain)
    try:
        present = await _listed(client)
    except RestError as e:
        report.errors["*"] = explain(e)
        log.warning("bitrix24.register.failed", domain=report.domain, method="messageservice.sender.list",
                    error=e.code)
        return report
    for sender in senders:
        if sender.code in present:
            if not update:
                report.present.append(sender.code)
                continue
            try:
                await client.call("messageservice.sender.update",
                                  {"CODE": sender.code, **_fields(sender, public_url, handler_key)})
            except RestError as e:
                report.errors[sender.code] = explain(e)
                log.warning("bitrix24.register.failed", domain=report.domain,
                            method="messageservice.sender.update", code=sender.code, error=e.code)
                continue
            report.updated.append(sender.code)
            continue
        params = {"CODE": sender.code, "TYPE": "SMS", **_fields(sender, public_url, handler_key)}
        try:
            await client.call("messageservice.sender.add", params)
        except RestError as e:
            if e.code == "ERROR_SENDER_ALREADY_INSTALLED":  # added meanwhile by another run
                report.present.append(sender.code)
                continue
            report.errors[sender.code] = explain(e)
            log.warning("bitrix24.register.failed", domain=report.domain, method="messageservice.sender.add",
                        code=sender.code, error=e.code)
            continue
        report.added.append(sender.code)
    log.info("bitrix24.registered", domain=report.domain, added=report.added, present=report.present,
             updated=report.updated, errors=sorted(report.errors))
    return report


async def unregister(client: RestClient, senders: Iterable[SenderConfig]) -> RegistrationReport:
    """Delete our CODEs from the portal; CODEs that are not there are simply reported absent."""
    report = RegistrationReport(client.portal.member_id, client.portal.domain)
    try:
        present = await _listed(client)
    except RestError as e:
        report.errors["*"] = explain(e)
        return report
    for sender in senders:
        if sender.code not in present:
            continue
        try:
            await client.call("messageservice.sender.delete", {"CODE": sender.code})
        except RestError as e:
            if e.code != "ERROR_SENDER_NOT_FOUND":
                report.errors[sender.code] = explain(e)
                log.warning("bitrix24.unregister.failed", domain=report.domain, code=sender.code, error=e.code)
                continue
        report.removed.append(sender.code)
    log.info("bitrix24.unregistered", domain=report.domain, removed=report.removed, errors=sorted(report.errors))
    return report


__all__ = ["RegistrationReport", "explain", "handler_url", "register", "senders_for", "unregister"]
