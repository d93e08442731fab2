"""outbox_due leaves out the updates in flight by stepping over them in the range, not by
handing SQLite a JSON array of them: it must give exactly what the old query gave."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3

import pytest

from smppd.model import OutboxItem

# The old read, kept as the oracle: the ids to leave out as a JSON array through json_each.

from smppd.store import Store

from tests.rigs.store_rig import connect

# The old read, kept as the oracle: the ids to leave out as a JSON array through json_each.
REFERENCE = (
    "SELECT o.member_id, o.b24_id, o.code, o.status, o.attempts, m.id FROM outbox o"
    " LEFT JOIN message m ON m.member_id = o.member_id AND m.b24_id = o.b24_id"
    " WHERE o.member_id=? AND (o.status = 'sent') = ? AND o.next_at <= ?"
    " AND o.b24_id NOT IN (SELECT value FROM json_each(?)) ORDER BY o.next_at LIMIT ?"
)
NOW = 1000.0


def reference(path: str, member_id: str, limit: int, exclude: list[str]) -> list[OutboxItem]:
    conn = connect(path)
    try:
        due: list[OutboxItem] = []
        for sent in (False, True):
            due += [OutboxItem(*r) for r in conn.execute(
                REFERENCE, (member_id, sent, NOW, json.dumps(exclude), limit - len(due)))]
            if len(due) >= limit:
                break
        return due
    finally:
        conn.close()


@pytest.fixture
def engine():
    """SQLite only: the lean walk is checked against the old json_each query row for row, ties
    included, and only SQLite's index fixes the order of equal next_at (PostgreSQL's is free)."""
    return "sqlite"


@pytest.fixture
def store_clock():
    return lambda: NOW


@pytest.fixture
async def store(store):
    """conftest's store, filled with 300 updates and the message rows of most of them."""
    s = store
    rng = random.Random(7)

    def fill(conn: sqlite3.Connection) -> None:
        for i in range(300):
            member = "m1" if i % 5 else "m2"
            b24 = f"{i:032x}"
            if i % 7:  # some updates are for messages the store no longer has a row for
                conn.execute("INSERT INTO message (member_id, b24_id, code, route, sender, text, encoding, segments,"
                             " status, created_at, updated_at) VALUES (?,?,'c','r','S','t','gsm7',1,'accepted',0,0)",
                             (member, b24))
            status = rng.choice(["sent", "delivered", "undelivered", "failed"])
            conn.execute("INSERT INTO outbox (member_id, b24_id, code, status, attempts, created_at, next_at)"
                         " VALUES (?,?,?,?,?,?,?)",
                         (member, b24, "c", status, i % 3, 0.0, rng.choice([0.0, 500.0, 999.0, 1000.0, 2000.0])))

    await s.execute(fill)
    return s


async def test_leaving_out_the_updates_in_flight_gives_what_the_old_query_gave(store):
    rng = random.Random(11)
    every = [f"{i:032x}" for i in range(300)]
    for case in range(60):
        member = "m1" if case % 4 else "m2"
        limit = rng.choice([1, 5, 50, 120, 400])
        # In flight: none, the front of the due range (the usual case), or anything at all.
        due_order = [i.b24_id for i in reference(store.path, member, 400, [])]
        exclude = rng.choice([[], due_order[:rng.randrange(1, 80)], rng.sample(every, rng.randrange(1, 200))])
        got = await store.outbox_due(member, limit, exclude=set(exclude))
        assert got == reference(store.path, member, limit, exclude), case
        assert len({i.b24_id for i in got}) == len(got) and not set(exclude) & {i.b24_id for i in got}


async def test_every_due_update_in_flight_leaves_nothing(store):
    due = [i.b24_id for i in await store.outbox_due("m1", 1000)]
    assert due and await store.outbox_due("m1", 50, exclude=due) == []
    assert [i.b24_id for i in await store.outbox_due("m1", 50, exclude=due[1:])] == due[:1]


async def test_the_callers_set_may_change_while_the_read_waits(store):
    inflight = {f"{i:032x}" for i in range(300)}
    read = asyncio.create_task(store.outbox_due("m1", 50, exclude=inflight))
    await asyncio.sleep(0)  # the read is queued for the writer
    inflight.clear()  # the pusher's batch came back before the writer ran the read
    assert await read == []
