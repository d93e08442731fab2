import asyncio
import sqlite3

import pytest

from smppd.model import Status
from smppd.store import outbox as store_mod
from smppd.store import SCHEMA_VERSION, Store, integrity_errors

from tests.rigs.store_rig import connect, new


async def test_wal_and_schema(store, store_path):
    conn = connect(store_path)
    assert store.engine.schema_version(conn) == SCHEMA_VERSION
    if store.engine.name == "sqlite":
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_intake_is_idempotent_per_portal_and_message(store):
    first = await store.intake(new())
    again = await store.intake(new())
    other_portal = await store.intake(new(member="m2"))
    assert not first.duplicate and again.duplicate and again.id == first.id
    assert not other_portal.duplicate and other_portal.id != first.id


async def test_intake_is_durable_when_it_returns(store, store_path):
    r = await store.intake(new(segments=2))
    # Another connection sees the committed row right away.
    conn = connect(store_path)
    assert conn.execute("SELECT count(*) FROM segment WHERE row_id=?", (r.id,)).fetchone()[0] == 2


async def test_group_commit_many_concurrent_intakes(store):
    results = await asyncio.gather(*(store.intake(new(f"{i:032x}")) for i in range(500)))
    assert len({r.id for r in results}) == 500
    assert (await store.counts())["messages"]["life"]["queued"] == 500


async def test_failing_op_does_not_spoil_its_group(store):
    def boom(conn):
        conn.execute("INSERT INTO message (id) VALUES (NULL)")  # violates NOT NULL

    ok = store.intake(new("b" * 32))
    bad = store.execute(boom)
    ok2 = store.intake(new("c" * 32))
    results = await asyncio.gather(ok, bad, ok2, return_exceptions=True)
    assert isinstance(results[1], integrity_errors())
    assert not results[0].duplicate and not results[2].duplicate
    assert (await store.counts())["messages"]["life"]["queued"] == 2


async def test_a_failing_op_leaves_none_of_its_own_writes_and_the_others_land_once(store):
    """The group runs optimistically, then again with savepoints after a failure."""
    def half_then_boom(conn):
        conn.execute("INSERT INTO stoplist (phone, source, added_at) VALUES ('+375291111111', 'cli', 0)")
        raise RuntimeError("boom")

    results = await asyncio.gather(store.intake(new("d" * 32)), store.execute(half_then_boom),
                                   store.intake(new("e" * 32)), return_exceptions=True)
    assert isinstance(results[1], RuntimeError)
    assert results[0].id != results[2].id and not results[0].duplicate and not results[2].duplicate
    rows = await store.execute(lambda conn: conn.execute("SELECT count(*) FROM stoplist").fetchone()[0])
    assert rows == 0
    events = await store.execute(lambda conn: conn.execute("SELECT count(*) FROM event").fetchone()[0])
    assert events == 2  # one 'queued' per message: neither intake ran into the table twice


async def test_invalid_number_fails_at_intake_and_owes_bitrix24_a_failed(store):
    r = await store.intake(new(reason="invalid number: landline, not a mobile number"))
    assert r.status is Status.FAILED
    [item] = await store.outbox_due("m1")
    assert item.status == "failed" and item.code == "by_life"
    assert await store.open_messages("life") == []


async def test_segments_aggregate_and_outbox_coalesces(store, monkeypatch):
    monkeypatch.setattr(store_mod, "SENT_COALESCE", 0.0)
    r = await store.intake(new(segments=2))
    await store.segment_accepted(r.id, 0, "A1")
    assert (await store.message(r.id))["status"] == "queued"  # second segment not accepted yet
    await store.segment_accepted(r.id, 1, "A2")
    assert [i.status for i in await store.outbox_due("m1")] == ["sent"]
    assert await store.apply_receipt("life", "A1", Status.DELIVERED, "DELIVRD")
    m = await store.message(r.id)
    assert m["status"] == "accepted", "one segment delivered is not the message delivered"
    assert await store.apply_receipt("life", "A2", Status.DELIVERED, "DELIVRD")
    # 'sent' was never pushed: the outbox holds only the latest status
    assert [i.status for i in await store.outbox_due("m1")] == ["delivered"]
    assert (await store.message(r.id))["status"] == "delivered"


async def test_receipt_before_resp_is_applied_when_the_id_becomes_known(store):
    r = await store.intake(new())
    assert not await store.apply_receipt("life", "5A0001", Status.DELIVERED, "DELIVRD")
    assert (await store.counts())["receipts_pending"] == 1
    await store.segment_accepted(r.id, 0, "5A0001")
    m = await store.message(r.id)
    assert m["status"] == "delivered"
    assert (await store.counts())["receipts_pending"] == 0


async def test_receipt_for_unknown_id_is_kept_and_later_counted(store, tmp_path):
    assert not await store.apply_receipt("life", "NOPE", Status.DELIVERED, "DELIVRD")
    store.clock = lambda: 10**10
    assert await store.expire_pending_receipts(ttl=60) == 1
    assert (await store.counts())["receipts_unmatched"] == 1


async def test_status_never_moves_backwards(store):
    r = await store.intake(new())
    await store.segment_accepted(r.id, 0, "X1")
    await store.apply_receipt("life", "X1", Status.DELIVERED, "DELIVRD")
    await store.apply_receipt("life", "X1", Status.UNDELIVERED, "UNDELIV")  # duplicate/late receipt
    await store.segment_accepted(r.id, 0, "X1")  # a late resp
    m = await store.message(r.id)
    assert m["status"] == "delivered"
    not_applied = [e for e in m["events"] if not e["applied"]]
    assert {e["status"] for e in not_applied} == {"undelivered", "accepted"}


async def test_outbox_done_keeps_a_newer_status(store, monkeypatch):
    monkeypatch.setattr(store_mod, "SENT_COALESCE", 0.0)
    r = await store.intake(new())
    await store.segment_accepted(r.id, 0, "Y1")
    [sent] = await store.outbox_due("m1")
    await store.apply_receipt("life", "Y1", Status.DELIVERED, "DELIVRD")  # arrives while 'sent' is in flight
    await store.outbox_done([sent])
    assert [i.status for i in await store.outbox_due("m1")] == ["delivered"]


async def test_outbox_retry_delays(store):
    await store.intake(new(reason="invalid number: too short"))
    items = await store.outbox_due("m1")
    await store.outbox_retry(items, 30)
    assert await store.outbox_due("m1") == []
    store.clock = lambda: 10**10
    [item] = await store.outbox_due("m1")
    assert item.attempts == 1


async def test_open_messages_survive_restart(tmp_path):
    path = str(tmp_path / "r.db")
    s = Store(path)
    await s.open()
    a = await s.intake(new("1" * 32, segments=3))
    await s.segment_accepted(a.id, 0, "P0")
    b = await s.intake(new("2" * 32))
    await s.close()
    s = Store(path)
    await s.open()
    open_ = {m.id: m.open_segments for m in await s.open_messages("life")}
    assert open_ == {a.id: (1, 2), b.id: (0,)}
    await s.close()


async def test_outbox_due_reads_the_index_not_a_sort(store, store_path):
    """Twice a second in the writer thread: a sort of a large backlog would stall intake."""
    from smppd.store import OUTBOX_DUE

    if store.engine.name != "sqlite":
        pytest.skip("SQLite's query plan")
    conn = connect(store_path)
    for sent in (False, True):
        plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + OUTBOX_DUE, ("m1", sent, 0.0, 50)))
        # A range of the index up to now: the thousands of 'sent's that wait (SENT_COALESCE) are never read.
        assert "USING INDEX outbox_due (member_id=? AND <expr>=? AND next_at<?)" in plan, plan
        assert "TEMP B-TREE" not in plan


async def test_one_operation_for_the_resps_and_one_for_the_receipts_of_a_read(store):
    """apply_receipts tells per receipt whether its id was known; an unknown one waits for
    its resp, which segments_accepted applies, all in one operation per call."""
    a = await store.intake(new("1" * 32))
    b = await store.intake(new("2" * 32, segments=2))
    await store.segments_accepted([(a.id, 0, "PA"), (b.id, 0, "PB0")])
    matched = await store.apply_receipts("life", [("PA", Status.DELIVERED, "DELIVRD"),
                                                  ("PB1", Status.DELIVERED, "DELIVRD"),
                                                  ("PB0", Status.DELIVERED, "DELIVRD")])
    assert matched == [True, False, True]
    assert (await store.message(b.id))["status"] == "queued"  # part 2 not accepted yet: the slowest part sets the pace
    await store.segments_accepted([(b.id, 1, "PB1")])  # its receipt was waiting
    assert [(await store.message(m.id))["status"] for m in (a, b)] == ["delivered", "delivered"]
    assert (await store.counts())["receipts_pending"] == 0


async def test_a_sent_waits_for_its_receipt_a_final_status_does_not(make_store):
    """Bitrix24 shows SENT since the hand-off: our 'sent' is due only after SENT_COALESCE,
    so a receipt in the meantime replaces it and the portal gets one update, not two."""
    now = [1000.0]
    s = await make_store(clock=lambda: now[0])
    a, b = await s.intake(new("a" * 32)), await s.intake(new("b" * 32))
    await s.segments_accepted([(a.id, 0, "PA"), (b.id, 0, "PB")])
    assert await s.outbox_due("m1") == []
    await s.apply_receipt("life", "PA", Status.DELIVERED, "DELIVRD")
    assert [(i.b24_id, i.status) for i in await s.outbox_due("m1")] == [("a" * 32, "delivered")]
    now[0] += store_mod.SENT_COALESCE
    assert [(i.b24_id, i.status) for i in await s.outbox_due("m1")] == [("a" * 32, "delivered"), ("b" * 32, "sent")]
    await s.close()


async def test_a_version_10_database_opens_with_the_ids_renamed_and_keeps_working(tmp_path, make_store):
    """Migration 11 (issue 15.2): segment and event ``message_id`` become ``row_id``, segment
    and receipt_pending ``provider_id`` become ``smsc_id``. A database the previous version
    wrote keeps its rows, a receipt still finds its part by the SMSC's id, and a receipt
    that waited under the old column name is applied when its resp comes."""
    from smppd.store import MIGRATIONS

    path = tmp_path / "v10.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for v in range(1, 11):
        for statement in MIGRATIONS[v].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version=10")
    for mid, status in ((1, "accepted"), (2, "submitted")):
        conn.execute(
            "INSERT INTO message (id, member_id, b24_id, code, route, sender, phone, text, encoding, segments,"
            " status, created_at, updated_at) VALUES (?, 'm1', ?, 'c', 'life', 'Shop', '+375291234567', 'hi',"
            " 'gsm7', 2, ?, 1.0, 1.0)", (mid, f"{mid:032x}", status))
    conn.execute("INSERT INTO segment (message_id, seq, route, provider_id, status, updated_at) VALUES"
                 " (1, 0, 'life', '5A01', 'accepted', 1), (1, 1, 'life', '5A02', 'accepted', 1),"
                 " (2, 0, 'life', NULL, 'submitted', 1), (2, 1, 'life', NULL, 'submitted', 1)")
    conn.execute("INSERT INTO event (message_id, seq, status, applied, at) VALUES (1, 0, 'accepted', 1, 1)")
    conn.execute("INSERT INTO receipt_pending (route, provider_id, status, detail, received_at)"
                 " VALUES ('life', '5A09', 'delivered', 'DELIVRD', 1)")
    conn.close()

    s = await make_store(path)
    assert await s.apply_receipt("life", "5A01", Status.DELIVERED, "DELIVRD")
    assert not await s.apply_receipt("life", "nope", Status.DELIVERED, "DELIVRD")
    await s.segment_accepted(2, 0, "5A09")  # the receipt kept since version 10 beat this resp
    one, two = await s.message(1), await s.message(2)
    assert one is not None and two is not None
    assert [(r["row_id"], r["seq"], r["smsc_id"], r["status"]) for r in one["segment_rows"]] == [
        (1, 0, "5A01", "delivered"), (1, 1, "5A02", "accepted")]
    assert [(r["row_id"], r["seq"], r["smsc_id"], r["status"]) for r in two["segment_rows"]] == [
        (2, 0, "5A09", "delivered"), (2, 1, None, "submitted")]
    assert [(e["row_id"], e["status"]) for e in one["events"]][:2] == [(1, "accepted"), (1, "delivered")]

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in ("segment", "event", "receipt_pending")}
    assert {"row_id", "smsc_id"} <= columns["segment"] and "row_id" in columns["event"]
    assert "smsc_id" in columns["receipt_pending"]
    assert not {"message_id", "provider_id"} & (columns["segment"] | columns["event"] | columns["receipt_pending"])
    # the indexes follow the rename: a receipt's lookup still searches, never scans the parts
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN SELECT row_id FROM segment WHERE route='life'"
                                       " AND smsc_id='5A01'")]
    assert any("segment_provider" in step for step in plan), plan
    conn.close()


async def test_held_reads_with_and_without_portals_to_skip(store):
    """The hold worker's read, with no portal skipped too (no empty NOT IN list: PostgreSQL
    refuses one, and a holds step failed on it every time)."""

    a = await store.intake(new("1" * 32)._replace(hold="quiet", hold_until=1e12))
    b = await store.intake(new("2" * 32, member="m2")._replace(hold="quiet", hold_until=1e12))
    assert [r[0] for r in await store.held("quiet", set(), 10)] == [a.id, b.id]
    assert [r[0] for r in await store.held("quiet", {"m2"}, 10)] == [a.id]
    assert await store.held("consent", set(), 10) == []
