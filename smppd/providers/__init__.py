"""Routes: one module per kind; ``make_route`` is the one place that picks the class."""

from __future__ import annotations

from typing import Any

import aiohttp

from ..config import RouteConfig, SmscRouteConfig, SmsRuRouteConfig
from ..store import Store


def make_route(cfg: RouteConfig, store: Store, http: aiohttp.ClientSession | None = None) -> Any:
    """The route object for a config: SmppRoute, SmsRuRoute or SmscRoute (same small interface)."""
    if isinstance(cfg, SmsRuRouteConfig):
        from .smsru import SmsRuRoute

        return SmsRuRoute(cfg, store, http)
    if isinstance(cfg, SmscRouteConfig):
        from .smsc import SmscRoute

        return SmscRoute(cfg, store, http)
    from .smpp import SmppRoute

    return SmppRoute(cfg, store)
