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
from typing import Any, Callable, Iterable

import structlog

from . import metrics
from .model import FINAL, Status

log = structlog.get_logger(__name__)

TAIL_INTERVAL = 1.0
SNAPSHOT_INTERVAL = 10.0
TAIL_BATCH = 5000

_FINALS = "('delivered','undelivered','expired','rejected','failed')"
_TAIL_SQL = f"""
SELECT e.id, e.message_id, e.seq, e.status, e.applied, e.detail, e.at,
       m.b24_id, m.route, m.status, m.reason, m.created_at, m.updated_at,
       CASE WHEN e.applied = 1 AND e.status IN {_FINALS} THEN
         (SELECT a.at FROM event a WHERE a.message_id = e.message_id AND a.seq = e.seq
            AND a.status = 'accepted' AND a.applied = 1 ORDER BY a.id LIMIT 1)
       END
FROM event e
JOIN message m ON m.id = e.message_id
WHERE e.id > ? ORDER BY e.id LIMIT ?
"""


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
        rows = db.execute(_TAIL_SQL, (self._last_event, TAIL_BATCH)).fetchall()
        if not rows:
            return batch
        self._last_event = rows[-1][0]
        batch.events = len(rows)
        counts = batch.counts
        final_rows: dict[int, tuple[Any, ...]] = {}
        for row in rows:
            _, message_id, seq, status, applied, detail, at, b24_id, route, message_status = row[:10]
            if not applied:
                batch.ignored.append({"id": message_id, "b24_id": b24_id, "route": route, "seq": seq,
                                      "status": status, "message_status": message_status, "detail": detail})
                continue
            key = (route, status)
            counts[key] = counts.get(key, 0) + 1
            if row[13] is not None:
                batch.latencies.append((route, status, max(0.0, at - row[13])))
            if _made_final(row):
                final_rows[message_id] = row
        # Segments settled by one operation share its time, so each of their events looks like
        # the one that settled the message: one line per message, also across two reads.
        for mid in self._last_finals.intersection(final_rows):
            del final_rows[mid]
        self._last_finals = set(final_rows)
        # The provider ids of the messages that became final in this batch, for their one line.
        final = sorted(final_rows)
        provider_ids: dict[int, list[str]] = {}
        for i in range(0, len(final), 500):
            chunk = final[i:i + 500]
            for mid, pid in db.execute(
                f"SELECT message_id, provider_id FROM segment WHERE message_id IN ({','.join('?' * len(chunk))})"
                " AND provider_id IS NOT NULL ORDER BY message_id, seq", chunk,
            ):
                provider_ids.setdefault(mid, []).append(pid)
        batch.finals = [
            {"id": r[1], "b24_id": r[7], "route": r[8], "provider_ids": provider_ids.get(r[1], []),
             "status": r[9], "reason": r[10], "seconds": round(r[12] - r[11], 3)}
            for r in final_rows.values()
        ]
        return batch

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


def _made_final(row: tuple[Any, ...]) -> bool:
    """This applied event is the one that settled its message's final status.

    The store stamps the message's updated_at with the event's own time when
    the event moves the message, so equal times single it out.
    """
    status, applied, at, message_status, updated_at = row[3], row[4], row[6], row[9], row[12]
    return bool(applied) and status == message_status and at == updated_at and Status(status) in FINAL


_children: dict[tuple[str, str], Any] = {}


def _count(route: str, status: str, n: int = 1) -> None:
    child = _children.get((route, status))
    if child is None:
        child = _children[(route, status)] = metrics.STATUS_EVENTS.labels(route, status)
    child.inc(n)
