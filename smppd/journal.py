"""The store, watched from the side: status log lines and the store's metrics.

The hot path writes status changes into the ``event`` table and nothing else;
it does not know the Bitrix24 id or the provider id of the segment it touches
and should not look them up.  This watcher tails the ``event`` table through
its own read-only SQLite connection (WAL lets it read while the writer
writes, and it never queues work on the writer), and for each new event:

* logs one ``message_status`` line carrying every id an admin may search
  for -- ours, Bitrix24's, the provider's -- and the route;
* counts it and observes receipt latency (accepted → final) per route.

Every few seconds it also reads the figures behind ``StoreCollector``
(messages by route and status, the Bitrix24 outbox).  It starts at the end of
the table, so a restart does not log history again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any, Callable, Iterable

import structlog

from . import metrics
from .model import FINAL, Status

log = structlog.get_logger(__name__)

TAIL_INTERVAL = 1.0
SNAPSHOT_INTERVAL = 10.0
TAIL_BATCH = 5000

_TAIL_SQL = """
SELECT e.id, e.message_id, e.seq, e.status, e.applied, e.detail, e.at,
       m.b24_id, m.route, m.status, s.provider_id,
       (SELECT a.at FROM event a WHERE a.message_id = e.message_id AND a.seq = e.seq
          AND a.status = 'accepted' AND a.applied = 1 ORDER BY a.id LIMIT 1)
FROM event e
JOIN message m ON m.id = e.message_id
LEFT JOIN segment s ON s.message_id = e.message_id AND s.seq = e.seq
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

    # --- running ---------------------------------------------------------------

    async def run(self, tail_interval: float = TAIL_INTERVAL, snapshot_interval: float = SNAPSHOT_INTERVAL) -> None:
        next_snapshot = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    await self.tail()
                    if loop.time() >= next_snapshot:
                        await self.snapshot()
                        next_snapshot = loop.time() + snapshot_interval
                except sqlite3.Error as e:  # a locked or missing file must not kill the daemon
                    log.warning("journal_read_failed", error=str(e))
                await asyncio.sleep(tail_interval)
        finally:
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def tail(self) -> int:
        """Log and count the events written since the last call; returns how many."""
        rows = await asyncio.to_thread(self._read_events)
        for row in rows:
            self._event(*row)
        return len(rows)

    async def snapshot(self) -> metrics.StoreSnapshot:
        snap = await asyncio.to_thread(self._read_snapshot, list(self._portals()))
        self.collector.snapshot = snap
        return snap

    # --- in the worker thread ----------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_readonly(self.database)
        return self._conn

    def _read_events(self) -> list[tuple[Any, ...]]:
        db = self._db()
        if self._last_event is None:  # start at the end: history was logged by the previous run
            self._last_event = db.execute("SELECT coalesce(max(id), 0) FROM event").fetchone()[0]
            return []
        rows = db.execute(_TAIL_SQL, (self._last_event, TAIL_BATCH)).fetchall()
        if rows:
            self._last_event = rows[-1][0]
        return rows

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

    # --- per event -----------------------------------------------------------------

    def _event(self, event_id: int, message_id: int, seq: int | None, status: str, applied: int,
               detail: str | None, at: float, b24_id: str, route: str, message_status: str,
               provider_id: str | None, accepted_at: float | None) -> None:
        fields = dict(id=message_id, b24_id=b24_id, route=route, provider_id=provider_id, seq=seq,
                      status=status, message_status=message_status, detail=detail)
        if not applied:
            # A late or duplicated resp/receipt: recorded by the store, never applied backwards.
            log.info("message_status_ignored", **fields)
            return
        metrics.STATUS_EVENTS.labels(route, status).inc()
        if accepted_at is not None and Status(status) in FINAL:
            metrics.RECEIPT_LATENCY.labels(route, status).observe(max(0.0, at - accepted_at))
        # info, not warning, for failures too: an undeliverable number is the
        # business's news, not the daemon's trouble; the ratio alerts watch those.
        log.info("message_status", **fields)
