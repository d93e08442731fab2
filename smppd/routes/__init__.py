"""Routes: one module per kind; ``make_route`` is the one place that picks the class.

Each kind is an asyncio shell (``smpp``, and ``smsru``/``smsc`` over ``http``) around
sans-I/O rules in ``policy/`` (cap, flow, submit verdicts, backlog, batches, resends);
every kind shows the daemon one face, ``base.Route``.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import aiohttp

from ..config import RouteConfig, SmscRouteConfig, SmsRuRouteConfig
from ..smpp.receipts import ShortMessage
from ..store import Store
from .base import Route

__all__ = ["Route", "make_route"]


def make_route(cfg: RouteConfig, store: Store, http: aiohttp.ClientSession | None = None, *,
               on_mo: Callable[[str, ShortMessage], Awaitable[None]] | None = None) -> Route:
    """The route object for a config: SmppRoute, SmsRuRoute or SmscRoute (one interface, ``Route``).

    ``on_mo`` hears replies (a STOP) where the kind carries them: SMPP binds do.
    """
    if isinstance(cfg, SmsRuRouteConfig):
        from .smsru import SmsRuRoute

        return SmsRuRoute(cfg, store, http)
    if isinstance(cfg, SmscRouteConfig):
        from .smsc import SmscRoute

        return SmscRoute(cfg, store, http)
    from .smpp import SmppRoute

    route = SmppRoute(cfg, store)
    route.on_mo = on_mo
    return route
