"""The Bitrix24 outbox: one status update owed per message, coalesced, pushed in batches.

The status path writes it (``to_outbox``, in the same transaction as the move it
reports); the pusher reads what is due and clears what Bitrix24 took.
"""

from __future__ import annotations

import sqlite3
from typing import Collection, Iterable

from ..model import OutboxItem
from .writer import Writer

# Seconds a ``sent`` waits in the outbox for the receipt that would replace it (to_outbox).
SENT_COALESCE = 10.0

# One range of the outbox_due index (migration 6): the finals ((status = 'sent') = 0) or the
# 'sent's (= 1) that are due, longest due first; no sort, and rows not due are never read.
# Read lazily, a row at a time, until enough were taken (``outbox_due``); the LIMIT (the rows
# wanted plus the ones that may be stepped over) bounds what PostgreSQL sends in one go.
OUTBOX_DUE = (
    "SELECT o.member_id, o.b24_id, o.code, o.status, o.attempts, m.id FROM outbox o"
    " LEFT JOIN message m ON m.member_id = o.member_id AND m.b24_id = o.b24_id"
    " WHERE o.member_id=? AND (o.status = 'sent') = ? AND o.next_at <= ? ORDER BY o.next_at LIMIT ?"
)


def _due_range(conn: sqlite3.Connection, member_id: str, sent: bool, now: float, skip: Collection[str],
               limit: int) -> list[OutboxItem]:
    """The first ``limit`` due rows of one outbox range (OUTBOX_DUE) whose Bitrix24 id is not in ``skip``.

    The ids in flight are the updates handed out before, so they sit at the front of the
    due range: stepping over them here costs less than handing SQLite the ids to leave
    out (a JSON array through json_each built a table of them for each range, 140 -> 89
    µs per call with 150 in flight). The statement is left unfinished and reset.
    """
    due: list[OutboxItem] = []
    if limit <= 0:
        return due
    cur = conn.execute(OUTBOX_DUE, (member_id, sent, now, limit + len(skip)))
    try:
        for row in cur:
            if row[1] not in skip:
                due.append(OutboxItem._make(row))
                if len(due) >= limit:
                    break
    finally:
        cur.close()
    return due


def to_outbox(conn: sqlite3.Connection, member_id: str, b24_id: str, code: str, b24: str, now: float) -> bool:
    """Owe Bitrix24 ``b24``, coalesced with any update not yet pushed (the caller stored b24_status).

    A ``sent`` is due only after SENT_COALESCE seconds: Bitrix24 already shows SENT
    since the hand-off (bitrix24.md §7), so waiting costs nothing visible, and a
    receipt that arrives meanwhile replaces it, which saves one of the portal's
    ~100 updates a second. A final status is due at once.
    """
    conn.execute(
        "INSERT INTO outbox (member_id, b24_id, code, status, created_at, next_at) VALUES (?,?,?,?,?,?)"
        " ON CONFLICT (member_id, b24_id) DO UPDATE SET status=excluded.status, next_at=0",
        (member_id, b24_id, code, b24, now, now + SENT_COALESCE if b24 == "sent" else 0),
    )
    return True


class Outbox(Writer):
    """What the Bitrix24 pushers read and clear."""

    async def outbox_due(self, member_id: str, limit: int = 50, *,
                         exclude: Collection[str] = ()) -> list[OutboxItem]:
        """Final statuses first, ``sent`` last: Bitrix24 already shows SENT after the hand-off
        (bitrix24.md §7), so under load a waiting ``sent`` is better coalesced into its
        final status than spent on one of the portal's ~100 updates a second.

        ``exclude``: Bitrix24 ids whose update is in a batch in flight (the pusher's
        pipeline), so no message is in two batches at once."""
        now = self.clock()
        skip = frozenset(exclude)  # the pusher's set changes on the event loop meanwhile

        def op(conn: sqlite3.Connection) -> list[OutboxItem]:
            due: list[OutboxItem] = []
            for sent in (False, True):  # the finals, then the 'sent's
                due += _due_range(conn, member_id, sent, now, skip, limit - len(due))
                if len(due) >= limit:
                    break
            return due

        return await self.execute(op)

    async def outbox_done(self, items: Iterable[OutboxItem]) -> None:
        """Drop delivered updates, unless a newer status replaced one meanwhile."""
        keys = [(i.member_id, i.b24_id, i.status) for i in items]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM outbox WHERE member_id=? AND b24_id=? AND status=?", keys)

        await self.execute(op)

    async def outbox_retry(self, items: Iterable[OutboxItem], delay: float) -> None:
        at = self.clock() + delay
        keys = [(at, i.member_id, i.b24_id) for i in items]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, next_at=? WHERE member_id=? AND b24_id=?", keys
            )

        await self.execute(op)

    async def outbox_by_portal(self) -> dict[str, tuple[int, float]]:
        """Per portal: updates owed and when the oldest was queued (``smppd status``)."""
        rows = await self.execute(lambda conn: conn.execute(
            "SELECT member_id, count(*), min(created_at) FROM outbox GROUP BY 1").fetchall())
        return {m: (n, oldest) for m, n, oldest in rows}

    async def outbox_due_now(self) -> int:
        """Make every update that waits for a retry due now (after an admin fixed the tokens)."""
        return await self.execute(lambda conn: conn.execute("UPDATE outbox SET next_at=0 WHERE next_at > 0").rowcount)
