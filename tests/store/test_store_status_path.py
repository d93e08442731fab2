"""The store's status path (resps, receipts) reads the segment and its message in one statement.

``_accept_segment`` and ``_apply_receipt`` hand ``_segment_status`` the segment's status and
the message's row they read together; without them it reads both itself (the path that
``holds`` and the HTTP providers take). Both paths must leave exactly the same database,
for every shape of a message's life: that is what these tests pin down.
"""

import sqlite3

import pytest

from smppd.store import intake as intake_mod, schema as schema_mod, status as status_mod, writer as writer_mod
from smppd.model import STATUS_OF, STATUS_WORD, Status
from smppd.model import NewMessage
from smppd.store import Store

from tests.rigs.status_rig import TABLES, life, new


@pytest.fixture
async def fast(tmp_path):
    return await life(str(tmp_path / "fast.db"))


async def test_the_read_with_the_segment_leaves_what_the_separate_reads_leave(fast, tmp_path, monkeypatch):
    original = status_mod.segment_status

    def reading_itself(conn, mid, seq, new, detail, now, *, current=None, smsc_id=None, message=None):
        return original(conn, mid, seq, new, detail, now, smsc_id=smsc_id)

    monkeypatch.setattr(status_mod, "segment_status", reading_itself)
    slow = await life(str(tmp_path / "slow.db"))
    for table in (*TABLES, "open_messages"):
        assert fast[table] == slow[table], table


async def test_every_shape_ends_where_it_should(fast):
    ids = fast["ids"]
    status = {b24_id: row[2] for row in fast["message"] for b24_id, mid in ids.items() if row[0] == mid}
    assert status == {"plain": "delivered", "early": "undelivered", "multi": "undelivered",
                      "first": "delivered", "repeat": "delivered", "back": "delivered",
                      "open": "accepted", "waiting": "queued", "invalid": "failed"}
    segments = {(r[0], r[1]): r[3] for r in fast["segment"]}
    assert [segments[(ids["multi"], seq)] for seq in range(3)] == ["delivered", "undelivered", "delivered"]
    assert not any(r[0] == ids["repeat"] for r in fast["segment"]), "a repeat is never submitted"
    outbox = {r[1]: r[2] for r in fast["outbox"]}
    assert outbox == {"plain": "delivered", "early": "undelivered", "multi": "undelivered",
                      "first": "delivered", "repeat": "delivered", "back": "delivered", "open": "sent",
                      "invalid": "failed"}
    # Only the other route's receipt is still waiting: ours were applied by the resp and removed.
    assert fast["receipt_pending"] == [("other", "E1", "delivered", "DELIVRD", 0)]


async def test_a_refused_move_is_still_recorded(fast):
    back = fast["ids"]["back"]
    events = [(r[3], r[4], r[5]) for r in fast["event"] if r[1] == back]
    assert events == [("queued", 1, None), ("accepted", 1, None), ("delivered", 1, "DELIVRD"),
                      ("undelivered", 0, "UNDELIV"), ("accepted", 0, "ENROUTE"), ("accepted", 0, None)]
    early = fast["ids"]["early"]
    events = [(r[3], r[4], r[5]) for r in fast["event"] if r[1] == early]
    # The resp, then the two receipts that waited for it, in their order.
    assert events == [("queued", 1, None), ("accepted", 1, None), ("accepted", 0, "ENROUTE"),
                      ("undelivered", 1, "UNDELIV")]


async def test_the_repeat_follows_each_move_of_its_first(fast):
    repeat = fast["ids"]["repeat"]
    moves = [r[3] for r in fast["event"] if r[1] == repeat and r[5] == "follows its first message"]
    assert moves == ["accepted", "delivered"]


async def test_a_resp_and_a_receipt_run_no_lookup_they_do_not_need(tmp_path):
    """No receipt waited and nobody repeated the message: no receipt_pending or followers query."""
    s = Store(str(tmp_path / "q.db"))
    await s.open()
    try:
        mid = (await s.intake(new("q"))).id
        statements: list[str] = []
        original = writer_mod.run_group

        def traced(conn, ops):
            conn.set_trace_callback(statements.append)
            try:
                return original(conn, ops)
            finally:
                conn.set_trace_callback(None)

        writer_mod.run_group = traced
        try:
            await s.segment_accepted(mid, 0, "Q1")
            assert await s.apply_receipt("life", "Q1", Status.DELIVERED, "DELIVRD")
        finally:
            writer_mod.run_group = original
    finally:
        await s.close()
    work = [q for q in statements if q not in ("BEGIN IMMEDIATE", "COMMIT")]
    assert len(work) == 10, work  # per move: one read, segment, event, message, outbox
    assert not [q for q in work if q.startswith("SELECT id, status, detail FROM receipt_pending")]
    assert not [q for q in work if "WHERE duplicate_of=" in q]


def test_status_of_is_the_enum_for_every_stored_word():
    assert {word: STATUS_OF[word] for word in STATUS_OF} == {s.value: s for s in Status}
    assert all(STATUS_OF[s.value] is s for s in Status)
    with pytest.raises(KeyError):
        STATUS_OF["DELIVRD"]  # a receipt word is not a stored status


def test_status_word_is_the_plain_word_sqlite_binds():
    for status in Status:
        assert STATUS_WORD[status] == status.value and type(STATUS_WORD[status]) is str
        assert STATUS_OF[STATUS_WORD[status]] is status


async def test_stored_statuses_are_plain_words(fast):
    """What the status path writes reads back as the same words the enum had before."""
    words = {s.value for s in Status}
    assert {r[2] for r in fast["message"]} <= words
    assert {r[3] for r in fast["segment"]} <= words
    assert {r[3] for r in fast["event"]} <= words


async def test_final_at_is_stamped_by_the_move_that_makes_a_message_final(fast):
    """final_at keys the message_open index (migration 7): set with updated_at by the final
    move (the repeat's too), never by a move that is not final; a message refused at intake
    is born final, so it never enters the index."""
    final_at = {r[1]: (r[7], r[6]) for r in fast["message"]}
    for b24_id in ("plain", "early", "multi", "first", "repeat", "back"):
        at, updated_at = final_at[b24_id]
        assert at is not None and at <= updated_at, b24_id
    assert final_at["plain"][0] == final_at["plain"][1]
    assert final_at["open"][0] is None and final_at["waiting"][0] is None
    at, updated_at = final_at["invalid"]
    assert at is not None and at == updated_at, "failed at intake: final from its INSERT"
    assert fast["open_messages"] == [fast["ids"]["waiting"]]


def test_open_messages_reads_a_range_of_the_open_index(tmp_path):
    conn = sqlite3.connect(tmp_path / "plan.db", isolation_level=None)
    schema_mod.migrate(conn)
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + intake_mod.OPEN_MESSAGES, ("life", 0, 10))]
    assert plan[0] == "SEARCH m USING INDEX message_open (route=? AND id>?)", plan
    assert not [step for step in plan if step.startswith("SCAN")], plan


async def test_migration_7_marks_the_settled_messages_and_keeps_the_open_ones(tmp_path):
    """A version 6 database: its finished messages get final_at, its open ones are still loaded."""
    path = tmp_path / "v6.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for v in range(1, 7):
        for statement in schema_mod.MIGRATIONS[v].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version=6")
    for mid, status in enumerate(("queued", "accepted", "delivered", "failed", "submitted"), start=1):
        conn.execute(
            "INSERT INTO message (id, member_id, b24_id, code, route, sender, phone, text, encoding, segments,"
            " status, created_at, updated_at) VALUES (?, 'm1', ?, 'c', 'life', 'Shop', '+375291234567', 'hi',"
            " 'gsm7', 1, ?, 1.0, ?)", (mid, status, status, 10.0 + mid))
        seg = "queued" if status == "queued" else status
        conn.execute("INSERT INTO segment (message_id, seq, route, status, updated_at) VALUES (?, 0, 'life', ?, 1)",
                     (mid, seg))
    conn.close()
    s = Store(str(path))
    await s.open()
    try:
        assert [m.id for m in await s.open_messages("life")] == [1, 5]
    finally:
        await s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_mod.SCHEMA_VERSION
    assert dict(conn.execute("SELECT status, final_at FROM message")) == {
        "queued": None, "accepted": None, "delivered": 13.0, "failed": 14.0, "submitted": None}
    conn.close()
