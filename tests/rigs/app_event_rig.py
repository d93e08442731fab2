"""App-event helpers shared by test modules: a portal host that records what it was told,
a config naming some [[app]] domains, an event's RPC parameters."""

from __future__ import annotations

from types import MappingProxyType

from smppd.config import AppConfig, Config, DaemonConfig, ShimConfig


class FakeHost:
    def __init__(self) -> None:
        self.held: list[tuple[str, bool]] = []
        self.applied: list[tuple[str, str]] = []

    def portals(self):
        return {}

    def rest_client(self, member_id, app, auth):
        return None

    def hold_pusher(self, member_id, held):
        self.held.append((member_id, held))

    async def installed(self, record, event):
        self.applied.append((record.member_id, event))

    async def uninstalled(self, member_id):
        self.applied.append((member_id, "ONAPPUNINSTALL"))


def config(domains: list[str]) -> Config:
    return Config(daemon=DaemonConfig(socket_path="/x", database="/x"), shim=ShimConfig(host="127.0.0.1", port=0, handler_key="k"),
                  portals=MappingProxyType({}), routes=MappingProxyType({}), senders=MappingProxyType({}),
                  apps=MappingProxyType({d: AppConfig(domain=d, client_id="c", client_secret="s") for d in domains}))


def params(event: str, member: str, domain: str) -> dict:
    auth = {"member_id": member, "domain": domain, "application_token": "t", "client_endpoint": "https://x/rest/",
            "server_endpoint": "https://o/rest/", "access_token": "a", "refresh_token": "r"}
    return {"event": event, "auth": auth}
