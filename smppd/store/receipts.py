"""SMPP resps and receipts as store operations: a read's worth of them at a time.

What they do to segments and messages is ``status``; this is how the routes hand them
over (futures, not coroutines, on the hot path), the receipts that came before their
resp (receipt_pending), the parts that never got one, and mobile-originated messages.
"""

from __future__ import annotations

import asyncio
import sqlite3

from ..ops import metrics
from ..model import NO_RULES, STATUS_WORD, ReceiptRules, Status, Unreceipted
from .status import accept_segment, apply_receipt, segment_status
from .writer import HOLD_BOUNDED, Writer

# How long a receipt whose SMSC id is not known yet waits for its
# submit_sm_resp before it is counted as unmatched (reference/smpp.md §8).
PENDING_RECEIPT_TTL = 600.0
# And at most this many wait at once: a flood of receipts for ids we never had (an SMSC
# replaying another account's traffic) must not grow the table without bound.
MAX_PENDING_RECEIPTS = 100_000


class Receipts(Writer):
    """The operations an SMPP route runs for its resps, receipts and MO."""

    async def segment_accepted(self, row_id: int, seq: int, smsc_id: str) -> None:
        """The operator took a segment; apply any receipt that beat the resp here."""
        await self.segments_accepted([(row_id, seq, smsc_id)])

    def segments_accepted(self, accepted: list[tuple[int, int, str]],
                          rules: ReceiptRules = NO_RULES) -> asyncio.Future[None]:
        """The (row id, seq, smsc_id) of the submit_sm_resps of one read, as one operation.

        Not a coroutine: the route calls it from a protocol callback, and a task per
        resp (to await a coroutine) cost more than the store work itself.
        """
        now = self.clock()

        def op(conn: sqlite3.Connection) -> tuple[None, bool]:
            changed = False
            for row_id, seq, smsc_id in accepted:
                changed |= accept_segment(conn, row_id, seq, smsc_id, now, rules)
            return None, changed

        return self.noting_outbox(self.execute(op))

    async def segment_failed(self, row_id: int, seq: int, status: Status, detail: str) -> None:
        now = self.clock()
        if await self.execute(lambda conn: segment_status(conn, row_id, seq, status, detail, now)):
            self.outbox_changed.set()

    async def apply_receipt(self, route: str, smsc_id: str, status: Status, detail: str) -> bool:
        """Apply a receipt; False when its id is unknown (kept pending, see segment_accepted)."""
        return (await self.apply_receipts(route, [(smsc_id, status, detail)]))[0]

    def apply_receipts(self, route: str, receipts: list[tuple[str, Status, str]]) -> asyncio.Future[list[bool]]:
        """The receipts of one read as one operation; per receipt, whether its id was known."""
        out: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()

        def done(fut: asyncio.Future[list[str | None]]) -> None:
            if fut.cancelled():
                out.cancel()
            elif fut.exception() is not None:
                out.set_exception(fut.exception())  # type: ignore[arg-type]
            else:
                out.set_result([m is not None for m in fut.result()])

        self.match_receipts(route, receipts).add_done_callback(done)
        return out

    def match_receipts(self, route: str, receipts: list[tuple[str, Status, str]],
                       rules: ReceiptRules = NO_RULES) -> asyncio.Future[list[str | None]]:
        """Like ``apply_receipts``; per receipt, how its id matched: "as-is", "hex" (the receipt
        id read as hex matched a decimal resp id), "dec" (read as decimal matched a hex one),
        or None (unknown: kept pending for its resp)."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> tuple[list[str | None], bool]:
            matched: list[str | None] = []
            changed = False
            for smsc_id, status, detail in receipts:
                how, moved = apply_receipt(conn, route, smsc_id, status, detail, now, rules)
                matched.append(how)
                changed |= moved
            return matched, changed

        return self.noting_outbox(self.execute(op, HOLD_BOUNDED))

    async def unreceipted(self, route: str, accepted_before: float, *, limit: int = 1000) -> list[Unreceipted]:
        """Parts accepted before ``accepted_before`` (store clock) that never got a receipt,
        oldest first, read through the segment_awaiting_receipt index (migration 9)."""

        def op(conn: sqlite3.Connection) -> list[Unreceipted]:
            rows = conn.execute(
                "SELECT s.row_id, s.seq, s.smsc_id, m.sender, s.updated_at FROM segment s"
                " INDEXED BY segment_awaiting_receipt JOIN message m ON m.id = s.row_id"
                " WHERE s.route=? AND s.status='accepted' AND s.updated_at < ? AND s.smsc_id IS NOT NULL"
                " ORDER BY s.updated_at LIMIT ?",
                (route, accepted_before, limit),
            ).fetchall()
            return [Unreceipted(*r) for r in rows]

        return await self.execute(op)

    async def no_receipt(self, parts: list[tuple[int, int]]) -> int:
        """End parts that never got a receipt: undelivered, reason "no receipt" (issue 14.8)."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> tuple[int, bool]:
            ended, changed = 0, False
            for mid, seq in parts:
                row = conn.execute("SELECT status FROM segment WHERE row_id=? AND seq=?", (mid, seq)).fetchone()
                if row is None or row[0] != STATUS_WORD[Status.ACCEPTED]:
                    continue  # a receipt came meanwhile
                changed |= segment_status(conn, mid, seq, Status.UNDELIVERED, "no receipt", now)
                ended += 1
            return ended, changed

        return await self.noting_outbox(self.execute(op))

    async def mo_received(self, route: str, source: str, destination: str, esm_class: int,
                          data_coding: int, body: bytes) -> int:
        """Keep a mobile-originated message (a reply, a STOP) for the features that will read it."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO mo (route, source, destination, esm_class, data_coding, body, received_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (route, source, destination, esm_class, data_coding, body, now),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        return await self.execute(op, HOLD_BOUNDED)

    async def expire_pending_receipts(self, ttl: float = PENDING_RECEIPT_TTL,
                                      max_pending: int = MAX_PENDING_RECEIPTS) -> int:
        """Mark receipts that never found their message as unmatched; returns how many."""
        cutoff = self.clock() - ttl

        def op(conn: sqlite3.Connection) -> dict[str, int]:
            by_route: dict[str, int] = {}
            for route, n in conn.execute("SELECT route, count(*) FROM receipt_pending WHERE expired=0"
                                         " AND received_at < ? GROUP BY route", (cutoff,)).fetchall():
                by_route[route] = n
            conn.execute("UPDATE receipt_pending SET expired=1 WHERE expired=0 AND received_at < ?", (cutoff,))
            over = conn.execute("SELECT count(*) FROM receipt_pending WHERE expired=0").fetchone()[0] - max_pending
            if over > 0:  # the oldest give way
                oldest = "SELECT id FROM receipt_pending WHERE expired=0 ORDER BY id LIMIT ?"
                for route, n in conn.execute(f"SELECT route, count(*) FROM receipt_pending WHERE id IN ({oldest})"
                                             " GROUP BY route", (over,)).fetchall():
                    by_route[route] = by_route.get(route, 0) + n
                conn.execute(f"UPDATE receipt_pending SET expired=1 WHERE id IN ({oldest})", (over,))
            return by_route

        by_route = await self.execute(op)
        for route, n in by_route.items():
            metrics.RECEIPTS_UNMATCHED.labels(route).inc(n)
        return sum(by_route.values())
