"""HTTP providers (SMS.ru, SMSC): one SMSC id per message, callbacks, polls and the
Viber-to-SMS fallback.
"""

from __future__ import annotations

import sqlite3
from typing import Iterable

from ..model import OpenMessage, PollItem, Status
from .status import all_segments, event
from .writer import Writer


class Polling(Writer):
    """The operations an HTTP route runs."""

    # --- HTTP providers: one SMSC id per message ----------------------------
    #
    # An HTTP provider splits the text itself and answers with one id per
    # message, so the id sits on segment 0 and every segment row of the
    # message moves together: the message is delivered when the provider says
    # so, and the SMPP aggregate rules keep working unchanged.

    async def provider_accepted(self, row_id: int, smsc_id: str, *, poll_at: float,
                                channel: str | None = None, pending_ttl: float | None = None) -> None:
        """The provider took the message; apply any callback that beat its answer
        (and is younger than ``pending_ttl``: an older one is a stale or forged
        word about an id the provider happened to reuse)."""
        now = self.clock()
        oldest = now - pending_ttl if pending_ttl is not None else float("-inf")

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT route FROM message WHERE id=?", (row_id,)).fetchone()
            if row is None:
                return False
            route = row[0]
            conn.execute("UPDATE segment SET smsc_id=NULL WHERE row_id=?", (row_id,))
            conn.execute("UPDATE segment SET smsc_id=? WHERE row_id=? AND seq=0", (smsc_id, row_id))
            conn.execute("UPDATE message SET poll_at=?, channel=coalesce(?, channel) WHERE id=?",
                         (poll_at, channel, row_id))
            changed = all_segments(conn, row_id, Status.ACCEPTED, None, now)
            early = conn.execute(
                "SELECT id, status, detail, expired, received_at FROM receipt_pending"
                " WHERE route=? AND smsc_id=? ORDER BY id",
                (route, smsc_id),
            ).fetchall()
            for rid, status, detail, expired, received_at in early:
                if not expired and received_at >= oldest:
                    changed |= all_segments(conn, row_id, Status(status), detail, now)
                conn.execute("DELETE FROM receipt_pending WHERE id=?", (rid,))
            return changed

        if await self.execute(op):
            self.outbox_changed.set()

    async def provider_submitting(self, planned: Iterable[tuple[int, str]]) -> None:
        """Before a request goes out: the id the provider will know each message by.

        Only for providers where we choose the id (SMSC): after a crash the
        route asks the provider about these ids instead of resending blindly.
        """
        now = self.clock()
        rows = list(planned)

        def op(conn: sqlite3.Connection) -> None:
            for mid, pid in rows:
                conn.execute("UPDATE segment SET smsc_id=? WHERE row_id=? AND seq=0", (pid, mid))
                all_segments(conn, mid, Status.SUBMITTED, None, now)

        await self.execute(op)

    async def submitted_unconfirmed(self, route: str) -> list[PollItem]:
        """Messages whose request went out with a known id but whose answer never came."""

        def op(conn: sqlite3.Connection) -> list[PollItem]:
            rows = conn.execute(
                "SELECT m.id, s.smsc_id, m.phone, m.channel, m.sender, m.text, m.created_at FROM message m"
                " JOIN segment s ON s.row_id = m.id AND s.seq = 0"
                " WHERE m.route=? AND m.status IN ('queued','submitted') AND s.status='submitted'"
                " AND s.smsc_id IS NOT NULL ORDER BY m.id",
                (route,),
            ).fetchall()
            return [PollItem(*r) for r in rows]

        return await self.execute(op)

    async def provider_failed(self, row_id: int, status: Status, detail: str) -> None:
        """The provider refused the message for good."""
        now = self.clock()
        if await self.execute(lambda conn: all_segments(conn, row_id, status, detail, now)):
            self.outbox_changed.set()

    async def provider_receipt(self, route: str, smsc_id: str, status: Status, detail: str,
                               *, keep_pending: bool = True, pending_max: int | None = None,
                               pending_ttl: float | None = None) -> int | None:
        """Apply a callback or poll result; the row id, or None when the id is unknown.

        An unknown id is kept pending (its send answer may still be on the way)
        unless ``keep_pending`` is False (a poll answer for an id we asked about).
        ``pending_max`` bounds how many such receipts the route keeps (the
        oldest give way) and ``pending_ttl`` how long they wait: a send answer
        comes within seconds, so a callback older than that names no message
        of ours, and a flood of them must not grow the table (issue 18 §5).
        """
        now = self.clock()

        def op(conn: sqlite3.Connection) -> tuple[int | None, bool]:
            row = conn.execute(
                "SELECT row_id FROM segment WHERE route=? AND smsc_id=?", (route, smsc_id)
            ).fetchone()
            if row is None:
                if keep_pending and pending_max != 0:
                    # bounded on disk too: rows past their time or their place are deleted, not
                    # kept as expired (the route counted each in its receipts_unmatched on arrival)
                    if pending_ttl is not None:
                        conn.execute("DELETE FROM receipt_pending WHERE route=? AND (expired=1 OR received_at < ?)",
                                     (route, now - pending_ttl))
                    if pending_max is not None:
                        kept = conn.execute("SELECT count(*) FROM receipt_pending WHERE route=?",
                                            (route,)).fetchone()[0]
                        if kept >= pending_max:  # the oldest give way
                            conn.execute(
                                "DELETE FROM receipt_pending WHERE id IN (SELECT id FROM receipt_pending"
                                " WHERE route=? ORDER BY id LIMIT ?)", (route, kept - pending_max + 1))
                    conn.execute(
                        "INSERT INTO receipt_pending (route, smsc_id, status, detail, received_at)"
                        " VALUES (?,?,?,?,?)",
                        (route, smsc_id, status, detail, now),
                    )
                return None, False
            return row[0], all_segments(conn, row[0], status, detail, now)

        mid, changed = await self.execute(op)
        if changed:
            self.outbox_changed.set()
        return mid

    async def record_event(self, row_id: int, status: Status, detail: str) -> None:
        """Keep a provider word that changes no status (a Viber miss before the SMS fallback)."""
        now = self.clock()
        await self.execute(lambda conn: event(conn, row_id, None, status, False, detail, now))

    async def due_polls(self, route: str, limit: int = 100) -> list[PollItem]:
        """Accepted messages whose poll time has come, oldest first."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> list[PollItem]:
            rows = conn.execute(
                "SELECT m.id, s.smsc_id, m.phone, m.channel, m.sender, m.text, m.created_at FROM message m"
                " JOIN segment s ON s.row_id = m.id AND s.seq = 0"
                " WHERE m.route=? AND m.poll_at IS NOT NULL AND m.poll_at <= ? AND m.status='accepted'"
                " AND s.smsc_id IS NOT NULL ORDER BY m.poll_at LIMIT ?",
                (route, now, limit),
            ).fetchall()
            return [PollItem(*r) for r in rows]

        return await self.execute(op)

    async def poll_item(self, route: str, smsc_id: str) -> PollItem | None:
        """The message an SMSC id belongs to, whatever its status."""

        def op(conn: sqlite3.Connection) -> PollItem | None:
            row = conn.execute(
                "SELECT m.id, s.smsc_id, m.phone, m.channel, m.sender, m.text, m.created_at FROM segment s"
                " JOIN message m ON m.id = s.row_id WHERE s.route=? AND s.smsc_id=?",
                (route, smsc_id),
            ).fetchone()
            return PollItem(*row) if row else None

        return await self.execute(op)

    async def next_poll_at(self, route: str) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            return conn.execute(
                "SELECT min(poll_at) FROM message WHERE route=? AND poll_at IS NOT NULL AND status='accepted'",
                (route,),
            ).fetchone()[0]

        return await self.execute(op)

    async def schedule_polls(self, row_ids: Iterable[int], at: float | None) -> None:
        rows = [(at, mid) for mid in row_ids]
        await self.execute(lambda conn: conn.executemany("UPDATE message SET poll_at=? WHERE id=?", rows))

    async def start_fallback(self, row_id: int) -> None:
        """Viber did not deliver: from now on the message is owed an SMS (survives a restart)."""
        await self.execute(lambda conn: conn.execute(
            "UPDATE message SET channel='viber_fallback', poll_at=NULL WHERE id=?", (row_id,)))

    async def fallbacks_owed(self, route: str) -> list[OpenMessage]:
        """Messages whose Viber attempt failed and whose SMS was not accepted yet."""

        def op(conn: sqlite3.Connection) -> list[OpenMessage]:
            rows = conn.execute(
                "SELECT id, sender, phone, text, b24_id FROM message WHERE route=? AND status='accepted'"
                " AND channel='viber_fallback' AND poll_at IS NULL ORDER BY id",
                (route,),
            ).fetchall()
            return [OpenMessage(r[0], route, r[1], r[2], r[3], (0,), b24_id=r[4]) for r in rows]

        return await self.execute(op)
