"""The store, watched from the side: status log lines and the store's metrics.

The hot path writes status changes into the ``event`` table and nothing else;
it does not know the Bitrix24 id or the provider id of the segment it touches
and should not look them up.  This watcher tails the ``event`` table through
its own read-only SQLite connection (WAL lets it read while the writer
writes, and it never queues work on the writer), and for each new event:

* counts it and observes receipt latency (accepted → final) per route;
* when it settles its message's final status, logs one ``message_final``
  line carrying every id an admin may search for -- ours, Bitrix24's, the
  provider's of each segment -- the route, the status and the time it took.

One line per message at the end (plus intake's ``message_received``), not
one per step: at a few thousand messages a second, journald's default rate
limit would drop lines, and the steps are in the store anyway.

Every few seconds it also reads the figures behind ``StoreCollector``
(messages by route and status, the Bitrix24 outbox).  It starts at the end of
the table, so a restart does not log history again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import structlog

from . import metrics, phone
from .model import FINAL
from .phone import mask

log = structlog.get_logger(__name__)

TAIL_INTERVAL = 1.0
SNAPSHOT_INTERVAL = 10.0
TAIL_BATCH = 5000

_FINALS = "('delivered','undelivered','expired','rejected','failed')"
_FINAL_WORDS = frozenset(s.value for s in FINAL)
# Every new event, lean: what counting it needs, the receipt latency of an applied final (its
# segment's accepted event is looked up for those only), and whether it may be the event that
# settled its message (its status and time are the message's). Most events are counted and
# nothing more, so their rows carry no ids or texts (a third less CPU per event): the few that
# get a log line are read again by id (``_FINAL_SQL``, ``_IGNORED_SQL``), in the same read
# transaction.
_TAIL_SQL = f"""
SELECT e.id, e.message_id, e.status, e.applied, m.route,
       CASE WHEN e.applied = 1 AND e.status IN {_FINALS} THEN
         e.at - (SELECT a.at FROM event a WHERE a.message_id = e.message_id AND a.seq = e.seq
                   AND a.status = 'accepted' AND a.applied = 1 ORDER BY a.id LIMIT 1)
       END,
       e.status = m.status AND e.at = m.updated_at
FROM event e
JOIN message m ON m.id = e.message_id
WHERE e.id > ? ORDER BY e.id LIMIT ?
"""
# A settled message's one line: the message, and the provider ids of its segments in their
# order (one row per segment that has one, one row with NULL when none has).
_FINAL_SQL = (
    "SELECT m.id, m.b24_id, m.route, m.status, m.reason, m.updated_at - m.created_at, s.provider_id FROM message m"
    " LEFT JOIN segment s ON s.message_id = m.id AND s.provider_id IS NOT NULL WHERE m.id IN ({}) ORDER BY m.id, s.seq"
)
# An event that was not applied (a late or duplicated resp or receipt), for its debug line.
_IGNORED_SQL = ("SELECT e.id, e.message_id, m.b24_id, m.route, e.seq, e.status, m.status, e.detail FROM event e"
                " JOIN message m ON m.id = e.message_id WHERE e.id IN ({})")
_CHUNK = 500  # ids per IN (...): well under SQLite's limit on parameters


def connect_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection that never takes the writer's lock."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only=1")
    return conn


class StoreWatcher:
    def __init__(self, database: str, portals: Callable[[], Iterable[str]], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._portals = portals
        self.clock = clock
        self.collector = metrics.StoreCollector()
        self._conn: sqlite3.Connection | None = None
        self._last_event: int | None = None
        self._last_finals: set[int] = set()  # messages the previous read logged as final
        # One thread owns the connection: reads, and the close, queue up behind each other.
        # A cancelled await does not stop a read already running in the thread, so
        # closing from the event loop could pull the connection from under it.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    # --- running ---------------------------------------------------------------

    async def run(self, tail_interval: float = TAIL_INTERVAL, snapshot_interval: float = SNAPSHOT_INTERVAL) -> None:
        next_snapshot = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.tail()
                if loop.time() >= next_snapshot:
                    await self.snapshot()
                    next_snapshot = loop.time() + snapshot_interval
            except sqlite3.Error as e:  # a locked or missing file must not kill the daemon
                log.warning("journal_read_failed", error=str(e))
            await asyncio.sleep(tail_interval)

    async def aclose(self) -> None:
        """Close the connection in its own thread, after any read still running there."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=False)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def tail(self) -> int:
        """Log and count the events written since the last call; returns how many."""
        batch = await asyncio.get_running_loop().run_in_executor(self._thread, self._read_events)
        for (route, status), n in batch.counts.items():
            _count(route, status, n)
        for route, status, seconds in batch.latencies:
            metrics._child(metrics.RECEIPT_LATENCY, route, status).observe(seconds)
        for final in batch.finals:
            # One line per message, when its status is settled, with every id an admin may
            # search for.  Intermediate steps are in the store (`smppd` RPC "message").
            log.info("message_final", **final)
        for ignored in batch.ignored:
            # A late or duplicated resp/receipt: recorded by the store, never applied backwards.
            log.debug("message_status_ignored", **ignored)
        return batch.events

    async def snapshot(self) -> metrics.StoreSnapshot:
        snap = await asyncio.get_running_loop().run_in_executor(self._thread, self._read_snapshot,
                                                                list(self._portals()))
        self.collector.snapshot = snap
        return snap

    # --- in the worker thread ----------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_readonly(self.database)
        return self._conn

    def _read_events(self) -> "_Batch":
        """Read and sort the new events here, in the journal's thread, so the event loop gets
        a few sums and one line per settled message instead of three rows per message."""
        db = self._db()
        batch = _Batch()
        if self._last_event is None:  # start at the end: history was logged by the previous run
            self._last_event = db.execute("SELECT coalesce(max(id), 0) FROM event").fetchone()[0]
            return batch
        db.execute("BEGIN")  # the lines' reads see what the tail saw
        try:
            rows = db.execute(_TAIL_SQL, (self._last_event, TAIL_BATCH)).fetchall()
            if not rows:
                return batch
            self._last_event = rows[-1][0]
            batch.events = len(rows)
            counts, latencies = batch.counts, batch.latencies
            final: dict[int, None] = {}  # messages settled by an event of this read, in event order
            ignored: list[int] = []
            for event_id, message_id, status, applied, route, latency, settles in rows:
                if not applied:
                    ignored.append(event_id)
                    continue
                key = (route, status)
                counts[key] = counts.get(key, 0) + 1
                if latency is not None:
                    latencies.append((route, status, max(0.0, latency)))
                if settles and status in _FINAL_WORDS:
                    # This event settled its message's final status: the store stamps the message's
                    # updated_at with the event's own time when the event moves it.
                    final[message_id] = None
            # Segments settled by one operation share its time, so each of their events looks like
            # the one that settled the message: one line per message, also across two reads.
            for mid in self._last_finals.intersection(final):
                del final[mid]
            self._last_finals = set(final)
            batch.finals = self._final_lines(db, list(final))
            batch.ignored = [
                {"id": r[1], "b24_id": r[2], "route": r[3], "seq": r[4], "status": r[5], "message_status": r[6],
                 "detail": r[7]}
                for r in sorted(_by_ids(db, _IGNORED_SQL, ignored))
            ]
            return batch
        finally:
            db.execute("COMMIT")

    @staticmethod
    def _final_lines(db: sqlite3.Connection, final: list[int]) -> list[dict[str, Any]]:
        """The ``message_final`` line of each message, in the order given."""
        lines: dict[int, dict[str, Any]] = {}
        for mid, b24_id, route, status, reason, seconds, provider_id in _by_ids(db, _FINAL_SQL, sorted(final)):
            line = lines.get(mid)
            if line is None:
                line = lines[mid] = {"id": mid, "b24_id": b24_id, "route": route, "provider_ids": [],
                                     "status": status, "reason": reason, "seconds": round(seconds, 3)}
            if provider_id is not None:
                line["provider_ids"].append(_loggable_provider_id(provider_id))
        return [lines[mid] for mid in final]

    def _read_snapshot(self, portals: list[str]) -> metrics.StoreSnapshot:
        db = self._db()
        now = self.clock()
        db.execute("BEGIN")  # one consistent view of all three figures
        try:
            messages = {(r, s): n for r, s, n in db.execute("SELECT route, status, count(*) FROM message GROUP BY 1, 2")}
            outbox = {p: (0, 0.0) for p in portals}
            for member_id, n, oldest in db.execute(
                "SELECT member_id, count(*), min(created_at) FROM outbox GROUP BY 1"
            ):
                outbox[member_id] = (n, max(0.0, now - oldest))
            pending = db.execute("SELECT count(*) FROM receipt_pending WHERE expired=0").fetchone()[0]
        finally:
            db.execute("COMMIT")
        return metrics.StoreSnapshot(messages, outbox, pending)


@dataclass
class _Batch:
    """What one read of the event table gives the event loop to do."""

    events: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # applied events per (route, status)
    latencies: list[tuple[str, str, float]] = field(default_factory=list)  # accepted → final, seconds
    finals: list[dict[str, Any]] = field(default_factory=list)  # one message_final line each
    ignored: list[dict[str, Any]] = field(default_factory=list)  # events not applied (debug lines)


def _by_ids(db: sqlite3.Connection, sql: str, ids: list[int]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` (an ``IN ({})`` of ids) for all of ``ids``, ``_CHUNK`` at a time."""
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        yield from db.execute(sql.format(",".join("?" * len(chunk))), chunk)


_children: dict[tuple[str, str], Any] = {}


def _count(route: str, status: str, n: int = 1) -> None:
    child = _children.get((route, status))
    if child is None:
        child = _children[(route, status)] = metrics.STATUS_EVENTS.labels(route, status)
    child.inc(n)


def _loggable_provider_id(provider_id: str) -> str:
    """An operator's id as a log line may carry it: SMSC.ru's ids are ``id:phone`` (SMSC tells
    messages apart by both), so the phone part is masked as every number in a log is."""
    head, sep, tail = provider_id.partition(":")
    return f"{head}:{mask(tail)}" if sep and tail else provider_id
