"""Store intake: the INSERT itself finds a duplicate (ON CONFLICT DO NOTHING), so a duplicate
must give exactly what the old look-up-first path gave and must write nothing at all."""

from __future__ import annotations

import sqlite3

import pytest

from smppd.model import Status
from smppd.model import NewMessage
from smppd.store import Store

from tests.rigs.store_rig import connect


PHONE = "+375291234567"


def new(b24_id: str, *, text: str = "hello", segments: int = 1, window: float = 600.0, fails: bool = False,
        reason: str | None = None, phone: str | None = PHONE) -> NewMessage:
    return NewMessage(member_id="m1", b24_id=b24_id, code="by_life", route="life", sender="Shop", phone=phone,
                      text=text, encoding="gsm7", segments=segments, reason=reason, duplicate_window=window,
                      duplicate_fails=fails)


def table_sizes(path: str) -> dict[str, int]:
    conn = connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("message", "segment", "event", "outbox", "concat_counter")}
    finally:
        conn.close()


async def test_a_duplicate_of_a_long_message_takes_no_concatenation_reference(store):
    first = await store.intake(new("a" * 32, text="long " * 40, segments=2))
    again = await store.intake(new("a" * 32, text="long " * 40, segments=2))
    other = await store.intake(new("b" * 32, text="other " * 40, segments=2))
    assert (first.concat_ref, first.duplicate) == (0, False)
    assert (again.id, again.duplicate, again.concat_ref) == (first.id, True, None)
    assert other.concat_ref == 1  # the duplicate did not move the per-destination counter


async def test_duplicates_write_nothing_and_report_the_stored_status(store):
    stored = await store.intake_many([
        new("a" * 32),                                    # sent
        new("b" * 32),                                    # a repeat of a: follows it
        new("c" * 32, reason="invalid number", phone=None),  # failed at intake
        new("d" * 32, text="other", fails=True, window=600.0),
        new("e" * 32, text="other", fails=True),          # a repeat that fails instead
    ])
    assert [r.status for r in stored] == [Status.QUEUED, Status.QUEUED, Status.FAILED, Status.QUEUED, Status.FAILED]
    assert stored[1].duplicate_of == stored[0].id and stored[4].reason.startswith("duplicate of message")
    await store.segment_accepted(stored[0].id, 0, "p1")  # the repeat follows: both accepted now
    before = table_sizes(store.path)
    again = await store.intake_many([new(b * 32) for b in "abcde"] + [new("c" * 32, segments=3)])
    assert table_sizes(store.path) == before
    assert [(r.id, r.status, r.duplicate, r.duplicate_of, r.reason, r.concat_ref) for r in again] == [
        (stored[0].id, Status.ACCEPTED, True, None, None, None),
        (stored[1].id, Status.ACCEPTED, True, None, None, None),
        (stored[2].id, Status.FAILED, True, None, None, None),
        (stored[3].id, Status.QUEUED, True, None, None, None),
        (stored[4].id, Status.FAILED, True, None, None, None),
        (stored[2].id, Status.FAILED, True, None, None, None),
    ]


async def test_a_b24_id_twice_in_one_batch_is_stored_once(store):
    first, again, later = await store.intake_many(
        [new("a" * 32), new("a" * 32, text="changed"), new("b" * 32, text="x")])
    assert (again.id, again.duplicate, again.status) == (first.id, True, Status.QUEUED)
    assert not later.duplicate and later.id > first.id
    assert table_sizes(store.path)["message"] == 2 and table_sizes(store.path)["event"] == 2


TABLES = {
    "message": "SELECT * FROM message ORDER BY id",
    "segment": "SELECT * FROM segment ORDER BY row_id, seq",
    "event": "SELECT * FROM event ORDER BY id",
    "outbox": "SELECT * FROM outbox ORDER BY member_id, b24_id",
    "concat_counter": "SELECT * FROM concat_counter ORDER BY phone",
}


def tables(path: str) -> dict[str, list[tuple]]:
    conn = connect(path)
    try:
        return {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        conn.close()


# Every shape an intake can take, in one batch: new, long, held, refused, a repeat of a message
# earlier in the batch, a repeat that fails instead, the same b24_id again, and new ones after.
BATCH = [
    new("01" * 16),
    new("02" * 16, text="long " * 40, segments=3),
    NewMessage(member_id="m1", b24_id="03" * 16, code="by_life", route="life", sender="Shop", phone="+375297000003",
               text="held", encoding="gsm7", segments=2, hold="quiet", hold_until=2000.0, duplicate_window=600.0),
    new("04" * 16, reason="invalid number", phone=None),
    new("05" * 16),                                   # a repeat of 01: follows it, no segments
    new("06" * 16, text="long " * 40, segments=3, fails=True),  # a repeat of 02 that fails
    new("01" * 16),                                   # a duplicate of 01
    new("07" * 16, text="after", segments=2),
    new("05" * 16),                                   # a duplicate of the repeat
    new("08" * 16, text="last"),
]


async def test_a_batch_leaves_exactly_the_rows_one_by_one_leaves(tmp_path):
    outcomes = {}
    for way in ("one_by_one", "batch"):
        s = Store(str(tmp_path / f"{way}.db"), clock=lambda: 1000.0)
        await s.open()
        try:
            await s.intake(new("00" * 16, text="before"))  # something stored already
            if way == "batch":
                results = await s.intake_many(BATCH)
            else:
                results = [await s.intake(m) for m in BATCH]
        finally:
            await s.close()
        outcomes[way] = (results, tables(s.path))
    assert outcomes["batch"] == outcomes["one_by_one"]
    results, rows = outcomes["batch"]
    assert [r.duplicate for r in results] == [False] * 6 + [True, False, True, False]
    assert results[4].duplicate_of == results[0].id and results[5].status is Status.FAILED
    assert [e[1] for e in rows["event"]] == sorted(e[1] for e in rows["event"])  # message after message
    per_message = [sum(1 for seg in rows["segment"] if seg[0] == r.id) for r in results]
    assert per_message == [1, 3, 2, 1, 0, 3, 1, 2, 0, 1]  # a repeat has none; a refused one keeps its own


# --- the repeat check of a batch: one read for the batch, then its own messages --------------------

from smppd.store import intake as store_mod  # noqa: E402

# The check as it was, one SELECT per message: the oracle for _Repeats.
REPEAT_SQL = ("SELECT id, status FROM message WHERE member_id=? AND phone=? AND created_at>=? AND text=?"
              " AND duplicate_of IS NULL AND status NOT IN ('failed', 'rejected') ORDER BY id LIMIT 1")


class ReferenceRepeats:
    def __init__(self, conn: sqlite3.Connection, messages: list[NewMessage], now: float) -> None:
        self.conn = conn

    def first_of(self, m: NewMessage, since: float):
        return self.conn.execute(REPEAT_SQL, (m.member_id, m.phone, since, m.text)).fetchone()

    def stored(self, m: NewMessage, mid: int, now: float) -> None:
        pass


async def random_traffic(path: str, seed: int) -> tuple[list, dict[str, list[tuple]]]:
    import random

    rng = random.Random(seed)
    now = [1000.0]
    s = Store(path, clock=lambda: now[0])
    await s.open()
    results = []
    try:
        for _ in range(40):
            batch = []
            for _ in range(rng.randrange(1, 12)):
                reason = "invalid number" if rng.random() < 0.08 else None
                batch.append(NewMessage(
                    member_id=rng.choice(["m1", "m1", "m2"]), b24_id=f"{rng.randrange(60):032x}", code="c",
                    route="life", sender="S", phone=None if reason else rng.choice(["+375291", "+375292", "+375293"]),
                    text=rng.choice(["a", "b", "a"]), encoding="gsm7", segments=rng.choice([1, 1, 2]), reason=reason,
                    duplicate_window=rng.choice([0.0, 5.0, 600.0, 600.0]), duplicate_fails=rng.random() < 0.2,
                    hold=rng.choice([None, None, "quiet"]), hold_until=2000.0))
            taken = await s.intake_many(batch)
            results.append(taken)
            for r in taken:  # some stored messages fail at the operator, some are delivered
                if not r.duplicate and r.duplicate_of is None and r.status is Status.QUEUED and rng.random() < 0.3:
                    await s.segment_failed(r.id, 0, rng.choice([Status.REJECTED, Status.DELIVERED]), "x")
            now[0] += rng.choice([0.0, 1.0, 3.0, 7.0])
    finally:
        await s.close()
    return results, tables(path)


@pytest.mark.parametrize("seed", range(8))
async def test_the_batch_repeat_check_finds_what_one_select_per_message_found(tmp_path, monkeypatch, seed):
    got = await random_traffic(str(tmp_path / "batch.db"), seed)
    monkeypatch.setattr(store_mod, "_Repeats", ReferenceRepeats)
    want = await random_traffic(str(tmp_path / "reference.db"), seed)
    assert got == want
    results = [r for batch in got[0] for r in batch]
    assert any(r.duplicate_of is not None for r in results) and any(r.duplicate for r in results)
    assert any(r.reason and r.reason.startswith("duplicate of") for r in results)
