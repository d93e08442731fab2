"""Status propagation, the heart of the domain: a resp, a receipt or a provider's word moves
a segment, the segment moves its message, the message moves its repeats and what Bitrix24
is owed (the outbox).

Plain functions over a connection, run in the writer's thread inside an operation. The
rules (what may move where, what Bitrix24 sees) come from ``model``: a status never moves
backwards; a move that would is recorded as an event with applied=0 and changes nothing.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..model import (
    BITRIX24_RANK,
    FINAL,
    NO_RULES,
    STATUS_OF,
    STATUS_WORD,
    ReceiptRules,
    Status,
    aggregate,
    bitrix24_status,
    may_advance,
)
from .outbox import to_outbox

# What ``_message_status`` needs of a message, read together with the segment that moves
# (one statement instead of two per status change). The last column says whether any repeat
# follows the message: the message_followers partial index answers it inside this read, so
# the followers are fetched only for a message somebody repeated (rare), not after every move.
_MESSAGE_COLUMNS = (
    "m.status, m.member_id, m.b24_id, m.code, m.b24_status, m.segments,"
    " EXISTS (SELECT 1 FROM message f WHERE f.duplicate_of = m.id)"
)
_MESSAGE_READ = f"SELECT {_MESSAGE_COLUMNS} FROM message m WHERE m.id=?"
# A submit_sm_resp's segment, its message, and whether a receipt for the new SMSC id came
# first (receipt_pending): the pending receipts are read only when there are some.
_RESP_READ = (
    f"SELECT s.route, s.status, {_MESSAGE_COLUMNS},"
    " EXISTS (SELECT 1 FROM receipt_pending p WHERE p.route = s.route AND p.smsc_id = ?)"
    " FROM segment s JOIN message m ON m.id = s.row_id WHERE s.row_id=? AND s.seq=?"
)
# The same, when receipt_id_base = auto: a receipt may have come first under a hex/decimal
# reading of the resp id (issue 14.6), so the pending check looks for three spellings.
_RESP_READ_READINGS = _RESP_READ.replace("p.smsc_id = ?", "p.smsc_id IN (?, ?, ?)")
# A receipt's segment, found by its SMSC id, and the segment's message.
_RECEIPT_READ = (
    f"SELECT s.row_id, s.seq, s.status, {_MESSAGE_COLUMNS}"
    " FROM segment s JOIN message m ON m.id = s.row_id WHERE s.route=? AND s.smsc_id=?"
)


def accept_segment(conn: sqlite3.Connection, row_id: int, seq: int, smsc_id: str, now: float,
                   rules: ReceiptRules = NO_RULES) -> bool:
    """A submit_sm_resp: the segment is accepted under ``smsc_id``, and any receipt that
    arrived first (receipt_pending) is applied now; True if the outbox changed."""
    early_ids = [smsc_id]
    if rules.id_readings:  # a receipt that came first under another reading of this id
        early_ids += [r for _, r in _resp_readings(smsc_id)]
        early_ids += [smsc_id] * (3 - len(early_ids))  # one statement, cached: always 3 ids
        row = conn.execute(_RESP_READ_READINGS, (*early_ids, row_id, seq)).fetchone()
    else:
        row = conn.execute(_RESP_READ, (smsc_id, row_id, seq)).fetchone()
    if row is None:
        return False
    changed = segment_status(conn, row_id, seq, Status.ACCEPTED, None, now,
                              current=STATUS_OF[row[1]], smsc_id=smsc_id, message=row[2:9])
    if not row[9]:  # the usual case: no receipt came first
        early_ids = []
    for early_id in dict.fromkeys(early_ids):
        early = conn.execute(
            "SELECT id, status, detail FROM receipt_pending WHERE route=? AND smsc_id=? AND expired=0 ORDER BY id",
            (row[0], early_id),
        ).fetchall()
        for rid, status, detail in early:
            changed |= segment_status(conn, row_id, seq, STATUS_OF[status], detail, now)
            conn.execute("DELETE FROM receipt_pending WHERE id=?", (rid,))
            if rules.multipart != "all":
                changed |= _whole_message(conn, row_id, seq, STATUS_OF[status], detail, now, rules)
    if rules.multipart != "all" and row[7] > 1:
        changed |= _from_representative(conn, row_id, seq, now, rules)
    return changed


def _receipt_readings(receipt_id: str) -> list[tuple[str, str]]:
    """The other spellings of a receipt id (canonical as-is) a resp may have used:
    ("hex", decimal of it read as hex), ("dec", hex of it read as decimal)."""
    out = []
    if receipt_id and all(c in "0123456789ABCDEF" for c in receipt_id):
        out.append(("hex", str(int(receipt_id, 16))))
    if receipt_id.isdigit():
        out.append(("dec", format(int(receipt_id), "X")))
    return [(k, v) for k, v in out if v != receipt_id]


def _resp_readings(resp_id: str) -> list[tuple[str, str]]:
    """The spellings of a resp id a receipt that came first may have used (inverse of above)."""
    out = []
    if resp_id.isdigit():
        out.append(("hex", format(int(resp_id), "X")))  # receipt in hex, resp in decimal
    if resp_id and all(c in "0123456789ABCDEF" for c in resp_id):
        out.append(("dec", str(int(resp_id, 16))))  # receipt in decimal, resp in hex
    return [(k, v) for k, v in out if v != resp_id]


_RECEIPT_READ_OPEN = _RECEIPT_READ + " AND s.status='accepted'"


def apply_receipt(conn: sqlite3.Connection, route: str, smsc_id: str, status: Status, detail: str,
                  now: float, rules: ReceiptRules = NO_RULES) -> tuple[str | None, bool]:
    """(how the id matched, or None; outbox changed); an unknown id waits in receipt_pending
    for its resp."""
    how: str | None = "as-is"
    row = conn.execute(_RECEIPT_READ, (route, smsc_id)).fetchone()
    if row is None and rules.id_readings:
        for how, reading in _receipt_readings(smsc_id):
            row = conn.execute(_RECEIPT_READ_OPEN, (route, reading)).fetchone()
            if row is not None:
                break
    if row is None:
        conn.execute(
            "INSERT INTO receipt_pending (route, smsc_id, status, detail, received_at) VALUES (?,?,?,?,?)",
            (route, smsc_id, status, detail, now),
        )
        return None, False
    mid, seq = row[0], row[1]
    changed = segment_status(conn, mid, seq, status, detail, now, current=STATUS_OF[row[2]], message=row[3:10])
    if rules.multipart != "all" and row[8] > 1:
        changed |= _whole_message(conn, mid, seq, status, detail, now, rules)
    return how, changed


def _stands_for_message(seq: int, segments: int, multipart: str) -> bool:
    return multipart == "any" or (multipart == "first" and seq == 0) or (
        multipart == "last" and seq == segments - 1)


def _whole_message(conn: sqlite3.Connection, mid: int, seq: int, status: Status, detail: str | None,
                   now: float, rules: ReceiptRules) -> bool:
    """A receipt of the part that stands for the message (multipart_receipts) ends the other
    parts the operator accepted; parts accepted later take it on acceptance."""
    if status not in FINAL:
        return False
    segments = conn.execute("SELECT segments FROM message WHERE id=?", (mid,)).fetchone()[0]
    if not _stands_for_message(seq, segments, rules.multipart):
        return False
    changed = False
    accepted = STATUS_WORD[Status.ACCEPTED]
    for (other,) in conn.execute("SELECT seq FROM segment WHERE row_id=? AND seq<>? AND status=?",
                                 (mid, seq, accepted)).fetchall():
        changed |= segment_status(conn, mid, other, status, f"{detail} (receipt of part {seq + 1})", now)
    return changed


def _from_representative(conn: sqlite3.Connection, mid: int, seq: int, now: float, rules: ReceiptRules) -> bool:
    """A part accepted after the receipt of the part that stands for its message."""
    rows = conn.execute("SELECT seq, status, error FROM segment WHERE row_id=? AND seq<>?", (mid, seq)).fetchall()
    segments = len(rows) + 1
    for other, word, error in rows:
        status = STATUS_OF[word]
        if status in FINAL and _stands_for_message(other, segments, rules.multipart):
            detail = f"{error or word} (receipt of part {other + 1})"
            return segment_status(conn, mid, seq, status, detail, now)
    return False


EVENT_INSERT = "INSERT INTO event (row_id, seq, status, applied, detail, at) VALUES (?,?,?,?,?,?)"


def event(conn: sqlite3.Connection, mid: int, seq: int | None, status: Status, applied: bool,
          detail: str | None, now: float) -> None:
    conn.execute(EVENT_INSERT, (mid, seq, STATUS_WORD[status], int(applied), detail, now))


def segment_status(conn: sqlite3.Connection, mid: int, seq: int, new: Status, detail: str | None,
                   now: float, *, current: Status | None = None, smsc_id: str | None = None,
                   message: tuple[Any, ...] | None = None) -> bool:
    """Move one segment forward, recompute its message; True if the outbox changed.

    A move backwards (a late resp after a receipt, a duplicated receipt) is
    recorded as an event with applied=0 and changes nothing else (but a
    ``smsc_id`` is still kept: receipts are matched by it). ``current`` is
    the segment's status when the caller has just read it, ``message`` the
    message's ``_MESSAGE_COLUMNS`` read with it (nothing wrote the message since).
    """
    if current is None:
        row = conn.execute("SELECT status FROM segment WHERE row_id=? AND seq=?", (mid, seq)).fetchone()
        if row is None:
            return False
        current = STATUS_OF[row[0]]
    if not may_advance(current, new):
        if smsc_id is not None:
            conn.execute("UPDATE segment SET smsc_id=? WHERE row_id=? AND seq=?", (smsc_id, mid, seq))
        event(conn, mid, seq, new, False, detail, now)
        return False
    error = _failure(new, detail)
    word = STATUS_WORD[new]
    if smsc_id is None:  # a receipt: SQLite leaves the segment_provider index alone
        conn.execute("UPDATE segment SET status=?, error=coalesce(?, error), updated_at=? WHERE row_id=? AND seq=?",
                     (word, error, now, mid, seq))
    else:
        conn.execute("UPDATE segment SET status=?, error=coalesce(?, error), smsc_id=?, updated_at=?"
                     " WHERE row_id=? AND seq=?", (word, error, smsc_id, now, mid, seq))
    event(conn, mid, seq, new, True, detail, now)
    return _message_status(conn, mid, now, detail, new, message)


def all_segments(conn: sqlite3.Connection, mid: int, new: Status, detail: str | None, now: float) -> bool:
    """Move every segment of an HTTP-provider message at once (one id per message)."""
    changed = False
    for (seq,) in conn.execute("SELECT seq FROM segment WHERE row_id=? ORDER BY seq", (mid,)).fetchall():
        changed |= segment_status(conn, mid, seq, new, detail, now)
    return changed


def _message_status(conn: sqlite3.Connection, mid: int, now: float, detail: str | None,
                    segment_new: Status, message: tuple[Any, ...] | None = None) -> bool:
    """Recompute a message from its segments after one moved to ``segment_new``.

    The common message has one segment, whose status is the message's: no
    second read of the segment table then. ``message``: its ``_MESSAGE_COLUMNS``
    when the caller read them with the segment, else they are read here.
    """
    if message is None:
        message = conn.execute(_MESSAGE_READ, (mid,)).fetchone()
    status, member_id, b24_id, code, b24_current, segments, followed = message
    current = STATUS_OF[status]
    if segments == 1:
        new = segment_new
    else:
        parts = conn.execute("SELECT status FROM segment WHERE row_id=?", (mid,))
        new = aggregate([STATUS_OF[s] for (s,) in parts])
    if not may_advance(current, new):
        return False
    reason = _failure(new, detail)
    b24 = b24_forward(b24_current, new)
    _move_message(conn, mid, new, reason, b24, now)
    changed = b24 is not None and to_outbox(conn, member_id, b24_id, code, b24, now)
    if followed:  # somebody repeated this message: the repeats take its status
        for f in conn.execute(
            "SELECT id, member_id, b24_id, code, b24_status, status FROM message WHERE duplicate_of=?", (mid,)
        ).fetchall():
            changed |= follow(conn, f[0], f[1], f[2], f[3], f[4], STATUS_OF[f[5]], new, reason, now)
    return changed


def follow(conn: sqlite3.Connection, mid: int, member_id: str, b24_id: str, code: str, b24_current: str | None,
           current: Status, new: Status, reason: str | None, now: float) -> bool:
    """A repeat takes its first message's status: one SMS went out, both posts learn its fate."""
    if not may_advance(current, new):
        return False
    b24 = b24_forward(b24_current, new)
    _move_message(conn, mid, new, _failure(new, reason), b24, now)
    event(conn, mid, None, new, True, "follows its first message", now)
    return b24 is not None and to_outbox(conn, member_id, b24_id, code, b24, now)


def _failure(new: Status, detail: str | None) -> str | None:
    """What a move to ``new`` keeps as the segment's error or the message's reason: the
    detail of a final status other than delivered; earlier steps keep the one they had."""
    return detail if new in FINAL and new is not Status.DELIVERED else None


def _move_message(conn: sqlite3.Connection, mid: int, new: Status, reason: str | None, b24: str | None,
                  now: float) -> None:
    """Store a message's new status (the caller checked ``may_advance``); a final one also
    stamps final_at, which takes the message out of the message_open index (migration 7).
    A move that is not final leaves final_at out of its SET, so SQLite leaves the index alone."""
    if new in FINAL:
        conn.execute(
            "UPDATE message SET status=?, reason=coalesce(?, reason), updated_at=?, b24_status=coalesce(?, b24_status),"
            " final_at=? WHERE id=?", (STATUS_WORD[new], reason, now, b24, now, mid)
        )
    else:
        conn.execute(
            "UPDATE message SET status=?, reason=coalesce(?, reason), updated_at=?, b24_status=coalesce(?, b24_status)"
            " WHERE id=?", (STATUS_WORD[new], reason, now, b24, mid)
        )


def b24_forward(b24_current: str | None, new: Status) -> str | None:
    """The Bitrix24 status to hand over for ``new``, or None when Bitrix24 would see no forward move.

    Only forward moves in Bitrix24's own terms are queued: the portal has no
    monotonic guard of its own (reference/bitrix24.md §7).
    """
    b24 = bitrix24_status(new)
    if b24 is None:
        return None
    if b24_current is not None and BITRIX24_RANK[b24] <= BITRIX24_RANK[b24_current]:
        return None
    return b24

