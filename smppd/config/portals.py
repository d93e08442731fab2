"""``[[portal]]``, ``[[app]]`` and ``[app_events]``: the Bitrix24 portals we serve and
how much we keep of installs we cannot prove yet."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..model import PortalRecord
from .readers import ConfigError, integer, number, only, secret, string, tables, url


@dataclass(frozen=True)
class PortalConfig(PortalRecord):
    """A ``[[portal]]``: the portal's one record (``model.PortalRecord``) and its REST budget.

    The tokens here only seed the store: once the app install event arrives,
    or a refresh rotates them, the store's copy wins.
    """

    rate: float = 2.0
    burst: int = 50


@dataclass(frozen=True)
class AppConfig:
    """Our local application as created on one portal, before (and after) it is installed.

    The install event brings member_id and tokens; this entry is what makes us trust it:
    the event's endpoints must be these, and its token must answer ``app.info`` with this
    client_id on this client_endpoint (never on one taken from the event).
    """

    domain: str
    client_id: str
    client_secret: str = field(repr=False)
    client_endpoint: str = ""  # default https://<domain>/rest/
    server_endpoint: str = "https://oauth.bitrix.info/rest/"
    rate: float = 2.0
    burst: int = 50


@dataclass(frozen=True)
class AppEventsConfig:
    """``[app_events]``: how long and how many unproven events for unknown domains are kept.

    Why bounded: anyone holding the URL key can post installs for made-up domains; each is
    kept (a genuine one may arrive before its ``[[app]]`` is written) but never more than
    ``max_unknown`` at once, nor longer than ``unknown_max_age`` seconds.
    """

    max_unknown: int = 20
    unknown_max_age: float = 7 * 86400.0


_DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+(:[0-9]{1,5})?")


def normalize_domain(value: str) -> str | None:
    """A portal's ``host[:port]`` as Bitrix24 reports it in ``auth[domain]``, lower-cased; None if
    it is not one. Why a port: an on-premise portal on a non-standard port reports
    ``crm.example.by:8443``, and that is the string every event and post carries."""
    domain = value.strip().lower()
    if not _DOMAIN_RE.fullmatch(domain):
        return None
    host, _, port = domain.partition(":")
    if port and not 0 < int(port) < 65536:
        return None
    return domain


def _domain(t: Mapping[str, Any], key: str) -> str:
    domain = normalize_domain(string(t, key, "domain"))
    if domain is None:
        raise ConfigError(f"{key}.domain", "must be the portal's host name with an optional port, as Bitrix24"
                          f" reports it, e.g. example.bitrix24.by or crm.example.by:8443, got {t['domain']!r}")
    return domain


def portals(items: Any) -> dict[str, PortalConfig]:
    out: dict[str, PortalConfig] = {}
    for key, t in tables(items, "portal", PortalConfig):
        p = PortalConfig(
            member_id=string(t, key, "member_id"),
            domain=_domain(t, key),
            client_endpoint=url(t, key, "client_endpoint"),
            server_endpoint=url(t, key, "server_endpoint"),
            client_id=string(t, key, "client_id"),
            client_secret=secret(t, key, "client_secret"),
            application_token=secret(t, key, "application_token"),
            access_token=secret(t, key, "access_token", default=PortalConfig.access_token),
            refresh_token=secret(t, key, "refresh_token", default=PortalConfig.refresh_token),
            rate=number(t, key, "rate", default=PortalConfig.rate, low=0.01),
            burst=integer(t, key, "burst", default=PortalConfig.burst, low=1, high=10_000),
        )
        if p.member_id in out:
            raise ConfigError(f"{key}.member_id", f"duplicate member_id {p.member_id!r}")
        out[p.member_id] = p
    return out


def apps(items: Any) -> dict[str, AppConfig]:
    out: dict[str, AppConfig] = {}
    for key, t in tables(items, "app", AppConfig):
        domain = _domain(t, key)
        app = AppConfig(
            domain=domain,
            client_id=string(t, key, "client_id"),
            client_secret=string(t, key, "client_secret"),
            client_endpoint=url(t, key, "client_endpoint", default=f"https://{domain}/rest/"),
            server_endpoint=url(t, key, "server_endpoint", default=AppConfig.server_endpoint),
            rate=number(t, key, "rate", default=AppConfig.rate, low=0.01),
            burst=integer(t, key, "burst", default=AppConfig.burst, low=1, high=10_000),
        )
        if domain in out:
            raise ConfigError(f"{key}.domain", f"duplicate domain {domain!r}")
        out[domain] = app
    return out


def app_events(t: Any) -> AppEventsConfig:
    if not isinstance(t, dict):
        raise ConfigError("app_events", "must be a table")
    only(t, "app_events", {"max_unknown", "unknown_max_age"})
    return AppEventsConfig(
        max_unknown=integer(t, "app_events", "max_unknown", default=AppEventsConfig.max_unknown,
                            low=1, high=10_000),
        unknown_max_age=number(t, "app_events", "unknown_max_age", default=AppEventsConfig.unknown_max_age,
                               low=60.0),
    )
