"""SIGHUP: apply a changed config.toml without dropping binds that did not change.

What can change live, and how:

* ``[sender.*]`` (codes, sender IDs, routes): intake reads the new table at once;
* a route's ``throughput`` (SMPP) or ``rate`` (HTTP): the new cap applies to the
  next segment or request, the bind stays;
* any other setting of a route (host, credentials, an SMS.ru/SMSC key, window,
  timers...), of any kind: that route alone is drained and replaced; its queue
  is rebuilt from the store (``Route.resume``), so nothing queued is lost, and
  the other routes are untouched;
* a new route: bound and started.

What needs a restart, and is refused as a whole (the old config keeps
running, the log names the keys): ``[daemon]`` (socket, database, metrics
port), ``[[portal]]`` (the tokens seed the store only at start), a removed
route (its open messages would be stranded).  ``[shim]`` belongs to the shim
process, which reloads its own part on its own SIGHUP.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import MutableMapping, Protocol

import structlog

from ..bitrix24.install import EventQueue
from ..config import Config, RouteConfig
from ..intake import Intake
from ..routes.base import Route


class ReloadHost(Protocol):
    """The running daemon as a reload changes it (``Daemon`` satisfies it).

    A protocol, not the daemon's class: the daemon wires the parts, so no part
    imports it (tests/test_structure.py holds that).
    """

    config: Config

    @property
    def routes(self) -> MutableMapping[str, Route]: ...
    @property
    def intake(self) -> Intake: ...
    @property
    def app_events(self) -> EventQueue | None: ...

    def new_route(self, cfg: RouteConfig) -> Route: ...
    def run_route(self, route: Route) -> None: ...


log = structlog.get_logger(__name__)

LIVE_ROUTE_KEYS = frozenset({"throughput", "rate"})  # SMPP segments/s, HTTP requests/s


@dataclass(frozen=True)
class Plan:
    restart_needed: tuple[str, ...]  # keys that changed and cannot be applied live
    retune: tuple[str, ...]  # routes whose throughput changed, nothing else
    rebind: tuple[str, ...]  # routes with a changed connection setting
    added: tuple[str, ...]
    senders_changed: bool

    @property
    def applicable(self) -> bool:
        return not self.restart_needed

    @property
    def empty(self) -> bool:
        return not (self.retune or self.rebind or self.added or self.senders_changed or self.restart_needed)


def plan(old: Config, new: Config) -> Plan:
    """What a reload from ``old`` to ``new`` would do (pure, for tests and for the log)."""
    restart: list[str] = []
    if old.daemon != new.daemon:
        restart += [f"daemon.{f.name}" for f in fields(old.daemon)
                    if getattr(old.daemon, f.name) != getattr(new.daemon, f.name)]
    if old.portals != new.portals:
        restart.append("portal")
    restart += [f"route.{name} (removed)" for name in old.routes if name not in new.routes]
    retune, rebind = [], []
    for name, cfg in new.routes.items():
        before = old.routes.get(name)
        if before is None or before == cfg:
            continue
        if type(cfg) is not type(before):  # another kind under the same name: a new route object
            rebind.append(name)
            continue
        changed = {f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(before, f.name)}
        (retune if changed <= LIVE_ROUTE_KEYS else rebind).append(name)
    return Plan(
        restart_needed=tuple(restart), retune=tuple(retune), rebind=tuple(rebind),
        added=tuple(n for n in new.routes if n not in old.routes),
        senders_changed=dict(old.senders) != dict(new.senders),
    )


async def apply(daemon: ReloadHost, new: Config, *, drain_timeout: float = 10.0) -> Plan:
    """Apply ``new`` to a running daemon as far as ``plan`` allows; returns the plan."""
    p = plan(daemon.config, new)
    if not p.applicable:
        log.error("config_reload_refused", restart_needed=list(p.restart_needed),
                  hint="restart smppd to apply these; nothing was changed")
        return p
    for name in p.retune:
        daemon.routes[name].retune(new.routes[name])
    daemon.config = new
    daemon.intake.config = new
    if daemon.app_events is not None:  # installs waiting for their [[app]] are tried again
        daemon.app_events.reconfigure(new)
    for name in p.rebind:
        await _rebind(daemon, name, new.routes[name], drain_timeout)
    for name in p.added:
        route = daemon.new_route(new.routes[name])
        daemon.routes[name] = route
        await route.load_open()
        daemon.run_route(route)
    log.info("config_reloaded", retuned=list(p.retune), rebound=list(p.rebind), added=list(p.added),
             senders_changed=p.senders_changed)
    return p


async def _rebind(daemon: ReloadHost, name: str, cfg: RouteConfig, drain_timeout: float) -> None:
    """Swap in a new route object first, so intake never hands a message to the stopping one.

    Messages dispatched to the new route while the old one drains are queued
    there; the rest of the open work is read back from the store, skipping
    what the new queue already holds.
    """
    old = daemon.routes[name]
    new = daemon.new_route(cfg)
    daemon.routes[name] = new
    # Like Daemon.stop: the route's own run task cancels the bind as it ends,
    # which can surface here as a CancelledError that is not ours.
    await asyncio.gather(old.stop(drain_timeout), return_exceptions=True)
    resumed = await new.resume()
    log.info("route_rebound", route=name, kind=new.kind, resumed=resumed)
    daemon.run_route(new)
