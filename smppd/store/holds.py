"""Messages a business rule holds (consent to read, quiet hours): stored, not dispatched.

The hold lives in the message row (``hold``, ``hold_until``), so a restart loses
nothing and ``open_messages`` never sends a held message early. The worker that
judges and releases them is ``smppd.rules.holds``; this is what it reads and writes.
"""

from __future__ import annotations

import sqlite3
from typing import Collection, Iterable

from ..model import OpenMessage, Status
from .status import segment_status
from .writer import Writer


class Holds(Writer):
    """The hold worker's reads and moves."""

    async def holds_ended(self, hold: str, becomes: str, now: float) -> int:
        """Messages in ``hold`` whose hold_until has come move to ``becomes`` (no end time)."""
        return await self.execute(lambda conn: conn.execute(
            "UPDATE message SET hold=?, hold_until=NULL WHERE hold=? AND hold_until<=?", (becomes, hold, now)).rowcount)

    async def next_hold_end(self, hold: str) -> float | None:
        """When the first message in ``hold`` is due out of it."""
        return await self.execute(lambda conn: conn.execute(
            "SELECT min(hold_until) FROM message WHERE hold=?", (hold,)).fetchone()[0])

    async def held_since(self, cutoff: float, limit: int) -> list[tuple[int, str, str]]:
        """(id, member_id, hold) of held messages received at or before ``cutoff``, oldest first."""
        return await self.execute(lambda conn: conn.execute(
            "SELECT id, member_id, hold FROM message WHERE hold IS NOT NULL AND created_at <= ? ORDER BY id LIMIT ?",
            (cutoff, limit)).fetchall())

    async def held_counts(self) -> dict[str, int]:
        """Messages waiting per hold."""
        rows = await self.execute(lambda conn: conn.execute(
            "SELECT hold, count(*) FROM message WHERE hold IS NOT NULL GROUP BY hold").fetchall())
        return {hold: n for hold, n in rows}

    async def held(self, hold: str, skip_members: Collection[str], limit: int) -> list[tuple[int, str, str, str]]:
        """(id, member_id, entities JSON, phone) in ``hold``, oldest first, but for the portals skipped."""
        waiting = sorted(skip_members)
        # No "NOT IN ()" when nothing is skipped: SQLite takes an empty list, PostgreSQL does not.
        skip = f" AND member_id NOT IN ({','.join('?' * len(waiting))})" if waiting else ""
        return await self.execute(lambda conn: conn.execute(
            f"SELECT id, member_id, entities, phone FROM message WHERE hold=?{skip}"
            " ORDER BY id LIMIT ?", (hold, *waiting, limit)).fetchall())

    async def fail_held(self, failed: Iterable[tuple[int, str]]) -> None:
        """End held messages with a reason each, through the status path, so the repeats that
        follow them and the Bitrix24 outbox learn it too."""
        rows = list(failed)
        now = self.clock()

        def op(conn: sqlite3.Connection) -> None:
            for mid, reason in rows:
                _fail(conn, mid, reason, now)

        await self.execute(op)

    async def judged(self, hold: str, decisions: list[tuple[int, str | None]], then: str | None,
                     then_until: float | None) -> list[OpenMessage]:
        """Apply verdicts on messages in ``hold``: (id, None) lets one go, (id, reason) fails it.

        What is let go moves to the hold ``then`` until ``then_until`` when ``then`` is
        given, else leaves its hold and is returned, to be dispatched. A message no longer
        in ``hold`` (cancelled meanwhile) is left alone.
        """
        now = self.clock()
        return await self.execute(lambda conn: _judged(conn, hold, decisions, then, then_until, now))


def _open(conn: sqlite3.Connection, mid: int) -> OpenMessage:
    r = conn.execute("SELECT id, route, sender, phone, text, segments, concat_ref, b24_id FROM message WHERE id=?",
                     (mid,)).fetchone()
    return OpenMessage(r[0], r[1], r[2], r[3], r[4], tuple(range(r[5])), r[6], r[7])


def _judged(conn: sqlite3.Connection, hold: str, decisions: list[tuple[int, str | None]], then: str | None,
            then_until: float | None, now: float) -> list[OpenMessage]:
    released = []
    for mid, refused in decisions:
        still = conn.execute("SELECT 1 FROM message WHERE id=? AND hold=?", (mid, hold)).fetchone()
        if still is None:
            continue
        if refused is not None:
            _fail(conn, mid, refused, now)
        elif then is not None:
            conn.execute("UPDATE message SET hold=?, hold_until=? WHERE id=?", (then, then_until, mid))
        else:
            conn.execute("UPDATE message SET hold=NULL, hold_until=NULL WHERE id=?", (mid,))
            released.append(_open(conn, mid))
    return released


def _fail(conn: sqlite3.Connection, mid: int, reason: str, now: float) -> None:
    conn.execute("UPDATE message SET hold=NULL, hold_until=NULL WHERE id=?", (mid,))
    for (seq,) in conn.execute("SELECT seq FROM segment WHERE row_id=?", (mid,)).fetchall():
        segment_status(conn, mid, seq, Status.FAILED, reason, now)
