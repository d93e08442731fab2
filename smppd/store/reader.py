"""The store read from the side: a read-only connection, apart from the writer.

Either engine (``engine.connect_readonly``): SQLite's WAL, or PostgreSQL's MVCC, lets it
read while the writer writes; it never takes the writer's lock and never
queues work on it. The journal (``smppd.ops.journal``: status log lines, the store's
metrics) and ``smppd report`` (which works with the daemon stopped) read through it.
The caller owns the connection (``connect_readonly``); these are the reads over it, each
a plain function of the connection that returns records of ``smppd.model``, so no module
outside the store writes SQL or imports the engine: ``Connection`` and ``read_errors`` are
what a caller names instead. The SQL is kept plain (the day of a timestamp in ``_day`` is
SQLite's spelling, which the PostgreSQL connection translates) so either engine runs it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from ..model import FINAL, DayCount, DeliveryTime, IgnoredEvent, SettledRow, Status, StoreFigures, TailEvent
from .database import engine_for
from .engine import Connection, database_errors, redact  # noqa: F401 -- named by callers through reader


def read_errors() -> tuple[type[BaseException], ...]:
    """What a read raises when the store cannot be read (missing file, no permission, locked,
    a PostgreSQL server gone): callers catch these (``except read_errors()``), never the
    engines' own classes. A function, not a constant: psycopg's errors are included once it
    is loaded, and it is loaded only for a PostgreSQL store (it costs ~80 ms to import)."""
    return database_errors()


_FINALS = "(" + ",".join(f"'{s.value}'" for s in sorted(FINAL)) + ")"  # the model's words, as an SQL list
# Every new event, lean: what counting it needs, the receipt latency of an applied final (its
# segment's accepted event is looked up for those only), and whether it may be the event that
# settled its message (its status and time are the message's). Most events are counted and
# nothing more, so their rows carry no ids or texts (a third less CPU per event): the few that
# get a log line are read again by id (``_FINAL_SQL``, ``_IGNORED_SQL``), in the same read
# transaction.
_TAIL_SQL = f"""
SELECT e.id, e.row_id, e.status, e.applied, m.route,
       CASE WHEN e.applied = 1 AND e.status IN {_FINALS} THEN
         e.at - (SELECT a.at FROM event a WHERE a.row_id = e.row_id AND a.seq = e.seq
                   AND a.status = 'accepted' AND a.applied = 1 ORDER BY a.id LIMIT 1)
       END,
       e.status = m.status AND e.at = m.updated_at
FROM event e
JOIN message m ON m.id = e.row_id
WHERE e.id > ? ORDER BY e.id LIMIT ?
"""
# A settled message's one line: the message, and the SMSC ids of its segments in their
# order (one row per segment that has one, one row with NULL when none has).
_FINAL_SQL = (
    "SELECT m.id, m.b24_id, m.route, m.status, m.reason, m.updated_at - m.created_at, s.smsc_id FROM message m"
    " LEFT JOIN segment s ON s.row_id = m.id AND s.smsc_id IS NOT NULL WHERE m.id IN ({}) ORDER BY m.id, s.seq"
)
# An event that was not applied (a late or duplicated resp or receipt), for its debug line.
_IGNORED_SQL = ("SELECT e.id, e.row_id, m.b24_id, m.route, e.seq, e.status, m.status, e.detail FROM event e"
                " JOIN message m ON m.id = e.row_id WHERE e.id IN ({})")
_CHUNK = 500  # ids per IN (...): well under SQLite's limit on parameters


def connect_readonly(database: str) -> Connection:
    """A read-only connection that never takes the writer's lock (SQLite path or PostgreSQL URL)."""
    return engine_for(database).connect_readonly()


@contextmanager
def view(db: Connection) -> Iterator[None]:
    """One consistent view for the reads inside (a read transaction; on PostgreSQL a
    repeatable-read one, as SQLite's snapshot is)."""
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


# --- the journal ----------------------------------------------------------------------


def last_event(db: Connection) -> int:
    """The newest event's id (0 when there is none): where a tail that starts now begins."""
    return int(db.execute("SELECT coalesce(max(id), 0) FROM event").fetchone()[0])


def events_after(db: Connection, after: int, limit: int) -> list[TailEvent]:
    """Up to ``limit`` events newer than ``after``, oldest first."""
    return list(map(TailEvent._make, db.execute(_TAIL_SQL, (after, limit))))


def finals(db: Connection, ids: list[int]) -> Iterator[SettledRow]:
    """Per message of ``ids``, one row per segment with an SMSC id (one row with None when
    none has), by message and seq."""
    return map(SettledRow._make, _by_ids(db, _FINAL_SQL, ids))


def events(db: Connection, ids: list[int]) -> Iterator[IgnoredEvent]:
    """The events of ``ids`` with their message's ids, route and status."""
    return map(IgnoredEvent._make, _by_ids(db, _IGNORED_SQL, ids))


def figures(db: Connection) -> StoreFigures:
    """Messages per (route, status); per portal the outbox's size and oldest created_at;
    receipts waiting for their resp. Call inside ``view`` for one consistent set."""
    messages = {(r, s): n for r, s, n in db.execute("SELECT route, status, count(*) FROM message GROUP BY 1, 2")}
    outbox = {m: (n, oldest) for m, n, oldest in db.execute(
        "SELECT member_id, count(*), min(created_at) FROM outbox GROUP BY 1")}
    pending = db.execute("SELECT count(*) FROM receipt_pending WHERE expired=0").fetchone()[0]
    return StoreFigures(messages, outbox, pending)


# --- smppd report ---------------------------------------------------------------------


def daily_counts(db: Connection, cutoff: float, utc: bool) -> Iterator[DayCount]:
    """Messages and segments per day, route and status, of the messages received since ``cutoff``."""
    return map(DayCount._make, db.execute(
        f"SELECT {_day(utc)}, route, status, count(*), sum(segments) FROM message WHERE created_at >= ?"
        " GROUP BY 1, 2, 3", (cutoff,)))


def delivery_times(db: Connection, cutoff: float, utc: bool) -> Iterator[DeliveryTime]:
    """The delivered messages received since ``cutoff``, each with its time from intake to delivered."""
    return map(DeliveryTime._make, db.execute(
        f"SELECT {_day(utc)}, route, updated_at - created_at FROM message"
        " WHERE created_at >= ? AND status = ?", (cutoff, Status.DELIVERED.value)))


def channels(db: Connection) -> dict[str, int]:
    """How a Viber-first route's messages went out (the channel column): Viber or the SMS fallback."""
    rows = db.execute(
        "SELECT channel, count(*) FROM message WHERE channel IN ('viber', 'viber_fallback') GROUP BY 1").fetchall()
    return {c: int(n) for c, n in rows}


def _day(utc: bool) -> str:
    return "date(created_at, 'unixepoch')" if utc else "date(created_at, 'unixepoch', 'localtime')"


def _by_ids(db: Connection, sql: str, ids: list[int]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` (an ``IN ({})`` of ids) for all of ``ids``, ``_CHUNK`` at a time."""
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        yield from db.execute(sql.format(",".join("?" * len(chunk))), chunk)
