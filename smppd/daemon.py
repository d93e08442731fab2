"""The daemon: the store, one route per operator, one pusher per portal, the socket.

Start order matters for "nothing accepted is lost": the store opens first,
routes reload what was never confirmed, and only then does the socket accept
intake.  Stop order is the reverse: the socket closes first (the shim answers
503, Bitrix24 shows the failure), routes drain and unbind, the store closes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any, Callable, Coroutine, Mapping

import aiohttp
import structlog

from .ops import metrics
from . import rules
from .bitrix24.contacts import ContactsJobs, PreferredChannel
from .bitrix24.contacts.hlr import smsc_hlr_for
from .bitrix24.install import EventQueue, Prover
from .bitrix24.portals import LivePortals
from .bitrix24.pusher import StatusPusher
from .bitrix24.recovery import TokenRecovery
from .config import Config, RouteConfig
from .cluster import ClusterStore, Ownership, default_node, lease_name, owning
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
        self.portals = LivePortals(lambda: self.config, self.store, self._essential)
        self.consent = ConsentReader(self.portals.rest_client, config.rules.consent_field,
                                     config.rules.consent_cache_ttl)
        self.holds = HoldWorker(self.store, self.rules, self.consent, self.dispatch, self.stoplist)
        self.routes: dict[str, Route] = {}  # see providers.make_route
        self._http: aiohttp.ClientSession | None = None
        self._rpc: RpcServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.app_events: EventQueue | None = None
        self.channels = PreferredChannel(self.store, self.portals.clients)
        self.hlr_poll = 2.0  # seconds between status.php polls of an HLR request
        self.contacts = ContactsJobs(self.portals.clients, self.store,
                                     lambda code: smsc_hlr_for(self.config, code, poll=self.hlr_poll))
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
        await self.stoplist.load()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        await self.portals.load(self._http)
        self.app_events = EventQueue(self.config, self.store, Prover(self.config, self._http, self.portals, self.store),
                                     self.portals)
        await self.app_events.load()
        metrics.watch_app_events(self.app_events.figures)
        self.ops = await start_ops(self)
        await self.channels.load()
        self._tasks.append(asyncio.create_task(self.channels.run(), name="preferred-channel"))
        if self.cluster is not None:
            self.portals.lease = self.cluster  # each portal's pusher runs where its lease is held
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
        self.portals.run()
        if self.cluster is not None:
            self._tasks.append(self._essential(self.cluster.run(), "cluster"))
        self._tasks.append(self._essential(self._sweep_receipts(), "receipt-sweep"))
        self._tasks.append(self._essential(self.app_events.run(), "app-events"))
        if self.cluster is not None:  # one node releases held messages at a time
            self.cluster.own(lease_name("job", "holds"), self._start_holds, self._stop_task)
        else:
            self._tasks.append(self._essential(self.holds.run(), "holds"))
        self.token_recovery = TokenRecovery(self.portals)
        intake = self.intake = Intake(self.config, self.store, self.portals.portals, self.dispatch,
                                      rules_=self.rules, stoplist=self.stoplist, on_held=self.holds.wake,
                                      recover=self.token_recovery)
        self._rpc = RpcServer(
            self.config.daemon.socket_path,
            {"intake": intake, "ping": self._ping, "status": self._status, "dlr": self._dlr,
             **self.stoplist.methods(), "app_event": self.app_events.receive, **self.portals.methods(),
             **Admin(_AdminHost(self)).methods(), **self.contacts.methods()},
            group=self.config.daemon.socket_group, batch_handlers={"intake": intake.many}, params=PARAM_TYPES,
            sock=passed_socket((socket.AF_UNIX,), "smppd"),  # systemd's smppd.socket, if it passed one
        )
        await self._rpc.start()
        self.ready.set()
        log.info("daemon_ready", socket=self.config.daemon.socket_path, routes=list(self.routes),
                 portals=len(self.portals.portals()))

    async def stop(self, timeout: float = 10.0) -> None:
        log.info("daemon_stopping")
        if self._rpc is not None:
            await self._rpc.close()
        if self.cluster is not None:  # stops the owned routes and pushers, then frees their leases
            await self.cluster.close()
        await asyncio.gather(*(r.stop(timeout) for r in self.routes.values()), return_exceptions=True)
        await self.contacts.close()
        await self.portals.stop()
        tasks = self._tasks
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

    @property
    def pushers(self) -> Mapping[str, StatusPusher]:
        """One status pusher per served portal (``bitrix24.portals``): status and metrics read them."""
        return self.portals.pushers

    # --- what arrives ---------------------------------------------------------------

    async def _on_mo(self, route: str, mo: ShortMessage) -> None:
        if await self.stoplist.on_reply(route, mo, self.config.rules.stop_words):
            self.rules.stats.stop_words += 1

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
            "pushers": self.portals.figures(),
            "store": {"unavailable": self.store.unavailable} if full else await self.store.counts(),
            "rules": {**self.rules.stats.as_dict(), "stoplist": len(self.stoplist),
                      "waiting": {} if full else await self.holds.counts(), "hold_expired": self.holds.expired},
            **({"cluster": cluster} if cluster is not None else {}),
        }


def route_status(route: Route) -> dict[str, Any]:
    """What `smppd status` shows of a route: the common face first, then the kind's own figures."""
    return {**route.status(), "kind": route.kind, "up": route.up, "trouble": route.trouble, "queue": route.depth,
            "inflight": route.inflight, "window_size": route.window_size}


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
        return self._d.portals.portals()

    async def intake(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self._d.intake(params)

    async def status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self._d._status(params)
