"""The installed portals at run time: their records, one REST client and one status pusher each.

Why one client per portal: the client holds the portal's request budget and its token
refresh, so every caller of a portal (the pusher, registration, app-event proofs, consent,
``smppd contacts``, token recovery) shares it: together they stay under the portal's limit,
and a rotated refresh token is spent once and stored before it is used (``rest.oauth``).

`LivePortals` is what the app-event queue (``install.PortalHost``) and the token recovery
(``recovery.RecoveryHost``) act on: a proven install is stored first (the event's tokens are
the only copy), then served, then its providers are registered.
"""

from __future__ import annotations

import asyncio
import dataclasses
from types import MappingProxyType
from typing import Any, Callable, Coroutine, Mapping

import aiohttp
import structlog

from ..cluster import Ownership, lease_name
from ..config import Config, PortalConfig
from ..model import PortalRecord
from ..rpc import RpcError
from ..store import Store
from . import registration
from .install import Credentials
from .pusher import StatusPusher
from .rest import RestClient

log = structlog.get_logger(__name__)

#: Starts a task the daemon cannot work without (it exits if one dies): a pusher.
Essential = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class LivePortals:
    """The portals the store knows, served: a client and a pusher each, kept in step with app events."""

    def __init__(self, config: Callable[[], Config], store: Store, essential: Essential) -> None:
        self._config = config  # read at use: a reload may change [[app]] budgets and the shim's URL
        self._store = store
        self._essential = essential
        self._records: Mapping[str, PortalRecord] = MappingProxyType({})
        self.pushers: dict[str, StatusPusher] = {}
        self._pusher_tasks: dict[str, asyncio.Task[Any]] = {}
        self._installing: dict[str, RestClient] = {}  # portals being proven: their budget, kept for the pusher
        self._background: set[asyncio.Task[Any]] = set()  # registrations
        self._http: aiohttp.ClientSession | None = None
        # Several nodes on one PostgreSQL: a portal's pusher runs only where the portal's
        # lease is held (one node spends its REST budget); None: this node, always.
        self.lease: Ownership | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def load(self, http: aiohttp.ClientSession) -> None:
        """Seed the store with the config's ``[[portal]]`` records, then serve every stored portal."""
        self._http = http
        for p in self._config().portals.values():
            await self._store.seed_portal(p)
        await self._reload()
        for portal in self._records.values():
            self._attach(portal)

    def run(self) -> None:
        """Start the pushers, and check every portal's providers (one ``sender.list`` each):
        Bitrix24 never retries an event, and a lost ONAPPUPDATE leaves a portal without them."""
        for member_id in self.pushers:
            self._start_pusher(member_id)
        for member_id in self.pushers:
            self._register_later(member_id)

    async def stop(self) -> None:
        for p in self.pushers.values():
            p.stop()
        tasks = [*self._pusher_tasks.values(), *self._background]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- what the other parts ask ------------------------------------------------------

    def portals(self) -> Mapping[str, PortalRecord]:
        """The stored portals a client can serve, by member_id (intake authenticates against these)."""
        return self._records

    def clients(self) -> dict[str, RestClient]:
        """Each served portal's one client (its one budget), for the contacts jobs and channel marks."""
        return {m: p.client for m, p in self.pushers.items()}

    def rest_client(self, member_id: str, app: Credentials | None = None,
                    record: PortalRecord | None = None) -> RestClient | None:
        """The portal's one REST client; with ``app`` and ``record``, made for a portal still being proven."""
        pusher = self.pushers.get(member_id)
        if pusher is not None:
            return pusher.client
        client = self._installing.get(member_id)
        if client is None and record is not None and app is not None:
            client = self._client(record, app.rate, app.burst)
            self._installing[member_id] = client
        return client

    def hold_pusher(self, member_id: str, held: bool) -> None:
        pusher = self.pushers.get(member_id)
        if pusher is not None:
            (pusher.may_push.clear if held else pusher.may_push.set)()

    def figures(self) -> dict[str, dict[str, int]]:
        """What ``smppd status`` shows of each pusher."""
        return {m: {"pushed": p.pushed, "dropped": p.dropped, "failures": p.failures} for m, p in self.pushers.items()}

    # --- app events (install.py) and token recovery (recovery.py) --------------------------

    async def installed(self, record: PortalRecord, event: str) -> None:
        """Persist first (the event's tokens are the only copy), then serve, then register."""
        await self._store.upsert_portal(record)
        await self._reload()
        new = record.member_id not in self.pushers
        self._attach(record)
        if new:
            self._start_pusher(record.member_id)
        # ONAPPUPDATE drops every provider (bitrix24.md §11); install starts with none.
        self._register_later(record.member_id)

    async def uninstalled(self, member_id: str) -> None:
        self._installing.pop(member_id, None)
        await self._store.remove_portal(member_id)
        await self._reload()
        if self.lease is not None:
            await self.lease.disown(lease_name("portal", member_id))
        pusher = self.pushers.pop(member_id, None)
        task = self._pusher_tasks.pop(member_id, None)
        if pusher is not None:
            pusher.stop()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def app_version(self, member_id: str) -> str | None:
        return await self._store.app_version(member_id)

    async def learned(self, member_id: str, application_token: str, version: str) -> None:
        current = self._records.get(member_id)
        if current is None:
            return
        await self._store.set_app_version(member_id, version)
        await self.installed(dataclasses.replace(current, application_token=application_token), "ONAPPUPDATE")

    # --- the register / unregister RPC methods -------------------------------------------

    def methods(self) -> dict[str, Callable[[Mapping[str, Any]], Any]]:
        return {"register": self._register, "unregister": self._unregister}

    async def register(self, member_id: str, update: bool = False) -> dict[str, Any] | None:
        """Register (or, with ``update``, re-register) the portal's providers; None if it cannot be."""
        config = self._config()
        pusher = self.pushers.get(member_id)
        if pusher is None:
            return None
        if not config.shim.public_url:
            log.warning("bitrix24.register.skipped", member_id=member_id, reason="shim.public_url is not set")
            return None
        report = await registration.register(
            pusher.client, registration.senders_for(config, member_id),
            public_url=config.shim.public_url, handler_key=config.shim.handler_key, update=update,
        )
        return report.as_dict()

    async def _register(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not self._config().shim.public_url:
            raise RpcError("bad_request", "shim.public_url: must be set to register providers (the HANDLER base)")
        update = params.get("update") is True
        return {"portals": [await self.register(m, update) for m in self._chosen(params)]}

    async def _unregister(self, params: Mapping[str, Any]) -> dict[str, Any]:
        reports = []
        for m in self._chosen(params):
            client = self.pushers[m].client
            report = await registration.unregister(client, registration.senders_for(self._config(), m))
            reports.append(report.as_dict())
        return {"portals": reports}

    def _chosen(self, params: Mapping[str, Any]) -> list[str]:
        wanted = params.get("portal")
        if wanted is None:
            return list(self.pushers)
        if not isinstance(wanted, str) or wanted not in self.pushers:
            raise RpcError("bad_request", f"portal: no installed portal {wanted!r}", field="portal")
        return [wanted]

    # --- inside -------------------------------------------------------------------------

    async def _reload(self) -> None:
        self._records = MappingProxyType({p.member_id: p for p in await self._store.portals() if p.client_id})

    def _attach(self, portal: PortalRecord) -> None:
        """One REST client and pusher per portal; an existing client adopts the new record."""
        pusher = self.pushers.get(portal.member_id)
        if pusher is not None:
            pusher.client.adopt(portal)
            return
        client = self._installing.pop(portal.member_id, None)  # the budget its install proof used
        if client is not None:
            client.adopt(portal)
        else:
            client = self._client(portal, *self._limits(portal))
        self.pushers[portal.member_id] = StatusPusher(self._store, client)

    def _limits(self, portal: PortalRecord) -> tuple[float, int]:
        """The portal's request budget: its ``[[app]]`` (by domain), else its ``[[portal]]``, else Bitrix24's default."""
        config = self._config()
        cfg = config.apps.get(portal.domain) or config.portals.get(portal.member_id)
        return (cfg.rate, cfg.burst) if cfg else (PortalConfig.rate, PortalConfig.burst)

    def _client(self, portal: PortalRecord, rate: float, burst: int) -> RestClient:
        assert self._http is not None, "load() first"
        return RestClient(self._http, portal, rate=rate, burst=burst, on_tokens=self._save_tokens,
                          refresh_turn=self._store.refresh_turn)

    async def _save_tokens(self, portal: PortalRecord) -> None:
        # Rotated refresh tokens are single-use: stored before the client uses them.
        await self._store.save_tokens(portal)
        await self._reload()

    def _start_pusher(self, member_id: str) -> None:
        if self.lease is not None:
            self.lease.own(lease_name("portal", member_id), lambda: self._run_pusher(member_id), self._stop_pusher)
            return
        self._pusher_tasks[member_id] = self._essential(self.pushers[member_id].run(), f"pusher-{member_id}")

    async def _run_pusher(self, member_id: str) -> str:
        """The portal's lease won: a fresh pusher (a stopped one stays stopped), same client."""
        pusher = self.pushers[member_id] = StatusPusher(self._store, self.pushers[member_id].client)
        self._pusher_tasks[member_id] = self._essential(pusher.run(), f"pusher-{member_id}")
        return member_id

    async def _stop_pusher(self, member_id: str, reason: str) -> None:
        """The portal's lease lost: stop pushing now (a cancelled essential task is no crash)."""
        pusher, task = self.pushers.get(member_id), self._pusher_tasks.pop(member_id, None)
        if pusher is not None:
            pusher.stop()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _register_later(self, member_id: str) -> None:
        task = asyncio.create_task(self.register(member_id), name=f"register-{member_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)


__all__ = ["LivePortals"]
