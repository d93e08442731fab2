"""Configs for tests: the example config.toml as a table to edit, and small configs
around simulated peers."""

from __future__ import annotations

import tomllib
from pathlib import Path

from smppd import config
from smppd.sims.bitrix24 import SimulatedPortal
from smppd.sims.smpp import SmscSimulator


EXAMPLE = Path(__file__).parent.parent / "config.toml"


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
