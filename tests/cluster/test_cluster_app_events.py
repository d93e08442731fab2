"""Two nodes on one PostgreSQL load the same stored app event after a restart: one node
proves it (its refresh token is spent once), the other drops it as proven elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from smppd.bitrix24.install import EventQueue, Outcome, Verdict
from smppd.model import PortalRecord, StoredAppEvent
from tests.rigs.app_event_rig import FakeHost, config, params
from tests.conftest import MakeStore

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> str:
    """Only PostgreSQL: several nodes share nothing else."""
    return "postgresql"


class SlowProver:
    """A proof that takes a while (the OAuth server, user.admin), shared by both nodes to count them."""

    def __init__(self) -> None:
        self.tried: list[tuple[str, int]] = []
        self.config = None

    async def attempt(self, e: StoredAppEvent) -> Outcome:
        self.tried.append((e.member_id, e.id))
        await asyncio.sleep(0.3)
        return Outcome(Verdict.APPLY, "scripted", PortalRecord(e.member_id, e.domain, "", "", "c", "s", "t", "a", "r"))


async def test_one_node_proves_a_stored_event_the_other_skips_and_drops_it(make_store: MakeStore) -> None:
    first, second = await make_store(), await make_store()
    assert first.app_event_turn is not None
    prover, hosts = SlowProver(), (FakeHost(), FakeHost())
    cfg = config(["a.bitrix24.by", "b.bitrix24.by"])
    before = EventQueue(cfg, first, prover, hosts[0], delay=lambda attempts: 0.2)  # type: ignore[arg-type]
    await before.receive(params("ONAPPINSTALL", "m1", "a.bitrix24.by"))
    await before.receive(params("ONAPPINSTALL", "m2", "b.bitrix24.by"))
    # A restart: both nodes load what is stored.
    queues = [EventQueue(cfg, store, prover, host, delay=lambda attempts: 0.2)  # type: ignore[arg-type]
              for store, host in zip((first, second), hosts)]
    for q in queues:
        await q.load()
    assert all(len(q.events) == 2 for q in queues)
    runners = [asyncio.create_task(q.run()) for q in queues]
    try:
        for _ in range(100):
            if not any(q.events for q in queues):
                break
            await asyncio.sleep(0.05)
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
    assert sorted(prover.tried) == [("m1", 1), ("m2", 2)]  # each proven once, by one node
    assert all(q.events == [] for q in queues) and await first.app_events() == []
    assert sorted(hosts[0].applied + hosts[1].applied) == [("m1", "ONAPPINSTALL"), ("m2", "ONAPPINSTALL")]


async def test_one_machine_claims_nothing(make_store: MakeStore, tmp_path) -> None:
    store = await make_store(tmp_path / "one.db")
    assert store.app_event_turn is None
