"""The daemon: the store, one route per operator, one pusher per portal, the socket.

Start order matters for "nothing accepted is lost": the store opens first,
routes reload what was never confirmed, and only then does the socket accept
intake.  Stop order is the reverse: the socket closes first (the shim answers
503, Bitrix24 shows the failure), routes drain and unbind, the store closes.
"""

from __future__ import annotations

import asyncio
import os
from types import MappingProxyType
from typing import Any, Mapping

import aiohttp
import structlog

from .bitrix24.pusher import StatusPusher
from .bitrix24.rest import PortalAuth, RestClient
from .config import Config
from .admin import Admin
from .intake import Intake
from .ops import Ops, start_ops, stop_ops
from .providers.smpp import SmppRoute
from .rpc import RpcServer
from .store import OpenMessage, PortalRecord, Store

log = structlog.get_logger(__name__)

RECEIPT_SWEEP_INTERVAL = 60.0


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.daemon.database)
        self.routes: dict[str, SmppRoute] = {}
        self.pushers: dict[str, StatusPusher] = {}
        self._portals: Mapping[str, PortalRecord] = MappingProxyType({})
        self._http: aiohttp.ClientSession | None = None
        self._rpc: RpcServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.ops: Ops | None = None
        self.ready = asyncio.Event()
        self._stopped = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.config.daemon.database)), exist_ok=True)
        await self.store.open()
        for p in self.config.portals.values():
            await self.store.seed_portal(PortalRecord(
                p.member_id, p.domain, p.client_endpoint, p.server_endpoint, p.client_id, p.client_secret,
                p.application_token, p.access_token, p.refresh_token,
            ))
        await self._load_portals()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        for member_id, portal in self._portals.items():
            cfg = self.config.portals.get(member_id)
            client = RestClient(self._http, _auth(portal), rate=cfg.rate if cfg else 2.0,
                                burst=cfg.burst if cfg else 50, on_tokens=self._save_tokens)
            self.pushers[member_id] = StatusPusher(self.store, client)
        self.ops = await start_ops(self)
        for name, route_cfg in self.config.routes.items():
            route = SmppRoute(route_cfg, self.store)
            reloaded = await route.load_open()
            if reloaded:
                log.info("route_reloaded_open_messages", route=name, messages=reloaded, segments=route.depth)
            self.routes[name] = route
        for route in self.routes.values():
            self._tasks.append(asyncio.create_task(route.run(), name=f"route-{route.name}"))
        for pusher in self.pushers.values():
            self._tasks.append(asyncio.create_task(pusher.run(), name=f"pusher-{pusher.member_id}"))
        self._tasks.append(asyncio.create_task(self._sweep_receipts(), name="receipt-sweep"))
        intake = self.intake = Intake(self.config, self.store, lambda: self._portals, self.dispatch)
        self._rpc = RpcServer(
            self.config.daemon.socket_path,
            {"intake": intake, "ping": self._ping, "status": self._status, **Admin(self).methods()},
            group=self.config.daemon.socket_group,
        )
        await self._rpc.start()
        self.ready.set()
        log.info("daemon_ready", socket=self.config.daemon.socket_path, routes=list(self.routes),
                 portals=len(self._portals))

    async def stop(self, timeout: float = 10.0) -> None:
        log.info("daemon_stopping")
        if self._rpc is not None:
            await self._rpc.close()
        await asyncio.gather(*(r.stop(timeout) for r in self.routes.values()), return_exceptions=True)
        for p in self.pushers.values():
            p.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await stop_ops(self.ops)
        await self.store.close()
        self._stopped.set()
        log.info("daemon_stopped")

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    # --- wiring ----------------------------------------------------------------

    def dispatch(self, message: OpenMessage) -> None:
        self.routes[message.route].enqueue(message)

    async def _load_portals(self) -> None:
        self._portals = MappingProxyType({p.member_id: p for p in await self.store.portals()})

    async def _save_tokens(self, auth: PortalAuth) -> None:
        # Rotated refresh tokens are single-use: persist before the client uses them.
        await self.store.save_tokens(auth.member_id, auth.access_token, auth.refresh_token)
        await self._load_portals()

    async def _sweep_receipts(self) -> None:
        while True:
            await asyncio.sleep(RECEIPT_SWEEP_INTERVAL)
            expired = await self.store.expire_pending_receipts()
            if expired:
                log.warning("receipts_unmatched", count=expired)

    async def _ping(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    async def _status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "routes": {
                name: {"bound": r.connection.bound, "queue": r.depth, **r.stats}
                for name, r in self.routes.items()
            },
            "pushers": {m: {"pushed": p.pushed, "dropped": p.dropped} for m, p in self.pushers.items()},
            "store": await self.store.counts(),
        }


def _auth(p: PortalRecord) -> PortalAuth:
    return PortalAuth(
        member_id=p.member_id, domain=p.domain, client_endpoint=p.client_endpoint,
        server_endpoint=p.server_endpoint, access_token=p.access_token, refresh_token=p.refresh_token,
        client_id=p.client_id, client_secret=p.client_secret,
    )
