"""One record of a portal (issue 15): the config's, the store's and the REST client's are the same.

What the one record must keep: a refresh rotates the tokens and nothing else (the
``application_token`` intake checks every post against survives it), the rotated pair is in
the store before the client uses it, and no secret reaches a ``repr``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
import pytest

from smppd.bitrix24.portals import LivePortals
from smppd.bitrix24.rest import RestClient
from smppd.config import PortalConfig
from smppd.model import PortalRecord
from smppd.sims.bitrix24 import SimulatedPortal



def test_a_record_shows_no_secret():
    record = PortalRecord("m1", "shop.bitrix24.by", "https://c/rest/", "https://o/rest/", "app.1",
                          "SECRET-1", "APPTOKEN-2", "ACCESS-3", "REFRESH-4")
    for shown in (repr(record), str(record), repr(PortalConfig(**dataclasses.asdict(record)))):
        assert "shop.bitrix24.by" in shown and "app.1" in shown
        assert not any(v in shown for v in ("SECRET-1", "APPTOKEN-2", "ACCESS-3", "REFRESH-4"))


def test_a_configured_portal_is_the_record_plus_its_budget():
    cfg = PortalConfig("m1", "shop.bitrix24.by", "https://c/rest/", "https://o/rest/", "app.1", "s", "t",
                       rate=5.0, burst=20)
    assert isinstance(cfg, PortalRecord)
    assert {f.name for f in dataclasses.fields(cfg)} - {f.name for f in dataclasses.fields(PortalRecord)} == {
        "rate", "burst"}
    rotated = cfg.with_tokens("a2", "r2")
    assert (rotated.access_token, rotated.refresh_token, rotated.application_token) == ("a2", "r2", "t")


class _Config:
    """The parts of `Config` LivePortals reads: ``portals``, ``apps``, ``shim.public_url``."""

    def __init__(self, portal: PortalConfig) -> None:
        self.portals = {portal.member_id: portal}
        self.apps: dict[str, Any] = {}
        self.shim = dataclasses.make_dataclass("Shim", ["public_url", "handler_key"])(None, "k")


@pytest.mark.integration
async def test_a_refresh_is_stored_before_use_and_keeps_the_application_token(store):
    async with SimulatedPortal(rate=None) as sim, aiohttp.ClientSession() as http:
        seeded = PortalConfig(**sim.install_auth(), rate=50.0, burst=50)
        config: Any = _Config(seeded)
        crashed: list[str] = []

        def essential(coro: Any, name: str) -> asyncio.Task[Any]:
            task = asyncio.create_task(coro, name=name)
            task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or crashed.append(name))
            return task

        portals = LivePortals(lambda: config, store, essential)
        await portals.load(http)
        assert portals.portals()[sim.member_id] == PortalRecord(**sim.install_auth())  # seeded as is
        client = portals.rest_client(sim.member_id)
        assert isinstance(client, RestClient) and client.portal == portals.portals()[sim.member_id]

        seen_by_store: list[PortalRecord] = []
        save = store.save_tokens

        async def spy(record: PortalRecord) -> None:
            assert sim.uses_of(record.access_token) == 0  # not used before it is stored
            await save(record)
            seen_by_store.append(record)

        store.save_tokens = spy  # type: ignore[method-assign]
        sim.expire_access_token()
        await client.call("app.info")

        [stored] = [p for p in await store.portals() if p.member_id == sim.member_id]
        assert seen_by_store == [client.portal] and sim.refreshes == 1
        assert (stored.access_token, stored.refresh_token) == (sim.access_token, sim.refresh_token)
        assert stored.access_token != seeded.access_token
        # the record intake authenticates with: the new tokens, the same application_token
        assert portals.portals()[sim.member_id] == stored
        assert stored.application_token == seeded.application_token == client.portal.application_token
        await portals.stop()
        assert not crashed
