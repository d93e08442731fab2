"""A backlog larger than the route's memory queue waits in the store and drains in order.

Why: during a long operator outage every accepted message is queued; holding them
all in memory made the daemon's RSS grow with the backlog (bench/scale.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from smppd.routes.policy import backlog
from smppd.routes.smpp import SmppRoute

from tests.rigs.smpp_route_rig import make_rig, route_config

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(backlog, "REFILL_PAGE", 4)


def submitted_texts(rig) -> Counter[str]:
    return Counter(sm.text for sm in rig.smsc.submitted)


async def test_a_backlog_beyond_memory_waits_in_the_store_and_is_sent_once_in_order(tmp_path, small_pages):
    rig = await make_rig(tmp_path, start=False)
    rig.route.backlog.memory = 10
    try:
        for i in range(50):
            await rig.send(body=f"Code {i}")
        assert rig.route.depth == 10  # the other 40 are only in the store
        assert rig.route.status()["backlog_in_store"] is True
        rig.start()
        statuses = await rig.wait_final(timeout=20)
        assert set(statuses.values()) == {"delivered"}
        texts = submitted_texts(rig)
        assert texts == Counter({f"Code {i}": 1 for i in range(50)})  # none lost, none twice
        assert [sm.text for sm in rig.smsc.submitted] == [f"Code {i}" for i in range(50)]  # oldest first
        assert rig.route.status()["backlog_in_store"] is False
    finally:
        await rig.close()


async def test_messages_arriving_while_the_backlog_drains_are_neither_lost_nor_doubled(tmp_path, small_pages):
    rig = await make_rig(tmp_path, start=False)
    rig.route.backlog.memory = 6
    try:
        for i in range(30):
            await rig.send(body=f"Early {i}")
        rig.start()
        for i in range(30):  # interleaved with refills
            await rig.send(body=f"Late {i}")
            await asyncio.sleep(0)
        await rig.wait_final(timeout=20)
        expected = {f"Early {i}": 1 for i in range(30)} | {f"Late {i}": 1 for i in range(30)}
        assert submitted_texts(rig) == Counter(expected)
    finally:
        await rig.close()


async def test_a_start_reads_only_the_first_page_of_a_large_backlog(tmp_path, small_pages):
    rig = await make_rig(tmp_path, start=False)
    try:
        for i in range(25):
            await rig.send(body=f"Queued {i}")
        # A restart: a new route on the same store, as the daemon builds it at start.
        route = SmppRoute(route_config(rig.smsc.port), rig.store)
        route.backlog.memory = 8
        assert await route.load_open() == 8
        assert route.depth == 8 and route.status()["backlog_in_store"] is True
        rig.route = route
        rig.start()
        await rig.wait_final(timeout=20)
        assert submitted_texts(rig) == Counter({f"Queued {i}": 1 for i in range(25)})
    finally:
        await rig.close()
