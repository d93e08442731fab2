"""Two nodes on one PostgreSQL refresh one portal's single-use refresh token: exactly one
refresh reaches the OAuth server, and both nodes end with the pair it issued."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from smppd.bitrix24.rest import RestClient
from smppd.model import PortalRecord
from smppd.sims.bitrix24 import SimulatedPortal
from tests.conftest import MakeStore

pytestmark = pytest.mark.integration

CODE = "by_sms_main"
UPDATE = "messageservice.message.status.update"


@pytest.fixture
def engine() -> str:
    """Only PostgreSQL: several nodes share nothing else."""
    return "postgresql"


def client(http: aiohttp.ClientSession, portal: PortalRecord, store) -> RestClient:
    return RestClient(http, portal, rate=None, backoff_base=0.01, backoff_max=0.05,
                      on_tokens=store.save_tokens, refresh_turn=store.refresh_turn)


async def deliver(sim: SimulatedPortal, node: RestClient) -> None:
    b24_id, _ = sim.create_message(CODE, "+375291234567", "Ваш заказ готов")
    await node.call(UPDATE, {"CODE": CODE, "MESSAGE_ID": b24_id, "STATUS": "delivered"})


async def test_two_nodes_refreshing_one_portal_spend_its_refresh_token_once(make_store: MakeStore) -> None:
    async with SimulatedPortal(rate=None) as sim, aiohttp.ClientSession() as http:
        portal = PortalRecord(**sim.install_auth())
        first, second = await make_store(), await make_store()
        await first.upsert_portal(portal)
        assert first.refresh_turn is not None  # PostgreSQL: shared by nodes
        one, other = client(http, portal, first), client(http, portal, second)
        sim.expire_access_token()

        await asyncio.gather(deliver(sim, one), deliver(sim, other))

        assert sim.refreshes == 1
        assert one.portal.refresh_token == other.portal.refresh_token == sim.refresh_token
        stored = await second.portal(portal.member_id)
        assert stored is not None and stored.refresh_token == sim.refresh_token
        # Both keep working with the pair, and the next expiry is refreshed once more, not twice.
        sim.expire_access_token()
        await asyncio.gather(deliver(sim, one), deliver(sim, other))
        assert sim.refreshes == 2
        assert one.portal.access_token == other.portal.access_token == sim.access_token


async def test_one_machine_takes_no_cluster_lock(make_store: MakeStore, tmp_path) -> None:
    store = await make_store(tmp_path / "one.db")
    assert store.refresh_turn is None
