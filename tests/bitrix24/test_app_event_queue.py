"""The app-event queue on its own (bitrix24/install.py): per-portal order, the pusher held
only while a proof runs, back-off on RETRY, WAIT until the config names the domain."""

from __future__ import annotations

import asyncio
import dataclasses

from smppd.bitrix24.install import EventQueue, Outcome, Verdict
from smppd.model import PortalRecord, StoredAppEvent
from tests.rigs.app_event_rig import FakeHost, config, params


class FakeStore:
    app_event_turn = None  # one machine: no claims

    def __init__(self, now: list[float] | None = None) -> None:
        self.now = now or [0.0]
        self.rows: dict[int, StoredAppEvent] = {}
        self.versions: dict[str, str] = {}

    async def add_app_event(self, event, member_id, domain, auth):
        n = max(self.rows, default=0) + 1
        e = StoredAppEvent(n, event, member_id, domain, dict(auth), "received", self.now[0], 0, self.now[0], None)
        self.rows[e.id] = e
        return e

    async def app_events(self):
        return list(self.rows.values())

    async def update_app_event(self, e):
        self.rows[e.id] = dataclasses.replace(e)

    async def delete_app_events(self, ids):
        for i in ids:
            self.rows.pop(i, None)

    async def set_app_version(self, member_id, version):
        self.versions[member_id] = version

    async def app_version(self, member_id):
        return self.versions.get(member_id)


class ScriptedProver:
    """Answers from a script per (member, event); records the order of attempts."""

    def __init__(self, script: dict[tuple[str, str], list[Verdict]]) -> None:
        self.script = script
        self.tried: list[tuple[str, str]] = []
        self.config = None

    async def attempt(self, e: StoredAppEvent) -> Outcome:
        self.tried.append((e.member_id, e.event))
        verdict = self.script[(e.member_id, e.event)].pop(0)
        record = PortalRecord(e.member_id, e.domain, "", "", "c", "s", "t", "a", "r")
        return Outcome(verdict, "scripted", record if e.event != "ONAPPUNINSTALL" else None, "2")


async def test_order_per_portal_back_off_and_the_pusher_held_only_during_a_proof():
    now = [100.0]
    store, host = FakeStore(now), FakeHost()
    prover = ScriptedProver({("m1", "ONAPPINSTALL"): [Verdict.RETRY, Verdict.APPLY],
                             ("m1", "ONAPPUPDATE"): [Verdict.APPLY],
                             ("m2", "ONAPPINSTALL"): [Verdict.REFUSE]})
    queue = EventQueue(config(["a.bitrix24.by", "b.bitrix24.by"]), store, prover, host,  # type: ignore[arg-type]
                       clock=lambda: now[0], delay=lambda attempts: 5.0 * attempts)
    await queue.receive(params("ONAPPINSTALL", "m1", "a.bitrix24.by"))
    await queue.receive(params("ONAPPUPDATE", "m1", "a.bitrix24.by"))
    await queue.receive(params("ONAPPINSTALL", "m2", "b.bitrix24.by"))
    runner = asyncio.create_task(queue.run())
    await asyncio.sleep(0.05)
    # m1's install must wait 5 s; its update waits behind it; m2 is not held up.
    assert prover.tried == [("m1", "ONAPPINSTALL"), ("m2", "ONAPPINSTALL")]
    assert [e.event for e in queue.events] == ["ONAPPINSTALL", "ONAPPUPDATE"]
    assert queue.events[0].attempts == 1 and queue.events[0].next_at == 105.0
    assert store.rows[1].attempts == 1  # the back-off is stored: a restart keeps the count
    assert host.held == [("m1", True), ("m1", False), ("m2", True), ("m2", False)]
    now[0] = 105.0
    queue.rescan()
    await asyncio.sleep(0.05)
    assert prover.tried[2:] == [("m1", "ONAPPINSTALL"), ("m1", "ONAPPUPDATE")]
    assert host.applied == [("m1", "ONAPPINSTALL"), ("m1", "ONAPPUPDATE")]
    assert queue.events == [] and store.rows == {} and store.versions == {"m1": "2"}
    assert queue.outcomes == {"applied": 2, "refused": 1}
    runner.cancel()


async def test_unknown_domain_waits_is_bounded_and_is_tried_once_the_config_names_it():
    now = [0.0]
    store, host = FakeStore(now), FakeHost()
    prover = ScriptedProver({("m9", "ONAPPINSTALL"): [Verdict.APPLY]})
    cfg = dataclasses.replace(config([]), app_events=dataclasses.replace(config([]).app_events, max_unknown=3,
                                                                         unknown_max_age=100.0))
    queue = EventQueue(cfg, store, prover, host, clock=lambda: now[0])  # type: ignore[arg-type]
    for i in range(5):
        now[0] = float(i)
        await queue.receive(params("ONAPPINSTALL", f"x{i}", f"evil{i}.bitrix24.by"))
    assert [e.member_id for e in queue.events] == ["x2", "x3", "x4"]  # the oldest went
    now[0] = 150.0  # x2..x4 are older than 100 s now: the next one prunes them
    await queue.receive(params("ONAPPINSTALL", "m9", "late.bitrix24.by"))
    assert [e.member_id for e in queue.events] == ["m9"] and list(store.rows) == [6]
    queue.reconfigure(config(["late.bitrix24.by"]))
    runner = asyncio.create_task(queue.run())
    await asyncio.sleep(0.05)
    assert host.applied == [("m9", "ONAPPINSTALL")] and queue.events == []
    runner.cancel()
