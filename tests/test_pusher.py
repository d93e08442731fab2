"""The status pusher against the simulated portal: batches, purges, outages."""

import aiohttp
import pytest

from smppd.bitrix24.portal import SimulatedPortal
from smppd.bitrix24.pusher import StatusPusher
from smppd.bitrix24.rest import PortalAuth, RestClient
from smppd.model import Status
from smppd.store import NewMessage, Store


@pytest.fixture
async def setup(tmp_path):
    portal = SimulatedPortal(rate=None)
    await portal.start()
    store = Store(str(tmp_path / "p.db"))
    await store.open()
    http = aiohttp.ClientSession()
    auth = PortalAuth(member_id=portal.member_id, domain=portal.domain, client_endpoint=portal.client_endpoint,
                      server_endpoint=portal.server_endpoint, access_token=portal.access_token,
                      refresh_token=portal.refresh_token, client_id=portal.client_id,
                      client_secret=portal.client_secret)
    client = RestClient(http, auth, rate=None, max_attempts=2, backoff_base=0.01, backoff_max=0.02)
    yield portal, store, StatusPusher(store, client)
    await http.close()
    await store.close()
    await portal.stop()


async def accepted_and_delivered(portal, store, n):
    ids = []
    for i in range(n):
        b24_id, _ = portal.create_message("by_life", "+375291234567", f"m{i}")
        r = await store.intake(NewMessage(portal.member_id, b24_id, "by_life", "life", "Shop",
                                          "+375291234567", f"m{i}", "gsm7", 1))
        await store.segment_accepted(r.id, 0, f"P{i}")
        await store.apply_receipt("life", f"P{i}", Status.DELIVERED, "DELIVRD")
        ids.append(b24_id)
    return ids


async def test_coalesced_updates_go_in_batches_of_50(setup):
    portal, store, pusher = setup
    ids = await accepted_and_delivered(portal, store, 120)
    before = portal.requests
    while items := await store.outbox_due(portal.member_id):
        await pusher.push(items)
    assert portal.requests - before == 3  # 50 + 50 + 20
    for i in ids:
        m = portal.messages[i]
        assert m.status == "delivered"
        assert "sent" not in [s for _, s in m.history[1:]], "the superseded 'sent' was never pushed"
    assert pusher.pushed == 120


async def test_purged_message_ends_its_update(setup):
    portal, store, pusher = setup
    ids = await accepted_and_delivered(portal, store, 3)
    portal.purge(ids[1])
    await pusher.push(await store.outbox_due(portal.member_id))
    assert await store.outbox_due(portal.member_id) == []
    assert pusher.dropped == 1 and pusher.pushed == 2


async def test_outage_keeps_the_outbox(setup):
    portal, store, pusher = setup
    ids = await accepted_and_delivered(portal, store, 5)
    portal.overloaded = True  # 503 OVERLOAD_LIMIT: not retried by the client
    await pusher.push(await store.outbox_due(portal.member_id))
    assert await store.outbox_due(portal.member_id) == []  # delayed, not gone
    assert (await store.counts())["outbox"] == 5
    portal.overloaded = False
    store.clock = lambda: 10**10  # the retry comes due
    await pusher.push(await store.outbox_due(portal.member_id))
    assert all(portal.messages[i].status == "delivered" for i in ids)
