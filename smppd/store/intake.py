"""Intake: a message stored once per (portal, b24_id), and the repeat rule
(the same number and text again within a window follows the first message, or fails).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Sequence

from ..model import STATUS_OF, STATUS_WORD, IntakeResult, NewMessage, OpenMessage, Status
from .status import EVENT_INSERT, b24_forward, event, follow
from .outbox import to_outbox
from .writer import REFUSE, Writer

# Messages with parts still to submit, a page at a time: a range of the message_open index
# (migration 7: no status change made them final), never a scan of the settled ones.
OPEN_MESSAGES = (
    "SELECT m.id, m.sender, m.phone, m.text, group_concat(s.seq), m.concat_ref, m.b24_id FROM message m"
    " JOIN segment s ON s.row_id = m.id"
    " WHERE m.route=? AND m.id > ? AND m.final_at IS NULL AND m.status IN ('queued','submitted','accepted')"
    " AND m.hold IS NULL AND s.status IN ('queued','submitted') GROUP BY m.id ORDER BY m.id LIMIT ?"
)

_ALL = 1 << 62  # "no limit" as a LIMIT both engines take (PostgreSQL refuses SQLite's -1)

# A message's row; a b24_id already stored for the portal inserts nothing (rowcount 0), so
# the common, new message costs no separate duplicate lookup.
_INSERT_MESSAGE = (
    "INSERT INTO message (member_id, b24_id, code, route, sender, phone, text, encoding,"
    " segments, module_id, status, reason, created_at, updated_at, hold, hold_until, entities,"
    " duplicate_of, concat_ref, b24_status, final_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (member_id, b24_id) DO NOTHING"
)


def _intake_many(conn: sqlite3.Connection, messages: Sequence[NewMessage], now: float) -> list[IntakeResult]:
    """Store messages in order; their segment and event rows go in as one executemany each.

    Nothing in an intake reads the segment or event table, and the event rows keep their
    order (a repeat writes the pending rows before its own events), so the database is
    exactly what one message after the other leaves, event ids included.
    """
    rows = _IntakeRows()
    repeats = _Repeats(conn, messages, now)
    results = [_intake(conn, m, now, rows, repeats) for m in messages]
    rows.write(conn)
    return results


class _IntakeRows:
    """The segment and event rows of a batch of intakes, not written yet."""

    def __init__(self) -> None:
        self.segments: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []

    def write(self, conn: sqlite3.Connection) -> None:
        if self.segments:
            conn.executemany("INSERT INTO segment (row_id, seq, route, status, updated_at) VALUES (?,?,?,?,?)",
                             self.segments)
            self.segments = []
        if self.events:
            conn.executemany(EVENT_INSERT, self.events)
            self.events = []


def _intake(conn: sqlite3.Connection, m: NewMessage, now: float, rows: _IntakeRows,
            repeats: _Repeats) -> IntakeResult:
    """Store one message, or find the one already stored under its (portal, b24_id);
    its segment and intake event rows are left in ``rows``.

    The INSERT itself detects the duplicate (Bitrix24 retries are rare), so what it
    stores is decided first, with reads only: a duplicate's repeat check is wasted
    but harmless, and the concatenation counter moves only once the row is in.
    """
    reason, first = m.reason, None
    if reason is None and m.phone is not None and m.duplicate_window > 0:
        first = repeats.first_of(m, now - m.duplicate_window)
        if first is not None and m.duplicate_fails:
            reason, first = f"duplicate of message {first[0]} (same number and text)", None
    status = Status.FAILED if reason else Status.QUEUED
    hold = None if reason or first else m.hold
    ref = _next_concat_ref(conn, m.phone) if m.segments > 1 and not reason and not first else None
    b24 = b24_forward(None, status) if status is Status.FAILED else None
    word = STATUS_WORD[status]
    cur = conn.execute(
        _INSERT_MESSAGE,
        (m.member_id, m.b24_id, m.code, m.route, m.sender, m.phone, m.text, m.encoding,
         m.segments, m.module_id, word, reason, now, now, hold, m.hold_until if hold else None,
         m.entities, first[0] if first else None, ref, b24,
         now if status is Status.FAILED else None),  # final at birth: never in message_open
    )
    if cur.rowcount == 0:  # this portal's b24_id is stored already
        row = conn.execute(
            "SELECT id, status FROM message WHERE member_id=? AND b24_id=?", (m.member_id, m.b24_id)
        ).fetchone()
        return IntakeResult(row[0], STATUS_OF[row[1]], duplicate=True)
    mid = cur.lastrowid
    assert mid is not None
    if ref is not None:
        _take_concat_ref(conn, m.phone, ref)
    if status is Status.QUEUED and first is None:
        repeats.stored(m, mid, now)
    if first is None:  # a repeat gets no segments: nothing of it is ever submitted
        rows.segments += [(mid, seq, m.route, word, now) for seq in range(m.segments)]
    rows.events.append((mid, None, word, 1, reason or (f"held: {hold}" if hold else None), now))
    if b24 is not None:
        to_outbox(conn, m.member_id, m.b24_id, m.code, b24, now)
    if first is not None:
        rows.write(conn)  # its own events follow its intake event
        event(conn, mid, None, status, True, f"repeat of message {first[0]}: follows its status", now)
        follow(conn, mid, m.member_id, m.b24_id, m.code, None, Status.QUEUED, Status(first[1]),
                f"duplicate of message {first[0]}", now)
        status = Status(conn.execute("SELECT status FROM message WHERE id=?", (mid,)).fetchone()[0])
    return IntakeResult(mid, status, duplicate=False, duplicate_of=first[0] if first else None,
                        reason=reason, concat_ref=ref)


def _next_concat_ref(conn: sqlite3.Connection, phone: str | None) -> int:
    """The next 16-bit concatenation reference for one destination (reference §6); read only,
    ``_take_concat_ref`` keeps it once the message is stored (a duplicate takes none).

    A per-destination counter: two long messages to one handset in flight at
    once never share a reference, which a global 8-bit counter or a random one
    (smpplib defect 12) cannot promise.  An 8-bit UDH uses the low octet, which
    still cycles through 256 values per destination.
    """
    row = conn.execute("SELECT last FROM concat_counter WHERE phone=?", (phone or "",)).fetchone()
    return 0 if row is None else (row[0] + 1) & 0xFFFF


def _take_concat_ref(conn: sqlite3.Connection, phone: str | None, ref: int) -> None:
    conn.execute(
        "INSERT INTO concat_counter (phone, last) VALUES (?, ?) ON CONFLICT (phone) DO UPDATE SET last=excluded.last",
        (phone or "", ref),
    )


class _Repeats:
    """The repeat check of a batch of intakes: the earlier message each one repeats (same
    portal, number and text, in its window), as ``ORDER BY id LIMIT 1`` over the stored
    messages and the batch's own earlier ones would find it.

    One read of the stored messages for all of the batch's numbers and texts (the check ran
    one SELECT per message, mostly finding nothing), then the batch's messages as they are
    stored. A message that failed or was refused does not count: sending it again is a
    retry, not a double send; nor does a repeat (it follows its first).
    """

    def __init__(self, conn: sqlite3.Connection, messages: Sequence[NewMessage], now: float) -> None:
        self._earlier: dict[tuple[str, str | None, str], list[tuple[int, str, float]]] = {}  # by id, oldest first
        checked = [m for m in messages if m.reason is None and m.phone is not None and m.duplicate_window > 0]
        if not checked:
            return
        since = now - max(m.duplicate_window for m in checked)
        for member_id in {m.member_id for m in checked}:
            of_member = [m for m in checked if m.member_id == member_id]
            phones = sorted({m.phone for m in of_member if m.phone is not None})
            texts = sorted({m.text for m in of_member})
            for i in range(0, len(phones), 400):
                for j in range(0, len(texts), 400):
                    self._read(conn, member_id, phones[i:i + 400], texts[j:j + 400], since)

    def _read(self, conn: sqlite3.Connection, member_id: str, phones: list[str], texts: list[str],
              since: float) -> None:
        for mid, phone, text, status, created_at in conn.execute(
            f"SELECT id, phone, text, status, created_at FROM message WHERE member_id=?"
            f" AND phone IN ({','.join('?' * len(phones))}) AND created_at>=?"
            f" AND text IN ({','.join('?' * len(texts))})"
            " AND duplicate_of IS NULL AND status NOT IN ('failed', 'rejected') ORDER BY id",
            (member_id, *phones, since, *texts),
        ):
            self._earlier.setdefault((member_id, phone, text), []).append((mid, status, created_at))

    def first_of(self, m: NewMessage, since: float) -> tuple[int, str] | None:
        for mid, status, created_at in self._earlier.get((m.member_id, m.phone, m.text), ()):
            if created_at >= since:
                return mid, status
        return None

    def stored(self, m: NewMessage, mid: int, now: float) -> None:
        """``m`` was stored as ``mid`` at ``now``, queued and no repeat: later messages of the
        batch may repeat it."""
        if m.phone is not None:
            self._earlier.setdefault((m.member_id, m.phone, m.text), []).append((mid, "queued", now))


class Intake(Writer):
    """Storing what Bitrix24 posted, and reading back what is still to send."""

    async def intake(self, m: NewMessage) -> IntakeResult:
        """Store a message once per (portal, b24_id); durable on return."""
        return (await self.intake_many((m,)))[0]

    async def intake_many(self, messages: Sequence[NewMessage]) -> list[IntakeResult]:
        """``intake`` for several messages as one operation: one future and one
        commit-wait for the lot, which is most of the cost of a small message.

        The messages are stored in order in one transaction, so the same
        b24_id twice gives what two ``intake`` calls in a row give (the
        second a duplicate). All or nothing: if one raises, none is stored and
        this raises (the caller may retry them one by one).
        """
        now = self.clock()
        results = await self.execute(lambda conn: _intake_many(conn, messages, now), REFUSE)
        if any((r.status is Status.FAILED or r.duplicate_of is not None) and not r.duplicate for r in results):
            self.outbox_changed.set()
        return results

    async def open_messages(self, route: str, *, after_id: int = 0, limit: int | None = None) -> list[OpenMessage]:
        """Messages with segments never acknowledged by the operator, oldest first.

        Used at start: a segment whose submit_sm was on the wire when the
        daemon died is sent again (at-least-once, DESIGN.md). ``after_id`` and
        ``limit`` page through a backlog too large to hold in memory.
        """

        def op(conn: sqlite3.Connection) -> list[OpenMessage]:
            rows = conn.execute(OPEN_MESSAGES, (route, after_id, _ALL if limit is None else limit)).fetchall()
            return [
                OpenMessage(r[0], route, r[1], r[2], r[3], tuple(sorted(int(x) for x in r[4].split(","))), r[5], r[6])
                for r in rows
            ]

        return await self.execute(op)

