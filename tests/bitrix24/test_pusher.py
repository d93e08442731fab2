"""The status pusher against the simulated portal: batches, purges, outages."""

import aiohttp
import pytest

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.bitrix24.pusher import OUTAGE_MAX, StatusPusher
from smppd.bitrix24.rest import RestClient
from smppd.model import PortalRecord
from smppd.model import Status
from smppd.model import NewMessage
from smppd.store import Store

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


@pytest.fixture
async def setup(store):
    portal = SimulatedPortal(rate=None)
    await portal.start()
    http = aiohttp.ClientSession()
    auth = PortalRecord(**portal.install_auth())
    client = RestClient(http, auth, rate=None, max_attempts=2, backoff_base=0.01, backoff_max=0.02)
    yield portal, store, StatusPusher(store, client)
    await http.close()
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
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        await pusher.push(await store.outbox_due(portal.member_id))
    [gone] = [e for e in logs if e["event"] == "bitrix24_message_gone"]
    assert gone["b24_id"] == ids[1] and isinstance(gone["message"], int), "both ids on the line"
    assert await store.outbox_due(portal.member_id) == []
    assert pusher.dropped == 1 and pusher.pushed == 2


async def test_outage_keeps_the_outbox(setup):
    portal, store, pusher = setup
    ids = await accepted_and_delivered(portal, store, 5)
    portal.overloaded = True  # 503 OVERLOAD_LIMIT: not retried by the client
    await pusher.push(await store.outbox_due(portal.member_id))
    assert pusher.paused_until > store.clock()  # the portal is paused, the updates stay
    assert (await store.counts())["outbox"] == 5
    portal.overloaded = False
    await pusher.push(await store.outbox_due(portal.member_id))
    assert all(portal.messages[i].status == "delivered" for i in ids)


async def test_outage_of_an_hour_loses_nothing_and_drains_in_full_batches(setup):
    """An hour of 503 OVERLOAD_LIMIT on an injected clock: every update survives, the portal
    is probed at most every OUTAGE_MAX, and once it answers the backlog leaves in batches of 50."""
    portal, store, pusher = setup
    now = [0.0]
    store.clock = lambda: now[0]
    ids = await accepted_and_delivered(portal, store, 130)
    portal.overloaded = True
    failed_batches = 0
    while now[0] < 3600:
        if now[0] >= pusher.paused_until:
            await pusher.push(await store.outbox_due(portal.member_id))
            failed_batches += 1
        now[0] += 1
    assert 60 <= failed_batches <= 200  # probes, not a request per second nor one per hour
    assert (await store.counts())["outbox"] == 130
    portal.overloaded = False
    before = portal.requests
    while (await store.counts())["outbox"]:
        if now[0] >= pusher.paused_until:
            await pusher.push(await store.outbox_due(portal.member_id))
        else:
            now[0] += 1
    assert now[0] <= 3600 + OUTAGE_MAX
    assert portal.requests - before == 3  # 50 + 50 + 30
    assert all(portal.messages[i].status == "delivered" and portal.messages[i].regressions() == [] for i in ids)


async def test_rate_limit_storm_is_ridden_out(store):
    """The portal's bucket is far smaller than the client believes (another app on the same
    IP shares it): 503 QUERY_LIMIT_EXCEEDED storms, retries, nothing lost or reordered."""
    portal = SimulatedPortal(rate=20.0, burst=1)
    await portal.start()
    async with aiohttp.ClientSession() as http:
        auth = PortalRecord(**portal.install_auth())
        client = RestClient(http, auth, rate=None, max_attempts=50, backoff_base=0.01, backoff_max=0.05)
        pusher = StatusPusher(store, client)
        ids = await accepted_and_delivered(portal, store, 300)
        while items := await store.outbox_due(portal.member_id):
            await pusher.push(items)
    assert portal.rejected_rate_limited > 0
    assert pusher.pushed == 300
    assert all(portal.messages[i].status == "delivered" and portal.messages[i].regressions() == [] for i in ids)
    await portal.stop()


async def test_per_command_errors_are_handled_one_by_one(setup):
    portal, store, pusher = setup
    ids = await accepted_and_delivered(portal, store, 4)
    portal.purge(ids[0])  # terminal: ends its update
    portal.refuse(ids[1], "ERROR_MESSAGE_STATUS_INCORRECT")  # refused: kept for a later retry
    await pusher.push(await store.outbox_due(portal.member_id))
    assert pusher.pushed == 2 and pusher.dropped == 1
    assert (await store.counts())["outbox"] == 1
    assert portal.messages[ids[2]].status == portal.messages[ids[3]].status == "delivered"


async def test_final_statuses_leave_before_sent(setup, monkeypatch):
    """Under load a waiting 'sent' should be coalesced into its final status, not spent."""
    from smppd.store import outbox as store_mod

    monkeypatch.setattr(store_mod, "SENT_COALESCE", 0.0)  # here: the order once both are due
    portal, store, pusher = setup
    sent_only = []
    for i in range(3):
        b24_id, _ = portal.create_message("by_life", "+375291234567", f"s{i}")
        r = await store.intake(NewMessage(portal.member_id, b24_id, "by_life", "life", "Shop",
                                          "+375291234567", f"s{i}", "gsm7", 1))
        await store.segment_accepted(r.id, 0, f"S{i}")
        sent_only.append(b24_id)
    finals = await accepted_and_delivered(portal, store, 2)
    due = await store.outbox_due(portal.member_id, 2)
    assert [i.b24_id for i in due] == finals and {i.status for i in due} == {"delivered"}
    assert [i.status for i in await store.outbox_due(portal.member_id)][2:] == ["sent"] * 3


async def test_the_pipeline_keeps_batches_in_flight_and_never_sends_a_message_twice(setup):
    """run() keeps several batches in flight (the portal is slow), and an update in flight
    is never read into another batch: 400 messages, 8 requests, each message once."""
    import asyncio

    from smppd.bitrix24 import pusher as pusher_mod

    portal, store, pusher = setup
    ids = await accepted_and_delivered(portal, store, 400)
    seen: list[str] = []
    in_flight = peak = 0
    batch = pusher.client.batch

    async def slow_batch(commands, **kw):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        seen.extend(c[1]["MESSAGE_ID"] for c in commands.values())
        try:
            # Slow enough that the store's next reads come back before the first batch does,
            # on PostgreSQL (a round trip per statement) on a loaded machine too.
            await asyncio.sleep(0.3)
            return await batch(commands, **kw)
        finally:
            in_flight -= 1

    pusher.client.batch = slow_batch
    task = asyncio.create_task(pusher.run())
    for _ in range(200):
        if all(portal.messages[i].status == "delivered" for i in ids):
            break
        await asyncio.sleep(0.02)
    pusher.stop()
    await task
    assert all(portal.messages[i].status == "delivered" and portal.messages[i].regressions() == [] for i in ids)
    assert sorted(seen) == sorted(ids)  # each message in exactly one batch
    assert peak == pusher_mod.PIPELINE


async def test_without_a_backlog_updates_wait_for_the_batch_in_flight_instead_of_a_request_each(setup):
    """Partial batches side by side would spend the portal's ~2 requests/s on a few updates
    each: while a batch is in flight, updates that trickle in wait and leave together."""
    import asyncio

    portal, store, pusher = setup
    first = await accepted_and_delivered(portal, store, 10)
    sizes: list[int] = []
    batch = pusher.client.batch

    async def slow_batch(commands, **kw):
        sizes.append(len(commands))
        await asyncio.sleep(1.0)  # the ten late ones (40 store operations) arrive meanwhile, on either engine
        return await batch(commands, **kw)

    pusher.client.batch = slow_batch
    task = asyncio.create_task(pusher.run())
    while not sizes:
        await asyncio.sleep(0.01)
    later = []
    for i in range(10):  # one at a time, while the first batch is in flight
        b24_id, _ = portal.create_message("by_life", "+375291234567", f"late{i}")
        r = await store.intake(NewMessage(portal.member_id, b24_id, "by_life", "life", "Shop",
                                          "+375291234567", f"late{i}", "gsm7", 1))
        await store.segments_accepted([(r.id, 0, f"L{i}")])
        await store.apply_receipt("life", f"L{i}", Status.DELIVERED, "DELIVRD")
        later.append(b24_id)
        await asyncio.sleep(0.005)
    for _ in range(200):
        if all(portal.messages[i].status == "delivered" for i in first + later):
            break
        await asyncio.sleep(0.02)
    pusher.stop()
    await task
    assert all(portal.messages[i].status == "delivered" for i in first + later)
    assert sizes == [10, 10]
