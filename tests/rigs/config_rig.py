"""Configs for tests: the example config.toml as a table to edit, and small configs
around simulated peers."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from smppd import config
from smppd.config.routes import route
from smppd.smpp.connection import session_config_for
from smppd.smpp.session import SessionConfig
from smppd.sims.bitrix24 import SimulatedPortal
from smppd.sims.smpp import SmscSimulator


EXAMPLE = Path(__file__).parents[2] / "config.toml"


# The example config installs by [[app]]; the manual [[portal]] form is still checked.
MANUAL_PORTAL = {
    "member_id": "m1", "domain": "example.bitrix24.by", "client_endpoint": "https://example.bitrix24.by/rest/",
    "server_endpoint": "https://oauth.bitrix.info/rest/", "client_id": "local.x", "client_secret": "s",
    "application_token": "t",
}


def raw() -> dict:
    with open(EXAMPLE, "rb") as f:
        d = tomllib.load(f)
    d.setdefault("portal", [dict(MANUAL_PORTAL)])
    return d


def with_route(name: str, table: dict) -> dict:
    r = raw()
    r["route"][name] = table
    return r


def cfg_with(ru_url: str, sc_url: str) -> config.Config:
    r = raw()
    r["route"]["ru"] = {"kind": "smsru", "api_id": "sim-api-id", "base_url": ru_url}
    r["route"]["sc"] = {"kind": "smsc", "login": "smppd", "password": "sim-password", "base_url": sc_url}
    r["sender"]["by_ru"] = {"route": "ru", "sender_id": "DemoShop"}
    r["sender"]["by_sc"] = {"route": "sc", "sender_id": "DemoShop"}
    return config.parse(r)


def config_toml(tmp_path, portal: SimulatedPortal, smsc: SmscSimulator, throughput: float) -> str:
    return f"""
[daemon]
socket = "{tmp_path / 'smppd.sock'}"
database = "{tmp_path / 'smppd.db'}"

[shim]
listen = "127.0.0.1:0"
handler_key = "a-handler-key-of-enough-length-000"

{portal.portal_toml()}
[route.life]
host = "127.0.0.1"
port = {smsc.port}
system_id = "smppd"
password = "secret"
throughput = {throughput}

[sender.by_life]
route = "life"
sender_id = "DemoShop"
"""


# The keys an SMPP route cannot do without; everything else comes from smppd.config.
SMPP_ROUTE = {"host": "127.0.0.1", "port": 2775, "system_id": "esme01", "password": "s3cr3tpw"}
# What a session has that no config key sets (the rest comes from the route).
SESSION_ONLY = frozenset(f.name for f in dataclasses.fields(SessionConfig)) - frozenset(
    f.name for f in dataclasses.fields(config.SmppRouteConfig))


def smpp_route(name: str = "op", **keys: Any) -> config.SmppRouteConfig:
    """A ``[route.NAME]`` of kind smpp as the daemon has it: parsed, so config's defaults and checks apply."""
    return route(name, {**SMPP_ROUTE, **keys})


def session_config(**keys: Any) -> SessionConfig:
    """A SessionConfig built the one way the daemon builds it: route table -> config -> session_config_for.

    Keys the route does not have (``inactivity_timeout``, ``addr_ton``, ...) are set on the result."""
    own = {k: keys.pop(k) for k in list(keys) if k in SESSION_ONLY}
    if "bind_mode" in keys:
        keys["bind_mode"] = str(keys["bind_mode"])
    return dataclasses.replace(session_config_for(smpp_route(**keys)), **own)
