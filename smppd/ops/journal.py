"""The store, watched from the side: status log lines and the store's metrics.

The hot path writes status changes into the ``event`` table and nothing else;
it does not know the Bitrix24 id or the SMSC id of the segment it touches
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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import structlog

from . import metrics
from .. import phone
from ..model import FINAL
from ..phone import mask
from ..store import reader
from ..store.reader import Connection, connect_readonly, read_errors

log = structlog.get_logger(__name__)

TAIL_INTERVAL = 1.0
SNAPSHOT_INTERVAL = 10.0
TAIL_BATCH = 5000

_FINAL_WORDS = frozenset(s.value for s in FINAL)


class StoreWatcher:
    def __init__(self, database: str, portals: Callable[[], Iterable[str]], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._portals = portals
        self.clock = clock
        self.collector = metrics.StoreCollector()
        self._conn: Connection | None = None
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
            except read_errors() as e:  # a locked or missing file, a lost server: never kill the daemon
                log.warning("journal_read_failed", error=str(e))
                # The next read opens a new connection (PostgreSQL: after a failover, the new primary).
                await loop.run_in_executor(self._thread, self._close)
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
        info = log.bind().info  # bound once per read (structlog's advice for a logger in a loop)
        for final in batch.finals:
            # One line per message, when its status is settled, with every id an admin may
            # search for.  Intermediate steps are in the store (`smppd` RPC "message").
            info("message_final", **final)
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

    def _db(self) -> Connection:
        if self._conn is None:
            self._conn = connect_readonly(self.database)
        return self._conn

    def _read_events(self) -> "_Batch":
        """Read and sort the new events here, in the journal's thread, so the event loop gets
        a few sums and one line per settled message instead of three rows per message."""
        db = self._db()
        batch = _Batch()
        if self._last_event is None:  # start at the end: history was logged by the previous run
            self._last_event = reader.last_event(db)
            return batch
        with reader.view(db):  # the lines' reads see what the tail saw
            rows = reader.events_after(db, self._last_event, TAIL_BATCH)
            if not rows:
                return batch
            self._last_event = rows[-1].event_id
            batch.events = len(rows)
            counts, latencies = batch.counts, batch.latencies
            final: dict[int, None] = {}  # messages settled by an event of this read, in event order
            ignored: list[int] = []
            for event_id, row_id, status, applied, route, latency, settles in rows:
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
                    final[row_id] = None
            # Segments settled by one operation share its time, so each of their events looks like
            # the one that settled the message: one line per message, also across two reads.
            for mid in self._last_finals.intersection(final):
                del final[mid]
            self._last_finals = set(final)
            batch.finals = self._final_lines(db, list(final))
            batch.ignored = [
                {"id": e.row_id, "b24_id": e.b24_id, "route": e.route, "seq": e.seq, "status": e.status,
                 "message_status": e.message_status, "detail": e.detail}
                for e in sorted(reader.events(db, ignored))
            ]
            return batch

    @staticmethod
    def _final_lines(db: Connection, final: list[int]) -> list[dict[str, Any]]:
        """The ``message_final`` line of each message, in the order given."""
        lines: dict[int, dict[str, Any]] = {}
        for mid, b24_id, route, status, reason, seconds, smsc_id in reader.finals(db, sorted(final)):
            line = lines.get(mid)
            if line is None:
                line = lines[mid] = {"id": mid, "b24_id": b24_id, "route": route, "smsc_ids": [],
                                     "status": status, "reason": reason, "seconds": round(seconds, 3)}
            if smsc_id is not None:
                line["smsc_ids"].append(_loggable_smsc_id(smsc_id))
        return [lines[mid] for mid in final]

    def _read_snapshot(self, portals: list[str]) -> metrics.StoreSnapshot:
        now = self.clock()
        db = self._db()
        with reader.view(db):  # one consistent view of all three figures
            figures = reader.figures(db)
        outbox = {p: (0, 0.0) for p in portals}
        for member_id, (n, oldest) in figures.outbox.items():
            outbox[member_id] = (n, max(0.0, now - oldest))
        return metrics.StoreSnapshot(figures.messages, outbox, figures.receipts_pending)


@dataclass
class _Batch:
    """What one read of the event table gives the event loop to do."""

    events: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # applied events per (route, status)
    latencies: list[tuple[str, str, float]] = field(default_factory=list)  # accepted → final, seconds
    finals: list[dict[str, Any]] = field(default_factory=list)  # one message_final line each
    ignored: list[dict[str, Any]] = field(default_factory=list)  # events not applied (debug lines)


_children: dict[tuple[str, str], Any] = {}


def _count(route: str, status: str, n: int = 1) -> None:
    child = _children.get((route, status))
    if child is None:
        child = _children[(route, status)] = metrics.STATUS_EVENTS.labels(route, status)
    child.inc(n)


def _loggable_smsc_id(smsc_id: str) -> str:
    """An operator's id as a log line may carry it: SMSC.ru's ids are ``id:phone`` (SMSC tells
    messages apart by both), so the phone part is masked as every number in a log is."""
    head, sep, tail = smsc_id.partition(":")
    return f"{head}:{mask(tail)}" if sep and tail else smsc_id
