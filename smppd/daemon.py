"""The daemon: the store, one route per operator, one pusher per portal, the socket.

Start order matters for "nothing accepted is lost": the store opens first,
routes reload what was never confirmed, and only then does the socket accept
intake.  Stop order is the reverse: the socket closes first (the shim answers
503, Bitrix24 shows the failure), routes drain and unbind, the store closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from types import MappingProxyType
from typing import Any, Callable, Coroutine, Mapping

import aiohttp
import structlog

from .ops import metrics
from . import phone, rules, text
from .bitrix24 import registration
from .bitrix24.contacts import ContactsJobs, PreferredChannel, RpcRefused, SmscHlr
from .bitrix24.install import EventQueue, Prover
from .bitrix24.pusher import StatusPusher
from .bitrix24.recovery import TokenRecovery
from .bitrix24.rest import PortalAuth, RestClient
from .cluster import ClusterStore, Ownership, default_node, lease_name, owning
from .config import AppConfig, Config, RouteConfig
from .rules.consent import ConsentReader
from .rules.holds import HoldWorker
from .intake import Intake
from .routes import Route, make_route
from .routes.http import BadCallback, ForgedCallback, HttpRoute
from .ops.listenfds import passed_socket
from .routes.smsc import SmscRoute
from .rpc import ListOf, MapOf, ParamTypes, RpcError, RpcServer
from .smpp.receipts import ShortMessage
from .rules.stoplist import StopList
from .ops.admin import Admin
from .ops.runner import Ops, start_ops, stop_ops
from .model import OpenMessage, PortalRecord
from .store import Store, StoreOpenError, StoreUnavailable, is_postgresql, open_problem
from .store.postgres import expand

log = structlog.get_logger(__name__)

_TEXT_OR_NULL = (str, None)
PARAM_TYPES: dict[str, ParamTypes] = {
    # The doors' parameters by JSON type, checked by the RPC server before a handler runs
    # (rpc.check_params): a list where a string belongs, a deep structure or a huge integer is
    # a bad_request naming the parameter, never an "internal" error inside a handler.
    "intake": {"member_id": _TEXT_OR_NULL, "domain": _TEXT_OR_NULL, "application_token": _TEXT_OR_NULL,
               "code": str, "b24_id": str, "to": str, "text": str, "module_id": _TEXT_OR_NULL,
               "bindings": (ListOf(MapOf((int, str), 8), 64), None), "ts": (int, None),
               "document_id": (ListOf(str, 8), None)},
    "dlr": {"route": str, "form": ListOf(ListOf(str, 2), 1000)},
    "app_event": {"event": _TEXT_OR_NULL, "auth": MapOf(str, 64)},
    "stoplist.add": {"phone": str, "source": _TEXT_OR_NULL},
    "stoplist.remove": {"phone": str},
    "register": {"portal": _TEXT_OR_NULL, "update": (bool, None)},
    "unregister": {"portal": _TEXT_OR_NULL},
    # smppd's own commands (admin.py)
    "send": {"code": str, "to": str, "text": str},
    "message": {"id": int},
    **{name: {"ids": (ListOf(int, 100_000), None), "older_than": (float, None), "route": _TEXT_OR_NULL,
              "outbox": (bool, None)} for name in ("stuck", "retry", "cancel")},
}

RECEIPT_SWEEP_INTERVAL = 60.0


class Daemon:
    def __init__(self, config: Config, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        # PostgreSQL means maybe several nodes: owned work runs where its lease is held
        # (smppd.cluster), and its writes check the lease's fencing token.
        clustered = is_postgresql(config.daemon.database)
        self.store = (ClusterStore if clustered else Store)(config.daemon.database,
                                                            max_held_receipts=config.daemon.max_held_receipts)
        self.cluster: Ownership | None = None
        self.node = config.daemon.node or default_node()
        self.rules = rules.Rules(config.rules, wall_clock)  # wall clock: quiet hours are a time of day
        self.stoplist = StopList(self.store)
        self.consent = ConsentReader(self._rest_client, config.rules.consent_field, config.rules.consent_cache_ttl)
        self.holds = HoldWorker(self.store, self.rules, self.consent, self.dispatch, self.stoplist)
        self.routes: dict[str, Route] = {}  # see providers.make_route
        self.pushers: dict[str, StatusPusher] = {}
        self._portals: Mapping[str, PortalRecord] = MappingProxyType({})
        self._http: aiohttp.ClientSession | None = None
        self._rpc: RpcServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pusher_tasks: dict[str, asyncio.Task[Any]] = {}
        self._background: set[asyncio.Task[Any]] = set()  # registrations after install/update
        self.app_events: EventQueue | None = None
        self._event_clients: dict[str, RestClient] = {}  # portals being installed: their budget, kept for the pusher
        self.channels = PreferredChannel(self.store, lambda: {m: p.client for m, p in self.pushers.items()})
        self.hlr_poll = 2.0  # seconds between status.php polls of an HLR request
        self.contacts = ContactsJobs(lambda: {m: p.client for m, p in self.pushers.items()}, self.store,
                                     self._hlr_for)
        self.ops: Ops | None = None
        self.ready = asyncio.Event()
        self.crashed = asyncio.Event()  # a task the daemon cannot work without died: exit, let systemd restart
        self._stopped = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        database = self.config.daemon.database
        try:
            if not is_postgresql(database):
                os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
        except OSError as e:
            raise StoreOpenError(database, open_problem(database, e)) from None
        await self.store.open()
        if isinstance(self.store, ClusterStore):
            # the URL as the store opened it: a "${NAME}" in it read from the environment
            self.cluster = Ownership(expand(self.config.daemon.database), self.node, self.store)
        for p in self.config.portals.values():
            await self.store.seed_portal(PortalRecord(
                p.member_id, p.domain, p.client_endpoint, p.server_endpoint, p.client_id, p.client_secret,
                p.application_token, p.access_token, p.refresh_token,
            ))
        await self.stoplist.load()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        await self._load_portals()
        for portal in self._portals.values():
            self._attach(portal)
        host = _EventHost(self)
        self.app_events = EventQueue(self.config, self.store, Prover(self.config, self._http, host, self.store), host)
        await self.app_events.load()
        metrics.watch_app_events(self.app_events.figures)
        self.ops = await start_ops(self)
        await self.channels.load()
        self._tasks.append(asyncio.create_task(self.channels.run(), name="preferred-channel"))
        if self.cluster is not None:
            for name, route_cfg in self.config.routes.items():
                self.routes[name] = self.new_route(route_cfg)  # idle until its lease is won (callbacks, status)
                self._own_route(name)
        else:
            for name, route_cfg in self.config.routes.items():
                route = self.new_route(route_cfg)
                await self._load_route(route)
                self.routes[name] = route
            for route in self.routes.values():
                self.run_route(route)
        for member_id in self.pushers:
            self._start_pusher(member_id)
        if self.cluster is not None:
            self._tasks.append(self._essential(self.cluster.run(), "cluster"))
        self._tasks.append(self._essential(self._sweep_receipts(), "receipt-sweep"))
        self._tasks.append(self._essential(self.app_events.run(), "app-events"))
        # Every start checks the providers (one sender.list per portal): Bitrix24 never
        # retries an event, and a lost ONAPPUPDATE leaves the portal without them.
        for member_id in self.pushers:
            self._tasks.append(asyncio.create_task(self._register_one(member_id), name=f"register-{member_id}"))
        if self.cluster is not None:  # one node releases held messages at a time
            self.cluster.own(lease_name("job", "holds"), self._start_holds, self._stop_task)
        else:
            self._tasks.append(self._essential(self.holds.run(), "holds"))
        self.token_recovery = TokenRecovery(_RecoveryHost(self))
        intake = self.intake = Intake(self.config, self.store, lambda: self._portals, self.dispatch, rules_=self.rules,
                        stoplist=self.stoplist, on_held=self.holds.wake, recover=self.token_recovery)
        self._rpc = RpcServer(
            self.config.daemon.socket_path,
            {"intake": intake, "ping": self._ping, "status": self._status, "dlr": self._dlr, **self._stoplist_methods(),
             "app_event": self.app_events.receive, "register": self._register, "unregister": self._unregister, **Admin(_AdminHost(self)).methods(),
             **self._contacts_methods()},
            group=self.config.daemon.socket_group, batch_handlers={"intake": intake.many}, params=PARAM_TYPES,
            sock=passed_socket((socket.AF_UNIX,), "smppd"),  # systemd's smppd.socket, if it passed one
        )
        await self._rpc.start()
        self.ready.set()
        log.info("daemon_ready", socket=self.config.daemon.socket_path, routes=list(self.routes),
                 portals=len(self._portals))

    async def stop(self, timeout: float = 10.0) -> None:
        log.info("daemon_stopping")
        if self._rpc is not None:
            await self._rpc.close()
        if self.cluster is not None:  # stops the owned routes and pushers, then frees their leases
            await self.cluster.close()
        await asyncio.gather(*(r.stop(timeout) for r in self.routes.values()), return_exceptions=True)
        await self.contacts.close()
        for p in self.pushers.values():
            p.stop()
        tasks = [*self._tasks, *self._pusher_tasks.values(), *self._background]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await stop_ops(self.ops)
        await self.store.close()
        self._stopped.set()
        log.info("daemon_stopped")

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    # --- wiring ----------------------------------------------------------------

    def run_route(self, route: Route) -> None:
        """Run a route (start-up, and a reload's new route object); on several nodes only
        where its lease is held, inside the lease's fence."""
        if self.cluster is None:
            self._tasks.append(self._essential(route.run(), f"route-{route.name}"))
            return
        name = lease_name("route", route.name)
        if not self.cluster.wants(name):  # a route a reload added: contend for it
            self._own_route(route.name)
            return
        fence = self.cluster.fence_of(name)
        if fence is None or not self.cluster.route_running(route.name):
            return  # another node runs it; if this one wins it, it starts from the config then
        with owning(fence):
            task = self._essential(route.run(), f"route-{route.name}")
        self.cluster.route_started(route.name, route)
        self.cluster.replace(name, (route, task))

    def _essential(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task the daemon cannot work without (a route, a pusher, the holds).

        If one dies of an exception, a daemon that stays up would look healthy
        while a queue silently stops moving. Everything is in the store, so the
        safe answer is to exit non-zero and let systemd start us again.
        """
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._essential_done)
        return task

    def _essential_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("daemon_task_crashed", task=task.get_name(), error=repr(task.exception()),
                  hint="the daemon exits; systemd restarts it and the store resumes the work")
        self.crashed.set()

    def new_route(self, cfg: RouteConfig) -> Route:
        """A route of the config's kind, wired to the daemon (start-up and reload alike)."""
        route = make_route(cfg, self.store, self._http, on_mo=self._on_mo)
        if isinstance(route, SmscRoute):  # how its Viber cascades end, per number (issue 16)
            route.channel_sink = self.channels
        return route

    def dispatch(self, message: OpenMessage) -> None:
        if self.cluster is not None and not self.cluster.route_running(message.route):
            self.cluster.ring(message.route, message.id)  # stored; its owner sends it
            return
        self.routes[message.route].enqueue(message)

    async def _load_route(self, route: Route) -> None:
        reloaded = await route.load_open()
        if reloaded:
            log.info("route_reloaded_open_messages", route=route.name, messages=reloaded, segments=route.depth)

    # --- cluster: work that runs where its lease is held (smppd.cluster) ---------------

    def _own_route(self, name: str) -> None:
        assert self.cluster is not None
        cluster = self.cluster

        async def start() -> tuple[Route, asyncio.Task[Any]]:
            route = self.new_route(self.config.routes[name])  # a fresh one: the last owner's state is the store's
            await self._load_route(route)
            self.routes[name] = route
            task = self._essential(route.run(), f"route-{name}")
            cluster.route_started(name, route)
            return route, task

        async def stop(handle: tuple[Route, asyncio.Task[Any]], reason: str) -> None:
            route, task = handle
            cluster.route_stopped(name)
            # Within the lease's margin: no new submit now, the binds unbound before anyone may bind.
            await route.stop(timeout=1.0)
            await self._stop_task(task, reason)

        cluster.own(lease_name("route", name), start, stop)

    async def _start_holds(self) -> asyncio.Task[Any]:
        return self._essential(self.holds.run(), "holds")

    @staticmethod
    async def _stop_task(task: asyncio.Task[Any], reason: str) -> None:
        """A lease lost: cancel the owned task (a cancelled essential task is no crash)."""
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def _rest_client(self, member_id: str) -> RestClient | None:
        pusher = self.pushers.get(member_id)
        return pusher.client if pusher is not None else None  # one client per portal: one rate bucket

    # --- stop list ---------------------------------------------------------------

    async def _on_mo(self, route: str, mo: ShortMessage) -> None:
        """An SMS reply of just a stop word puts its sender on the stop list."""
        try:
            body = text.decode(mo.data_coding, text.strip_udh(mo.esm_class, mo.short_message)[1])
        except ValueError:
            return
        if not rules.is_stop_word(body, self.config.rules.stop_words):
            return
        try:
            number = phone.normalize(mo.source_addr)  # TON 1 digits (375…) or a national form
        except phone.InvalidNumber as e:
            log.warning("stop_word_from_invalid_number", route=route, reason=e.reason)
            return
        self.rules.stats.stop_words += 1
        await self.stoplist.add(number, f"mo:{route}")

    def _hlr_for(self, code: str) -> Any:
        """An SMSC.ru HLR client with the CODE's route credentials, or why there is none."""
        from .config import SmscRouteConfig
        from .routes.provider_client import ProviderClient
        from .routes.smsc import auth

        sender = self.config.senders.get(code)
        if sender is None:
            return f"no sender with code {code!r}"
        route_cfg = self.config.routes.get(sender.route)
        if not isinstance(route_cfg, SmscRouteConfig):
            return f"{code} goes through route {sender.route!r}, not SMSC.ru: HLR needs an SMSC.ru route"
        client = ProviderClient(route_cfg)  # no route, no store: HLR sends no message
        return SmscHlr(client, auth(route_cfg), poll=self.hlr_poll), client.close

    def _contacts_methods(self) -> dict[str, Any]:
        """``smppd contacts``: jobs over the pushers' REST clients (one budget per portal)."""

        def wrap(method: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], Any]:
            async def call(params: Mapping[str, Any]) -> Any:
                try:
                    return await method(params)
                except RpcRefused as e:
                    raise RpcError("bad_request", str(e), field=e.field) from None
            return call

        return {name: wrap(m) for name, m in self.contacts.methods().items()}

    def _stoplist_methods(self) -> dict[str, Any]:
        async def add(params: Mapping[str, Any]) -> dict[str, Any]:
            number = _number_param(params)
            return {"phone": number, "added": await self.stoplist.add(number, str(params.get("source") or "cli"))}

        async def remove(params: Mapping[str, Any]) -> dict[str, Any]:
            number = _number_param(params)
            return {"phone": number, "removed": await self.stoplist.remove(number)}

        async def entries(params: Mapping[str, Any]) -> dict[str, Any]:
            return {"numbers": await self.stoplist.entries()}

        return {"stoplist.add": add, "stoplist.remove": remove, "stoplist.list": entries}

    async def _load_portals(self) -> None:
        self._portals = MappingProxyType({p.member_id: p for p in await self.store.portals() if p.client_id})

    async def _save_tokens(self, auth: PortalAuth) -> None:
        # Rotated refresh tokens are single-use: persist before the client uses them.
        await self.store.save_tokens(auth.member_id, auth.access_token, auth.refresh_token)
        await self._load_portals()

    # --- portals at run time (bitrix24/install.py) --------------------------------

    def _limits(self, portal: PortalRecord) -> tuple[float, int]:
        app = self.config.apps.get(portal.domain)
        cfg = app or self.config.portals.get(portal.member_id)
        return (cfg.rate, cfg.burst) if cfg else (2.0, 50)

    def _attach(self, portal: PortalRecord) -> None:
        """One REST client and pusher per portal; an existing client adopts the new tokens."""
        pusher = self.pushers.get(portal.member_id)
        if pusher is not None:
            pusher.client.adopt(_auth(portal))
            return
        client = self._event_clients.pop(portal.member_id, None)  # the budget its install proof used
        if client is not None:
            client.adopt(_auth(portal))
        else:
            assert self._http is not None
            rate, burst = self._limits(portal)
            client = RestClient(self._http, _auth(portal), rate=rate, burst=burst, on_tokens=self._save_tokens)
        self.pushers[portal.member_id] = StatusPusher(self.store, client)

    def _shared_client(self, member_id: str, app: AppConfig | None, auth: PortalAuth | None) -> RestClient | None:
        """The portal's one REST client (one rate budget), made for a portal still being installed."""
        pusher = self.pushers.get(member_id)
        if pusher is not None:
            return pusher.client
        client = self._event_clients.get(member_id)
        if client is None and auth is not None and app is not None:
            assert self._http is not None
            client = RestClient(self._http, auth, rate=app.rate, burst=app.burst, on_tokens=self._save_tokens)
            self._event_clients[member_id] = client
        return client

    def _start_pusher(self, member_id: str) -> None:
        if self.cluster is not None:  # one node pushes a portal's outbox: one REST budget
            self.cluster.own(lease_name("portal", member_id), lambda: self._run_pusher(member_id), self._stop_pusher)
            return
        pusher = self.pushers[member_id]
        self._pusher_tasks[member_id] = self._essential(pusher.run(), f"pusher-{member_id}")

    async def _run_pusher(self, member_id: str) -> str:
        old = self.pushers[member_id]
        pusher = self.pushers[member_id] = StatusPusher(self.store, old.client)  # a stopped pusher stays stopped
        self._pusher_tasks[member_id] = self._essential(pusher.run(), f"pusher-{member_id}")
        return member_id

    async def _stop_pusher(self, member_id: str, reason: str) -> None:
        pusher, task = self.pushers.get(member_id), self._pusher_tasks.pop(member_id, None)
        if pusher is not None:
            pusher.stop()
        if task is not None:
            await self._stop_task(task, reason)

    async def _installed(self, portal: PortalRecord, event: str) -> None:
        """Persist first (the event's tokens are the only copy), then serve, then register."""
        await self.store.upsert_portal(portal)
        await self._load_portals()
        new = portal.member_id not in self.pushers
        self._attach(portal)
        if new:
            self._start_pusher(portal.member_id)
        # ONAPPUPDATE drops every provider (bitrix24.md §11); install starts with none.
        task = asyncio.create_task(self._register_one(portal.member_id), name=f"register-{portal.member_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _uninstalled(self, member_id: str) -> None:
        await self.store.remove_portal(member_id)
        await self._load_portals()
        if self.cluster is not None:
            await self.cluster.disown(lease_name("portal", member_id))
        pusher = self.pushers.pop(member_id, None)
        task = self._pusher_tasks.pop(member_id, None)
        if pusher is not None:
            pusher.stop()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _register_one(self, member_id: str, update: bool = False) -> dict[str, Any] | None:
        public_url = self.config.shim.public_url
        pusher = self.pushers.get(member_id)
        if pusher is None:
            return None
        if not public_url:
            log.warning("bitrix24.register.skipped", member_id=member_id, reason="shim.public_url is not set")
            return None
        report = await registration.register(
            pusher.client, registration.senders_for(self.config, member_id),
            public_url=public_url, handler_key=self.config.shim.handler_key, update=update,
        )
        return report.as_dict()

    def _chosen(self, params: Mapping[str, Any]) -> list[str]:
        wanted = params.get("portal")
        if wanted is None:
            return list(self.pushers)
        if not isinstance(wanted, str) or wanted not in self.pushers:
            raise RpcError("bad_request", f"portal: no installed portal {wanted!r}", field="portal")
        return [wanted]

    async def _register(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not self.config.shim.public_url:
            raise RpcError("bad_request", "shim.public_url: must be set to register providers (the HANDLER base)")
        update = params.get("update") is True
        return {"portals": [await self._register_one(m, update) for m in self._chosen(params)]}

    async def _unregister(self, params: Mapping[str, Any]) -> dict[str, Any]:
        reports = []
        for m in self._chosen(params):
            client = self.pushers[m].client
            report = await registration.unregister(client, registration.senders_for(self.config, m))
            reports.append(report.as_dict())
        return {"portals": reports}

    async def _sweep_receipts(self) -> None:
        while True:
            await asyncio.sleep(RECEIPT_SWEEP_INTERVAL)
            expired = await self.store.expire_pending_receipts()
            if expired:
                log.warning("receipts_unmatched", count=expired)

    async def _dlr(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A provider's delivery callback, forwarded by the shim (shim/dlr.py)."""
        route = self.routes.get(params.get("route"))  # type: ignore[arg-type]
        form = params.get("form")
        if not isinstance(route, HttpRoute):
            raise RpcError("bad_request", "route: not an HTTP provider route")
        if not isinstance(form, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in form
        ):
            raise RpcError("bad_request", "form: must be a list of [name, value] strings")
        try:
            # A full disk: the callback waits in memory until stored (bounded); beyond the
            # bound the shim answers 503 and the provider calls again later.
            with self.store.receipt_slot():
                answer = await route.callback([(k, v) for k, v in form])
        except StoreUnavailable:
            raise RpcError("unavailable", "the store cannot write now; try again later") from None
        except ForgedCallback as e:
            route.stats["callbacks_rejected"] += 1
            log.warning("dlr_forged", route=route.name, error=str(e))
            raise RpcError("forbidden", str(e), field=e.field) from None
        except BadCallback as e:
            route.stats["callbacks_rejected"] += 1
            log.warning("dlr_malformed", route=route.name, error=str(e))
            raise RpcError("bad_request", str(e), field=e.field) from None
        return {"answer": answer}

    async def _ping(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    async def _status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        # A full disk: the store's reads may queue behind held writes, so say so instead of waiting.
        full = self.store.unavailable is not None
        cluster = await self.cluster.status() if self.cluster is not None else None
        routes = {name: route_status(r) for name, r in self.routes.items()}
        if cluster is not None:  # who runs each route: this node, another, or nobody (None)
            live = {row["name"]: row["node"] for row in cluster["leases"] if row["live"]}
            for name, r in routes.items():
                r["owner"] = live.get(lease_name("route", name))
        return {
            "routes": routes,
            "pushers": {m: {"pushed": p.pushed, "dropped": p.dropped, "failures": p.failures}
                        for m, p in self.pushers.items()},
            "store": {"unavailable": self.store.unavailable} if full else await self.store.counts(),
            "rules": {**self.rules.stats.as_dict(), "stoplist": len(self.stoplist),
                      "waiting": {} if full else await self.holds.counts(), "hold_expired": self.holds.expired},
            **({"cluster": cluster} if cluster is not None else {}),
        }


def route_status(route: Route) -> dict[str, Any]:
    """What `smppd status` shows of a route: the common face first, then the kind's own figures."""
    return {**route.status(), "kind": route.kind, "up": route.up, "trouble": route.trouble, "queue": route.depth,
            "inflight": route.inflight, "window_size": route.window_size}


def _number_param(params: Mapping[str, Any]) -> str:
    raw = params.get("phone")
    if not isinstance(raw, str):
        raise RpcError("bad_request", "phone: must be a string", field="phone")
    try:
        return phone.normalize(raw)
    except phone.InvalidNumber as e:
        raise RpcError("bad_request", f"phone: {e.reason}", field="phone") from None


def _auth(p: PortalRecord) -> PortalAuth:
    return PortalAuth(
        member_id=p.member_id, domain=p.domain, client_endpoint=p.client_endpoint,
        server_endpoint=p.server_endpoint, access_token=p.access_token, refresh_token=p.refresh_token,
        client_id=p.client_id, client_secret=p.client_secret,
    )


class _EventHost:
    """The daemon as the app-event queue sees it (``install.PortalHost``)."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon

    def portals(self) -> Mapping[str, PortalRecord]:
        return self._d._portals

    def rest_client(self, member_id: str, app: AppConfig | None, auth: PortalAuth | None) -> RestClient | None:
        return self._d._shared_client(member_id, app, auth)

    def hold_pusher(self, member_id: str, held: bool) -> None:
        pusher = self._d.pushers.get(member_id)
        if pusher is not None:
            (pusher.may_push.clear if held else pusher.may_push.set)()

    async def installed(self, record: PortalRecord, event: str) -> None:
        await self._d._installed(record, event)

    async def uninstalled(self, member_id: str) -> None:
        self._d._event_clients.pop(member_id, None)
        await self._d._uninstalled(member_id)


class _AdminHost:
    """The daemon as the admin methods see it (``admin.AdminHost``)."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon

    @property
    def config(self) -> Config:
        return self._d.config

    @property
    def store(self) -> Store:
        return self._d.store

    @property
    def routes(self) -> Mapping[str, Route]:
        return self._d.routes

    @property
    def holds(self) -> HoldWorker:
        return self._d.holds

    @property
    def portals(self) -> Mapping[str, PortalRecord]:
        return self._d._portals

    async def intake(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self._d.intake(params)

    async def status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self._d._status(params)


class _RecoveryHost:
    """The daemon as the token recovery sees it (``recovery.RecoveryHost``)."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon

    def portals(self) -> Mapping[str, PortalRecord]:
        return self._d._portals

    def rest_client(self, member_id: str) -> RestClient | None:
        return self._d._rest_client(member_id)

    async def app_version(self, member_id: str) -> str | None:
        return await self._d.store.app_version(member_id)

    async def learned(self, member_id: str, application_token: str, version: str) -> None:
        current = self._d._portals.get(member_id)
        if current is None:
            return
        await self._d.store.set_app_version(member_id, version)
        await self._d._installed(dataclasses.replace(current, application_token=application_token), "ONAPPUPDATE")
