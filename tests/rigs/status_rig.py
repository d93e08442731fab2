"""Every shape of a message's life through the store's status path, and the tables it leaves:
what test_store_status_path compares its two paths by, and test_journal_tail replays."""

from __future__ import annotations

from typing import Any

from smppd.model import Status
from smppd.store import NewMessage, Store

from tests.rigs.store_rig import connect

TABLES = {
    "message": "SELECT id, b24_id, status, reason, b24_status, duplicate_of, updated_at, final_at FROM message"
               " ORDER BY id",
    "segment": "SELECT row_id, seq, smsc_id, status, error, updated_at FROM segment ORDER BY row_id, seq",
    "event": "SELECT id, row_id, seq, status, applied, detail, at FROM event ORDER BY id",
    "outbox": "SELECT member_id, b24_id, status, next_at FROM outbox ORDER BY b24_id",
    "receipt_pending": "SELECT route, smsc_id, status, detail, expired FROM receipt_pending ORDER BY id",
}


def new(b24_id: str, *, segments: int = 1, phone: str = "+375291234567", text: str = "hello",
        window: float = 0.0) -> NewMessage:
    return NewMessage(member_id="m1", b24_id=b24_id, code="by_life", route="life", sender="Shop", phone=phone,
                      text=text, encoding="gsm7", segments=segments, duplicate_window=window)


async def life(path: str) -> dict[str, Any]:
    """Every shape of a message's life through resps and receipts; the tables afterwards, and ids."""
    now = [1000.0]
    s = Store(path, clock=lambda: now[0])
    await s.open()

    def tick() -> None:
        now[0] += 1.0

    ids: dict[str, int] = {}
    try:
        # plain: resp, then its receipt
        ids["plain"] = (await s.intake(new("plain", phone="+375291000001"))).id
        # early: two receipts before the resp (ENROUTE, then the final word), on our route;
        # a receipt with the same SMSC id on another route must stay pending
        ids["early"] = (await s.intake(new("early", phone="+375291000002"))).id
        # multi: three parts, resps and receipts interleaved, one part fails
        ids["multi"] = (await s.intake(new("multi", phone="+375291000003", segments=3))).id
        # first and its repeat: the repeat follows the first's status
        ids["first"] = (await s.intake(new("first", phone="+375291000004", text="same", window=600))).id
        ids["repeat"] = (await s.intake(new("repeat", phone="+375291000004", text="same", window=600))).id
        # backwards: a final, then a duplicate final, a late ENROUTE, a late resp
        ids["back"] = (await s.intake(new("back", phone="+375291000005"))).id
        # open: accepted, its receipt never comes; waiting: never submitted; invalid: fails at intake
        ids["open"] = (await s.intake(new("open", phone="+375291000006"))).id
        ids["waiting"] = (await s.intake(new("waiting", phone="+375291000007"))).id
        ids["invalid"] = (await s.intake(NewMessage(member_id="m1", b24_id="invalid", code="by_life", route="life",
                                                    sender="Shop", phone=None, text="hello", encoding="gsm7",
                                                    segments=1, reason="invalid number"))).id
        tick()
        assert await s.apply_receipts("life", [("E1", Status.ACCEPTED, "ENROUTE"),
                                               ("E1", Status.UNDELIVERED, "UNDELIV")]) == [False, False]
        assert await s.apply_receipts("other", [("E1", Status.DELIVERED, "DELIVRD")]) == [False]
        tick()
        await s.segments_accepted([(ids["plain"], 0, "P1"), (ids["early"], 0, "E1"), (ids["multi"], 0, "M0"),
                                   (ids["first"], 0, "F1"), (ids["back"], 0, "B1"), (ids["open"], 0, "O1"),
                                   (999_999, 0, "NOPE")])  # a resp for a message we do not have
        tick()
        assert await s.apply_receipts("life", [("P1", Status.DELIVERED, "DELIVRD"),
                                               ("M0", Status.DELIVERED, "DELIVRD"),
                                               ("B1", Status.DELIVERED, "DELIVRD"),
                                               ("M2", Status.DELIVERED, "DELIVRD")]) == [True, True, True, False]
        tick()
        await s.segments_accepted([(ids["multi"], 1, "M1"), (ids["multi"], 2, "M2")])
        tick()
        assert await s.apply_receipts("life", [("M1", Status.UNDELIVERED, "UNDELIV"),
                                               ("F1", Status.DELIVERED, "DELIVRD"),
                                               ("B1", Status.UNDELIVERED, "UNDELIV"),
                                               ("B1", Status.ACCEPTED, "ENROUTE")]) == [True] * 4
        tick()
        await s.segments_accepted([(ids["back"], 0, "B1")])
        open_messages = [m.id for m in await s.open_messages("life")]
    finally:
        await s.close()
    conn = connect(path)
    try:
        tables = {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        conn.close()
    return {"ids": ids, "open_messages": open_messages, **tables}
