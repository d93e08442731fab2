"""The whole config.toml: its sections read into one frozen ``Config``, and the checks
that need more than one section (a sender's route exists, a callback key is no handler key)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from . import portals as portals_mod, processes, routes as routes_mod, rules as rules_mod
from .portals import AppConfig, AppEventsConfig, PortalConfig
from .processes import DaemonConfig, ShimConfig
from .readers import ConfigError, only, read_toml, section
from .routes import HttpRouteConfig, RouteConfig
from .rules import RulesConfig, SenderConfig

SECTIONS = {"daemon", "shim", "portal", "app", "route", "sender", "rules", "app_events"}


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    shim: ShimConfig
    portals: Mapping[str, PortalConfig]
    routes: Mapping[str, RouteConfig]
    senders: Mapping[str, SenderConfig]
    apps: Mapping[str, AppConfig] = field(default_factory=lambda: MappingProxyType({}))  # by domain
    rules: RulesConfig = field(default_factory=RulesConfig)
    app_events: AppEventsConfig = field(default_factory=AppEventsConfig)


def load(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError naming the key."""
    return parse(read_toml(path))


def load_daemon(path: str | Path) -> DaemonConfig:
    """Only ``[daemon]``: what the admin commands need (the socket, the database).

    They must work for an admin who cannot read the secrets the rest of the
    file refers to.
    """
    return processes.daemon(section(read_toml(path), "daemon"))


def parse(raw: Mapping[str, Any]) -> Config:
    """Validate an already-decoded TOML document."""
    only(raw, "", SECTIONS)
    daemon = processes.daemon(section(raw, "daemon"))
    shim = processes.shim(section(raw, "shim"))
    portals = portals_mod.portals(raw.get("portal", []))
    apps = portals_mod.apps(raw.get("app", []))
    routes = {name: routes_mod.route(name, t) for name, t in section(raw, "route").items()}
    senders = {code: rules_mod.sender(code, t) for code, t in section(raw, "sender").items()}
    if not senders:
        raise ConfigError("sender", "at least one [sender.<CODE>] is needed")
    for code, s in senders.items():
        if s.route not in routes:
            raise ConfigError(f"sender.{code}.route", f"no route named {s.route!r}")
        if s.portal is not None and s.portal not in portals:
            raise ConfigError(f"sender.{code}.portal", f"no portal with member_id {s.portal!r}")
    _callback_keys_apart(shim, routes)
    return Config(
        daemon=daemon,
        shim=shim,
        portals=MappingProxyType(portals),
        routes=MappingProxyType(routes),
        senders=MappingProxyType(senders),
        apps=MappingProxyType(apps),
        rules=rules_mod.rules(raw.get("rules", {})),
        app_events=portals_mod.app_events(raw.get("app_events", {})),
    )


def _callback_keys_apart(shim: ShimConfig, routes: Mapping[str, RouteConfig]) -> None:
    """A callback_key must be none of the handler keys, which every HANDLER post
    carries in its URL (issue 18): the same string would open /dlr/ to anyone
    holding one captured post, the very thing a route's own key is there to stop."""
    handler_keys = {shim.handler_key, shim.handler_key_previous} - {""}
    for name, route in routes.items():
        if isinstance(route, HttpRouteConfig) and route.callback_key in handler_keys:
            raise ConfigError(f"route.{name}.callback_key",
                              "must not be the shim's handler_key: every HANDLER post carries that in its URL")


def spool_dir(cfg: Config, env: Mapping[str, str] | None = None) -> str:
    """The shim's spool directory: ``shim.spool_dir``, or under systemd's
    ``StateDirectory=`` (``$STATE_DIRECTORY``), or beside the database, so a
    config written before the spool existed still gets one (a PostgreSQL database has no
    directory: ``shim-spool`` in the working directory then; README says to set it)."""
    if cfg.shim.spool_dir:
        return cfg.shim.spool_dir
    state = (os.environ if env is None else env).get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return os.path.join(state, "spool")
    if cfg.daemon.database.startswith(("postgresql://", "postgres://")):  # store.engine.is_postgresql
        return os.path.abspath("shim-spool")
    return os.path.join(os.path.dirname(os.path.abspath(cfg.daemon.database)), "shim-spool")
