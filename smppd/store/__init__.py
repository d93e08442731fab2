"""The durable store: SQLite in WAL mode behind one writer with group commit.

Every read and write is an *operation*: a plain function over a
``sqlite3.Connection``.  Operations queue up in arrival order; the writer task
runs whatever has queued as one transaction in aiosqlite's thread, commits
once, and only then resolves the callers' futures.  That gives the three
properties the rest of the daemon relies on:

* **durable before ack**: ``intake`` returns after COMMIT (synchronous=FULL),
  so the shim's 200 means the row is on disk;
* **one order**: a receipt's lookup runs after the ``segment_accepted`` that was
  queued before it, so there are no read-your-write races between tasks;
* **cheap under load**: a thousand intakes cost one fsync and one thread hop,
  not a thousand.

Status rules (what may move where, what Bitrix24 sees) come from ``model``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

import aiosqlite
import structlog

from .. import metrics

from ..model import (
    BITRIX24_RANK,
    FINAL,
    STATUS_OF,
    STATUS_WORD,
    Status,
    aggregate,
    bitrix24_status,
    may_advance,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]

# How long a receipt whose provider id is not known yet waits for its
# submit_sm_resp before it is counted as unmatched (reference/smpp.md §8).
PENDING_RECEIPT_TTL = 600.0
# And at most this many wait at once: a flood of receipts for ids we never had (an SMSC
# replaying another account's traffic) must not grow the table without bound.
MAX_PENDING_RECEIPTS = 100_000
MAX_GROUP = 2000
# A full disk (issue 19 item 3): how often the writer tries again the writes it holds, and
# how many receipts (SMPP deliver_sm, HTTP callbacks) may wait in memory for the disk
# before the next one is refused (the provider delivers it again later).
UNAVAILABLE_RETRY = 1.0
MAX_HELD_RECEIPTS = 10_000
# Free bytes under the database before new posts are taken again after a full disk.
RESUME_FREE_BYTES = 1 << 20
# Seconds a ``sent`` waits in the outbox for the receipt that would replace it (_to_outbox).
SENT_COALESCE = 10.0

SCHEMA_VERSION = 10
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE portal (
        member_id TEXT PRIMARY KEY,
        domain TEXT NOT NULL,
        client_endpoint TEXT NOT NULL,
        server_endpoint TEXT NOT NULL,
        client_id TEXT NOT NULL,
        client_secret TEXT NOT NULL,
        application_token TEXT NOT NULL,
        access_token TEXT NOT NULL DEFAULT '',
        refresh_token TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL
    );
    CREATE TABLE message (
        id INTEGER PRIMARY KEY,
        member_id TEXT NOT NULL,
        b24_id TEXT NOT NULL,
        code TEXT NOT NULL,
        route TEXT NOT NULL,
        sender TEXT NOT NULL,
        phone TEXT,                      -- E.164, NULL when the number was invalid
        text TEXT NOT NULL,
        encoding TEXT NOT NULL,
        segments INTEGER NOT NULL,
        module_id TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        reason TEXT,
        b24_status TEXT,                 -- the last status handed to the Bitrix24 outbox
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (member_id, b24_id)
    );
    CREATE INDEX message_open ON message (route, id) WHERE status IN ('queued', 'submitted', 'accepted');
    CREATE TABLE segment (
        message_id INTEGER NOT NULL REFERENCES message (id),
        seq INTEGER NOT NULL,            -- 0-based part number
        route TEXT NOT NULL,
        provider_id TEXT,                -- canonical id from submit_sm_resp
        status TEXT NOT NULL,
        error TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (message_id, seq)
    );
    CREATE INDEX segment_provider ON segment (route, provider_id) WHERE provider_id IS NOT NULL;
    CREATE TABLE event (                 -- status history, including what was not applied
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL,
        seq INTEGER,
        status TEXT NOT NULL,
        applied INTEGER NOT NULL,
        detail TEXT,
        at REAL NOT NULL
    );
    CREATE INDEX event_message ON event (message_id);
    CREATE TABLE outbox (                -- status updates owed to Bitrix24, one per message
        member_id TEXT NOT NULL,
        b24_id TEXT NOT NULL,
        code TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        PRIMARY KEY (member_id, b24_id)
    );
    CREATE TABLE receipt_pending (       -- receipts whose provider id is not known (yet)
        id INTEGER PRIMARY KEY,
        route TEXT NOT NULL,
        provider_id TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT,
        received_at REAL NOT NULL,
        expired INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX receipt_pending_id ON receipt_pending (route, provider_id);
    """,
    2: """
    ALTER TABLE message ADD COLUMN hold TEXT;            -- business rules: 'consent' | 'quiet' | NULL
    ALTER TABLE message ADD COLUMN hold_until REAL;      -- wall clock: when a 'quiet' hold ends
    ALTER TABLE message ADD COLUMN entities TEXT;        -- JSON [[type_id, id], ...] for the consent lookup
    ALTER TABLE message ADD COLUMN duplicate_of INTEGER; -- the first message this repeat follows
    CREATE INDEX message_held ON message (hold, hold_until) WHERE hold IS NOT NULL;
    CREATE INDEX message_recent ON message (member_id, phone, created_at);
    CREATE INDEX message_followers ON message (duplicate_of) WHERE duplicate_of IS NOT NULL;
    CREATE TABLE stoplist (                -- numbers that opted out of marketing
        phone TEXT PRIMARY KEY,            -- E.164
        source TEXT NOT NULL,              -- 'cli', 'mo:<route>'
        added_at REAL NOT NULL
    );
    """,
    # HTTP providers (issue 5): which channel carried the message (sms, viber,
    # viber_fallback = Viber did not deliver, SMS went out), and when to ask the
    # provider for a status that no callback brought.
    3: """
    ALTER TABLE message ADD COLUMN channel TEXT;
    ALTER TABLE message ADD COLUMN poll_at REAL;
    CREATE INDEX message_poll ON message (route, poll_at) WHERE poll_at IS NOT NULL;
    """,
    # SMPP hardening (issue 3): per-destination concatenation references, stored MO.
    4: """
    ALTER TABLE message ADD COLUMN concat_ref INTEGER;   -- 16-bit, per destination, NULL for one segment
    CREATE TABLE concat_counter (        -- the last concatenation reference used per destination
        phone TEXT PRIMARY KEY,
        last INTEGER NOT NULL
    );
    CREATE TABLE mo (                    -- mobile-originated messages (replies such as STOP)
        id INTEGER PRIMARY KEY,
        route TEXT NOT NULL,
        source TEXT NOT NULL,
        destination TEXT NOT NULL,
        esm_class INTEGER NOT NULL,
        data_coding INTEGER NOT NULL,
        body BLOB NOT NULL,
        received_at REAL NOT NULL
    );
    """,
    # The pusher asks for the next 50 updates twice a second, in the writer thread:
    # without this index that is a sort of the whole outbox (77 ms at 360,000 rows,
    # an hour of Bitrix24 outage at 100 msg/s), with it 0.1 ms.
    5: """
    CREATE INDEX outbox_due ON outbox (member_id, status = 'sent', created_at);
    """,
    # A 'sent' now waits SENT_COALESCE seconds (next_at in the future), so under load the
    # outbox holds thousands of rows that are not due yet; with created_at in the index the
    # next-50 query stepped over every one of them (3.2 ms at 20,000). With next_at it reads
    # the due range only (16 µs), for the finals and then for the 'sent's.
    6: """
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox (member_id, status = 'sent', next_at);
    """,
    # Every status change SETs message.status, and message_open's WHERE named status: SQLite
    # then deleted and re-inserted the message's index entry at every move, more than half of
    # the UPDATE's cost. The index now names final_at, which only a move to a final status
    # writes (_move_message), or the INSERT of a message that fails at intake. open_messages
    # still filters on status too, so the index could only ever hold too many, never too few.
    7: """
    ALTER TABLE message ADD COLUMN final_at REAL;        -- when a status change made it final
    UPDATE message SET final_at = updated_at WHERE status IN ('delivered','undelivered','expired','rejected','failed');
    DROP INDEX message_open;
    CREATE INDEX message_open ON message (route, id) WHERE final_at IS NULL;
    """,
    # App events are stored before they are answered and proven in the background
    # (bitrix24/events.py): Bitrix24 never posts one twice. An install kept "pending" in the
    # portal table (empty client_id) becomes such an event, so a hand-written [[portal]] for
    # that member is no longer blocked by it.
    8: """
    CREATE TABLE app_event (
        id INTEGER PRIMARY KEY,
        event TEXT NOT NULL,                -- ONAPPINSTALL, ONAPPUPDATE, ONAPPUNINSTALL
        member_id TEXT NOT NULL,
        domain TEXT NOT NULL,               -- host[:port], as auth[domain] said
        auth TEXT NOT NULL,                 -- JSON of the auth block (tokens, like the portal table)
        stage TEXT NOT NULL DEFAULT 'received',  -- 'refreshed': the event's refresh token is spent
        received_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL DEFAULT 0,
        last_error TEXT
    );
    INSERT INTO app_event (event, member_id, domain, auth, received_at)
        SELECT 'ONAPPINSTALL', member_id, domain, json_object('member_id', member_id, 'domain', domain,
            'application_token', application_token, 'client_endpoint', client_endpoint,
            'server_endpoint', server_endpoint, 'access_token', access_token, 'refresh_token', refresh_token),
            updated_at
        FROM portal WHERE client_id = '';
    DELETE FROM portal WHERE client_id = '';
    -- The app version (app.info VERSION) the last proven event showed: a post with an unknown
    -- application_token teaches it only when the portal's version moved since (intake.py).
    CREATE TABLE portal_version (
        member_id TEXT PRIMARY KEY,
        version TEXT NOT NULL
    )
""",
    # issue 14.8: the parts accepted and still waiting for a receipt, oldest first, for the
    # route's no-receipt sweep and query_sm. Reading them through message_open scanned every
    # open message (80 ms per sweep with 200,000 queued, in the writer thread); this index
    # holds only the parts in 'accepted', a handful of seconds' worth on a healthy route.
    9: """
    CREATE INDEX segment_awaiting_receipt ON segment (route, updated_at) WHERE status = 'accepted';
    """,
    # ``smppd contacts normalize --apply`` (issue 16): per portal and CRM entity, every id up
    # to after_id is clean, so a run cut short resumes there. Cleared when a run completes.
    10: """
    CREATE TABLE contacts_progress (
        member_id TEXT NOT NULL,
        entity TEXT NOT NULL,                -- contact, lead, company
        after_id INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (member_id, entity)
    );
    CREATE TABLE hlr_cache (                 -- smppd contacts hlr: a number is not paid for twice within the TTL
        phone TEXT PRIMARY KEY,              -- E.164
        reachable INTEGER NOT NULL,
        operator TEXT NOT NULL,
        region TEXT NOT NULL,
        checked_at REAL NOT NULL
    );
    CREATE TABLE preferred_channel (         -- how a Viber-first cascade last ended per number
        phone TEXT PRIMARY KEY,              -- E.164
        channel TEXT NOT NULL,               -- 'sms' (Viber failed, SMS went) or 'viber'
        updated_at REAL NOT NULL
    );
    """,
}


# One range of the outbox_due index (migration 6): the finals ((status = 'sent') = 0) or the
# 'sent's (= 1) that are due, longest due first; no sort, and rows not due are never read.
# Read lazily, a row at a time, until enough were taken (``outbox_due``).
OUTBOX_DUE = (
    "SELECT o.member_id, o.b24_id, o.code, o.status, o.attempts, m.id FROM outbox o"
    " LEFT JOIN message m ON m.member_id = o.member_id AND m.b24_id = o.b24_id"
    " WHERE o.member_id=? AND (o.status = 'sent') = ? AND o.next_at <= ? ORDER BY o.next_at"
)


# What ``_message_status`` needs of a message, read together with the segment that moves
# (one statement instead of two per status change). The last column says whether any repeat
# follows the message: the message_followers partial index answers it inside this read, so
# the followers are fetched only for a message somebody repeated (rare), not after every move.
_MESSAGE_COLUMNS = (
    "m.status, m.member_id, m.b24_id, m.code, m.b24_status, m.segments,"
    " EXISTS (SELECT 1 FROM message f WHERE f.duplicate_of = m.id)"
)
_MESSAGE_READ = f"SELECT {_MESSAGE_COLUMNS} FROM message m WHERE m.id=?"
# A submit_sm_resp's segment, its message, and whether a receipt for the new provider id came
# first (receipt_pending): the pending receipts are read only when there are some.
_RESP_READ = (
    f"SELECT s.route, s.status, {_MESSAGE_COLUMNS},"
    " EXISTS (SELECT 1 FROM receipt_pending p WHERE p.route = s.route AND p.provider_id = ?)"
    " FROM segment s JOIN message m ON m.id = s.message_id WHERE s.message_id=? AND s.seq=?"
)
# The same, when receipt_id_base = auto: a receipt may have come first under a hex/decimal
# reading of the resp id (issue 14.6), so the pending check looks for three spellings.
_RESP_READ_READINGS = _RESP_READ.replace("p.provider_id = ?", "p.provider_id IN (?, ?, ?)")
# A receipt's segment, found by its provider id, and the segment's message.
_RECEIPT_READ = (
    f"SELECT s.message_id, s.seq, s.status, {_MESSAGE_COLUMNS}"
    " FROM segment s JOIN message m ON m.id = s.message_id WHERE s.route=? AND s.provider_id=?"
)


# Messages with parts still to submit, a page at a time: a range of the message_open index
# (migration 7: no status change made them final), never a scan of the settled ones.
OPEN_MESSAGES = (
    "SELECT m.id, m.sender, m.phone, m.text, group_concat(s.seq), m.concat_ref, m.b24_id FROM message m"
    " JOIN segment s ON s.message_id = m.id"
    " WHERE m.route=? AND m.id > ? AND m.final_at IS NULL AND m.status IN ('queued','submitted','accepted')"
    " AND m.hold IS NULL AND s.status IN ('queued','submitted') GROUP BY m.id ORDER BY m.id LIMIT ?"
)


@dataclass(frozen=True)
class NewMessage:
    member_id: str
    b24_id: str
    code: str
    route: str
    sender: str
    phone: str | None
    text: str
    encoding: str
    segments: int
    module_id: str = ""
    reason: str | None = None  # set when the message fails at intake (invalid number, a rule)
    hold: str | None = None  # a business rule holds it (rules.HOLD_*): stored, not dispatched
    hold_until: float | None = None
    entities: str | None = None  # JSON of the bound CRM entities, for the consent lookup
    duplicate_window: float = 0.0  # seconds; a same-number same-text message within it is a repeat
    duplicate_fails: bool = False  # a repeat fails, instead of following the first's status


class IntakeResult(NamedTuple):
    """What intake stored (or found). A NamedTuple like ``OutboxItem``: the writer thread
    builds one per message, and a frozen dataclass's ``__init__`` with these keywords costs
    1.6 µs against 0.7."""

    id: int
    status: Status
    duplicate: bool
    duplicate_of: int | None = None  # a repeat of this earlier message (rules.py): not sent
    reason: str | None = None
    concat_ref: int | None = None  # per destination (issue 3), for multi-segment messages


@dataclass(frozen=True)
class OpenMessage:
    """A message that still has segments to submit, for the route's queue."""

    id: int
    route: str
    sender: str
    phone: str
    text: str
    open_segments: tuple[int, ...]
    concat_ref: int | None = None  # per destination, stored: resent parts join their siblings
    b24_id: str = ""  # Bitrix24's message_id, for the log lines about this message


@dataclass(frozen=True)
class ReceiptRules:
    """How an SMPP route's receipts find their parts (issue 14.6, 14.7)."""

    # receipt_id_base = "auto": when the id as-is matches nothing, try its hex<->decimal
    # readings against the parts still waiting for a receipt
    id_readings: bool = False
    # "all": every part has its own receipt; "first" / "last" / "any": the receipt of that
    # part is the whole message's (operators that send one receipt per long message)
    multipart: str = "all"


NO_RULES = ReceiptRules()


@dataclass(frozen=True)
class Unreceipted:
    """A part the operator accepted and never sent a receipt for."""

    message_id: int
    seq: int
    provider_id: str
    sender: str
    accepted_at: float


@dataclass(frozen=True)
class PollItem:
    """A message an HTTP provider accepted and never gave a final status for."""

    id: int
    provider_id: str
    phone: str
    channel: str | None
    sender: str
    text: str
    created_at: float = 0.0


class OutboxItem(NamedTuple):
    """An update owed to Bitrix24. A NamedTuple, not a frozen dataclass: the writer thread
    builds one per due row (up to 50 per read, a read per batch or more), and a frozen
    dataclass's ``__init__`` costs 0.9 µs against 0.2."""

    member_id: str
    b24_id: str
    code: str
    status: str
    attempts: int
    message_id: int | None = None  # ours, for the log lines; None if the message row is gone


@dataclass(frozen=True)
class PortalRecord:
    member_id: str
    domain: str
    client_endpoint: str
    server_endpoint: str
    client_id: str
    client_secret: str
    application_token: str
    access_token: str
    refresh_token: str


@dataclass
class StoredAppEvent:
    """An app event as kept until it is proven and applied, or refused (bitrix24/events.py)."""

    id: int
    event: str
    member_id: str
    domain: str
    auth: dict[str, str] = field(repr=False)  # the auth[...] block; tokens rotate as the proof spends them
    stage: str  # 'received', or 'refreshed' once the event's refresh token was spent
    received_at: float
    attempts: int
    next_at: float
    last_error: str | None


class StoreClosed(RuntimeError):
    pass


class StoreUnavailable(RuntimeError):
    """The store cannot write now (the disk is full, an I/O error, a read-only remount).

    Only the writes that have somewhere else to wait are refused with it: a new post
    (the shim answers 503, its spool keeps the post) and a receipt beyond the held bound
    (the provider delivers it again). Everything else waits in memory until it is written.
    """


# What ``Store.execute`` does with an operation while the store cannot write.
HOLD = 0  # wait in memory, written when space returns (the daemon's own work: bounded by it)
REFUSE = 1  # StoreUnavailable at once: the caller has a place to wait (the shim's spool)
HOLD_BOUNDED = 2  # held up to ``max_held_receipts`` at once, then StoreUnavailable (receipts)


class StoreOpenError(RuntimeError):
    """The database cannot be opened for writing at start (a read-only mount, a directory
    the daemon may not write): one line naming the path and the problem, never a traceback,
    and never a start that hangs (issue 19 item 4)."""

    def __init__(self, path: str, problem: str, *, retry: bool = False) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        self.retry = retry  # a full disk: starting again later can work (exit 1, systemd restarts)


def write_problem(path: str) -> str | None:
    """Why ``path`` cannot be a writable database, in words an operator can act on, or None.

    SQLite says only "unable to open database file" or "attempt to write a readonly
    database"; the filesystem can say which of the usual causes it is. Checked before
    SQLite opens the file too: a connection that fails to open leaves aiosqlite's thread
    to report into a closed loop.
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    existing = directory
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"the directory {directory} is on a read-only filesystem"
    except OSError as e:
        return f"the directory {existing} cannot be read: {e.strerror}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the directory {existing} is not writable by uid {os.geteuid()}"
    for f in (path, path + "-wal", path + "-shm"):
        if os.path.exists(f) and not os.access(f, os.R_OK | os.W_OK):
            return f"{f} is not writable by uid {os.geteuid()}"
    return None


def open_problem(path: str, error: BaseException) -> str:
    """``write_problem``, or what the error says when the filesystem looks fine."""
    found = write_problem(path)
    if found is not None:
        return found
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


class _Queued(NamedTuple):
    op: Operation[Any]
    fut: asyncio.Future[Any]
    policy: int


def _probe_op(conn: sqlite3.Connection) -> None:
    """While the store cannot write and nothing else is queued: a page write (the header's
    user_version, unchanged) that commits only when the disk takes writes again."""
    conn.execute("PRAGMA user_version=%d" % conn.execute("PRAGMA user_version").fetchone()[0])


class _NoFuture:
    """The probe's stand-in future: nobody waits for it."""

    @staticmethod
    def done() -> bool:
        return True


_PROBE = _Queued(_probe_op, _NoFuture(), HOLD)  # type: ignore[arg-type]


def _storage_problem(path: str, e: BaseException) -> str:
    """What the disk under ``path`` lacks, for the one log line."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        st = os.statvfs(directory)
    except OSError:
        return str(e)
    if st.f_flag & os.ST_RDONLY:
        return f"{directory} is on a read-only filesystem ({e})"
    return f"{e}; {st.f_bavail * st.f_frsize} bytes free in {directory}"


class Store:
    def __init__(self, path: str, *, clock: Callable[[], float] = time.time,
                 max_held_receipts: int = MAX_HELD_RECEIPTS, retry_interval: float = UNAVAILABLE_RETRY) -> None:
        self.path = path
        self.clock = clock
        self._db: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.outbox_changed = asyncio.Event()  # set when an outbox row is added or changed
        # A full disk: why the store cannot write (None while it can), and how many receipts
        # wait in memory for a commit (bounded while it cannot).
        self.unavailable: str | None = None
        self.unavailable_since: float | None = None
        self.held_receipts = 0
        self.max_held_receipts = max_held_receipts
        self.refused = {"intake": 0, "receipts": 0}
        self._refused_before = dict(self.refused)
        self._retry_interval = retry_interval

    # --- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Open (and migrate) the database; ``StoreOpenError`` when it cannot be written."""
        problem = write_problem(self.path)
        if problem is not None:
            raise StoreOpenError(self.path, problem)
        db = aiosqlite.connect(self.path, isolation_level=None)
        try:
            self._db = await db
            await self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the shim's 200 promises the message survives power loss too.
            await self._db.execute("PRAGMA synchronous=FULL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._run(_migrate)
            # A read-only file opens and reads fine; the first write would fail much later.
            try:
                await self._run(_probe_write)
            except sqlite3.Error as e:
                if not storage_error(e) or write_problem(self.path) is not None:
                    raise
                # A full disk at start: start anyway (reads work, posts get 503, writes wait).
                # Exiting would only loop through systemd's restarts until space returns.
                self._became_unavailable(e)
        except (sqlite3.Error, OSError) as e:
            self._db = None
            await db.close()  # its thread would keep the process alive: the hang at start
            problem = write_problem(self.path)
            if problem is None and storage_error(e):  # a full disk: WAL mode needs room for its -shm
                raise StoreOpenError(self.path, _storage_problem(self.path, e), retry=True) from None
            raise StoreOpenError(self.path, problem or open_problem(self.path, e)) from None
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._writer = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _run(self, op: Operation[T]) -> T:
        """Run a function in aiosqlite's thread: one hop for a whole group.

        aiosqlite has no public "run this callable" call; ``_execute`` is the
        one its own methods use, stable since 0.17.
        """
        assert self._db is not None
        return await self._db._execute(op, self._db._conn)  # type: ignore[attr-defined]

    async def _write_loop(self) -> None:
        """Group, run, commit, resolve; on a full disk hold the group and try it again.

        A group that fails for want of space resolves nobody: its operations (minus
        the refusable ones) stay in order at the front and are run again, with what
        queued meanwhile, every ``retry_interval`` seconds until a commit goes through.
        Reads, and writes that still fit, commit meanwhile. Posts resume once a group
        commits with ``RESUME_FREE_BYTES`` free (a commit alone proves little: a group of
        reads, or a write into the WAL's last pages, commits on a full disk); when nothing
        is queued a probe write is made every ``retry_interval``, so they resume by themselves.
        """
        held: list[_Queued] = []
        stop = False
        while not stop:
            if self.unavailable is None:
                first = await self._queue.get()
                if first is None:
                    break
                group = [first]
            else:
                group, held = held, []
                if group:
                    await asyncio.sleep(self._retry_interval)
                else:
                    try:
                        first = await asyncio.wait_for(self._queue.get(), self._retry_interval)
                    except TimeoutError:
                        first = _PROBE  # nothing to write: probe anyway, or posts would never resume
                    if first is None:
                        break
                    group = [first]
            while len(group) < MAX_GROUP and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                group.append(item)
            if self.unavailable is not None:
                group = self._shed(group)
            try:
                results = await self._run(lambda conn: _run_group(conn, [q.op for q in group]))
            except Exception as e:  # the commit itself failed: nobody's write is durable
                if storage_error(e):
                    self._became_unavailable(e)
                    held = [q for q in self._shed(group) if q is not _PROBE]
                    if stop:  # closing: nothing more can be written
                        self._fail(held, StoreUnavailable(self.unavailable or str(e)))
                    continue
                log.error("store_commit_failed", error=str(e), ops=len(group))
                self._fail(group, e)
                continue
            if self.unavailable is not None and self._space_returned():
                self._resumed()
            for q, (ok, value) in zip(group, results):
                if q.fut.done():
                    continue
                if ok:
                    q.fut.set_result(value)
                else:
                    q.fut.set_exception(value)
        if held:
            self._fail(held, StoreUnavailable(self.unavailable or "the store closed"))

    def _space_returned(self) -> bool:
        """A retry committed; posts resume only with ``RESUME_FREE_BYTES`` free, or the last
        pages of the WAL would let a few in and the next commit fail again (flapping)."""
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)) or ".")
        except OSError:
            return True
        return st.f_bavail * st.f_frsize >= RESUME_FREE_BYTES

    def _shed(self, group: list[_Queued]) -> list[_Queued]:
        """The operations that wait for the disk; refusable ones get StoreUnavailable now."""
        kept = []
        for q in group:
            if q.policy == REFUSE:
                if not q.fut.done():
                    self.refused["intake"] += 1
                    q.fut.set_exception(StoreUnavailable(self.unavailable or "the store cannot write"))
            else:
                kept.append(q)
        return kept

    @staticmethod
    def _fail(group: list[_Queued], e: BaseException) -> None:
        for q in group:
            if not q.fut.done():
                q.fut.set_exception(e)

    def _became_unavailable(self, e: BaseException) -> None:
        if self.unavailable is not None:
            return
        self._refused_before = dict(self.refused)
        self.unavailable = _storage_problem(self.path, e)
        self.unavailable_since = self.clock()
        # Once, not per refused post: the line says why and what happens meanwhile.
        log.error("store_unavailable", path=self.path, problem=self.unavailable,
                  hint="new posts are refused (503), receipts wait in memory; writes resume by themselves"
                       " when space returns")

    def _resumed(self) -> None:
        since = self.unavailable_since or self.clock()
        before = self._refused_before
        log.warning("store_resumed", path=self.path, after_seconds=round(self.clock() - since, 1),
                    refused_posts=self.refused["intake"] - before.get("intake", 0),
                    refused_receipts=self.refused["receipts"] - before.get("receipts", 0))
        self.unavailable = None
        self.unavailable_since = None

    def execute(self, op: Operation[T], policy: int = HOLD) -> asyncio.Future[T]:
        """Queue an operation; the future resolves after its group commits.

        An operation is a function of the database only (no side effects outside
        it): when another operation of its group fails, the group is rolled back
        and run again (``_run_group``), so it may run twice. ``policy`` says what
        happens to it while the disk is full (``HOLD``, ``REFUSE``, ``HOLD_BOUNDED``).
        """
        if self._writer is None:
            raise StoreClosed("store is not open")
        if self.unavailable is not None and policy != HOLD:
            if policy == REFUSE:
                self.refused["intake"] += 1
                raise StoreUnavailable(self.unavailable)
            if self.held_receipts >= self.max_held_receipts:
                self.refused["receipts"] += 1
                raise StoreUnavailable(f"{self.unavailable}; {self.held_receipts} receipts already held")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if policy == HOLD_BOUNDED:
            self.held_receipts += 1
            fut.add_done_callback(self._receipt_done)
        self._queue.put_nowait(_Queued(op, fut, policy))
        return fut

    def _receipt_done(self, fut: asyncio.Future[Any]) -> None:
        self.held_receipts -= 1

    @contextmanager
    def receipt_slot(self) -> Iterator[None]:
        """A receipt stored through operations that do not know they carry one (an HTTP
        callback runs the route's own code): it counts against ``max_held_receipts`` while
        it waits, and beyond the bound it is refused (StoreUnavailable) before any work."""
        if self.unavailable is not None and self.held_receipts >= self.max_held_receipts:
            self.refused["receipts"] += 1
            raise StoreUnavailable(f"{self.unavailable}; {self.held_receipts} receipts already held")
        self.held_receipts += 1
        try:
            yield
        finally:
            self.held_receipts -= 1

    # --- portals ---------------------------------------------------------------

    async def seed_portal(self, p: PortalRecord) -> None:
        """Add a portal from the config unless the store already knows it.

        The store's tokens win: a refresh may have rotated them since the
        config was written. A row nothing can use (no client_id: an install kept before
        migration 8) is replaced, so a hand-written [[portal]] completes it.
        """
        await self._put_portal(
            p,
            "DO UPDATE SET domain=excluded.domain, client_endpoint=excluded.client_endpoint,"
            " server_endpoint=excluded.server_endpoint, client_id=excluded.client_id,"
            " client_secret=excluded.client_secret, application_token=excluded.application_token,"
            " access_token=excluded.access_token, refresh_token=excluded.refresh_token,"
            " updated_at=excluded.updated_at WHERE portal.client_id = ''",
        )

    async def upsert_portal(self, p: PortalRecord) -> None:
        """Store a portal from an install/update event: the event's tokens win (they are newest)."""
        await self._put_portal(
            p,
            "DO UPDATE SET domain=excluded.domain, client_endpoint=excluded.client_endpoint,"
            " server_endpoint=excluded.server_endpoint, client_id=excluded.client_id,"
            " client_secret=excluded.client_secret, application_token=excluded.application_token,"
            " access_token=excluded.access_token, refresh_token=excluded.refresh_token,"
            " updated_at=excluded.updated_at",
        )

    async def _put_portal(self, p: PortalRecord, on_conflict: str) -> None:
        row = (p.member_id, p.domain, p.client_endpoint, p.server_endpoint, p.client_id, p.client_secret,
               p.application_token, p.access_token, p.refresh_token, self.clock())

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT INTO portal VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (member_id) {on_conflict}", row)

        await self.execute(op)

    async def remove_portal(self, member_id: str) -> bool:
        """Forget an uninstalled portal. Its outbox stays: a reinstall drains it."""

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM portal WHERE member_id=?", (member_id,)).rowcount > 0

        return await self.execute(op)

    async def portals(self) -> list[PortalRecord]:
        def op(conn: sqlite3.Connection) -> list[PortalRecord]:
            rows = conn.execute(
                "SELECT member_id, domain, client_endpoint, server_endpoint, client_id, client_secret,"
                " application_token, access_token, refresh_token FROM portal"
            ).fetchall()
            return [PortalRecord(*r) for r in rows]

        return await self.execute(op)

    async def save_tokens(self, member_id: str, access_token: str, refresh_token: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE portal SET access_token=?, refresh_token=?, updated_at=? WHERE member_id=?",
                (access_token, refresh_token, self.clock(), member_id),
            )

        await self.execute(op)

    # --- app events (bitrix24/events.py) ----------------------------------------

    async def add_app_event(self, event: str, member_id: str, domain: str, auth: Mapping[str, str]) -> StoredAppEvent:
        """Store an app event before it is answered: durable on return."""
        now = self.clock()
        blob = json.dumps(dict(auth), separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute("INSERT INTO app_event (event, member_id, domain, auth, received_at, next_at)"
                               " VALUES (?,?,?,?,?,?)", (event, member_id, domain, blob, now, now))
            return int(cur.lastrowid or 0)

        row_id = await self.execute(op)
        return StoredAppEvent(row_id, event, member_id, domain, dict(auth), "received", now, 0, now, None)

    async def app_events(self) -> list[StoredAppEvent]:
        def op(conn: sqlite3.Connection) -> list[StoredAppEvent]:
            rows = conn.execute("SELECT id, event, member_id, domain, auth, stage, received_at, attempts, next_at,"
                                " last_error FROM app_event ORDER BY id").fetchall()
            return [StoredAppEvent(r[0], r[1], r[2], r[3], json.loads(r[4]), *r[5:]) for r in rows]

        return await self.execute(op)

    async def update_app_event(self, e: StoredAppEvent) -> None:
        """Keep what a proof step learned (a spent refresh token's successor first of all)."""
        blob = json.dumps(dict(e.auth), separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE app_event SET auth=?, stage=?, attempts=?, next_at=?, last_error=? WHERE id=?",
                         (blob, e.stage, e.attempts, e.next_at, e.last_error, e.id))

        await self.execute(op)

    async def delete_app_events(self, ids: Sequence[int]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM app_event WHERE id=?", [(i,) for i in ids])

        await self.execute(op)

    async def app_version(self, member_id: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT version FROM portal_version WHERE member_id=?", (member_id,)).fetchone()
            return None if row is None else str(row[0])

        return await self.execute(op)

    async def set_app_version(self, member_id: str, version: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO portal_version VALUES (?,?) ON CONFLICT (member_id) DO UPDATE"
                         " SET version=excluded.version", (member_id, version))

        await self.execute(op)

    # --- contacts normalize progress (issue 16) ----------------------------------

    async def contacts_progress(self, member_id: str) -> dict[str, int]:
        rows = await self.execute(lambda conn: conn.execute(
            "SELECT entity, after_id FROM contacts_progress WHERE member_id=?", (member_id,)).fetchall())
        return {entity: int(after_id) for entity, after_id in rows}

    async def contacts_progress_save(self, member_id: str, entity: str, after_id: int) -> None:
        await self.execute(lambda conn: conn.execute(
            "INSERT INTO contacts_progress (member_id, entity, after_id, updated_at) VALUES (?,?,?,?)"
            " ON CONFLICT (member_id, entity) DO UPDATE SET after_id=excluded.after_id, updated_at=excluded.updated_at",
            (member_id, entity, after_id, self.clock())))

    async def contacts_progress_clear(self, member_id: str) -> None:
        await self.execute(lambda conn: conn.execute("DELETE FROM contacts_progress WHERE member_id=?", (member_id,)))

    async def channel_marks(self) -> dict[str, str]:
        rows = await self.execute(lambda conn: conn.execute("SELECT phone, channel FROM preferred_channel").fetchall())
        return dict(rows)

    async def channel_mark(self, phone: str, channel: str) -> bool:
        """Remember the channel; True when it differs from what was kept."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT channel FROM preferred_channel WHERE phone=?", (phone,)).fetchone()
            if row is not None and row[0] == channel:
                return False
            conn.execute("INSERT OR REPLACE INTO preferred_channel (phone, channel, updated_at) VALUES (?,?,?)",
                         (phone, channel, now))
            return True

        return await self.execute(op)

    async def hlr_cached(self, phones: list[str], since: float) -> dict[str, tuple[bool, str, str]]:
        """(reachable, operator, region) of the numbers checked since ``since``."""

        def op(conn: sqlite3.Connection) -> dict[str, tuple[bool, str, str]]:
            out = {}
            for i in range(0, len(phones), 500):
                chunk = phones[i:i + 500]
                rows = conn.execute(
                    f"SELECT phone, reachable, operator, region FROM hlr_cache WHERE checked_at >= ?"
                    f" AND phone IN ({','.join('?' * len(chunk))})", (since, *chunk)).fetchall()
                out.update({p: (bool(r), o, g) for p, r, o, g in rows})
            return out

        return await self.execute(op)

    async def hlr_save(self, results: Iterable[tuple[str, bool, str, str]]) -> None:
        """(phone, reachable, operator, region) as checked now."""
        now = self.clock()
        rows = [(p, int(r), o, g, now) for p, r, o, g in results]
        await self.execute(lambda conn: conn.executemany(
            "INSERT OR REPLACE INTO hlr_cache (phone, reachable, operator, region, checked_at) VALUES (?,?,?,?,?)",
            rows))

    # --- intake ----------------------------------------------------------------

    async def intake(self, m: NewMessage) -> IntakeResult:
        """Store a message once per (portal, Bitrix24 message_id); durable on return."""
        return (await self.intake_many((m,)))[0]

    async def intake_many(self, messages: Sequence[NewMessage]) -> list[IntakeResult]:
        """``intake`` for several messages as one operation: one future and one
        commit-wait for the lot, which is most of the cost of a small message.

        The messages are stored in order in one transaction, so the same
        message_id twice gives what two ``intake`` calls in a row give (the
        second a duplicate). All or nothing: if one raises, none is stored and
        this raises (the caller may retry them one by one).
        """
        now = self.clock()
        results = await self.execute(lambda conn: _intake_many(conn, messages, now), REFUSE)
        if any((r.status is Status.FAILED or r.duplicate_of is not None) and not r.duplicate for r in results):
            self.outbox_changed.set()
        return results

    async def open_messages(self, route: str, *, after_id: int = 0, limit: int | None = None) -> list[OpenMessage]:
        """Messages with segments never acknowledged by the operator, oldest first.

        Used at start: a segment whose submit_sm was on the wire when the
        daemon died is sent again (at-least-once, DESIGN.md). ``after_id`` and
        ``limit`` page through a backlog too large to hold in memory.
        """

        def op(conn: sqlite3.Connection) -> list[OpenMessage]:
            rows = conn.execute(OPEN_MESSAGES, (route, after_id, -1 if limit is None else limit)).fetchall()
            return [
                OpenMessage(r[0], route, r[1], r[2], r[3], tuple(sorted(int(x) for x in r[4].split(","))), r[5], r[6])
                for r in rows
            ]

        return await self.execute(op)

    # --- segment outcomes ------------------------------------------------------

    async def segment_accepted(self, message_id: int, seq: int, provider_id: str) -> None:
        """The operator took a segment; apply any receipt that beat the resp here."""
        await self.segments_accepted([(message_id, seq, provider_id)])

    def segments_accepted(self, accepted: list[tuple[int, int, str]],
                          rules: ReceiptRules = NO_RULES) -> asyncio.Future[None]:
        """The (message id, seq, provider id) of the submit_sm_resps of one read, as one operation.

        Not a coroutine: the route calls it from a protocol callback, and a task per
        resp (to await a coroutine) cost more than the store work itself.
        """
        now = self.clock()

        def op(conn: sqlite3.Connection) -> tuple[None, bool]:
            changed = False
            for message_id, seq, provider_id in accepted:
                changed |= _accept_segment(conn, message_id, seq, provider_id, now, rules)
            return None, changed

        return self._noting_outbox(self.execute(op))

    async def segment_failed(self, message_id: int, seq: int, status: Status, detail: str) -> None:
        now = self.clock()
        if await self.execute(lambda conn: _segment_status(conn, message_id, seq, status, detail, now)):
            self.outbox_changed.set()

    async def apply_receipt(self, route: str, provider_id: str, status: Status, detail: str) -> bool:
        """Apply a receipt; False when its id is unknown (kept pending, see segment_accepted)."""
        return (await self.apply_receipts(route, [(provider_id, status, detail)]))[0]

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
            for provider_id, status, detail in receipts:
                how, moved = _apply_receipt(conn, route, provider_id, status, detail, now, rules)
                matched.append(how)
                changed |= moved
            return matched, changed

        return self._noting_outbox(self.execute(op, HOLD_BOUNDED))

    async def unreceipted(self, route: str, accepted_before: float, *, limit: int = 1000) -> list[Unreceipted]:
        """Parts accepted before ``accepted_before`` (store clock) that never got a receipt,
        oldest first, read through the segment_awaiting_receipt index (migration 9)."""

        def op(conn: sqlite3.Connection) -> list[Unreceipted]:
            rows = conn.execute(
                "SELECT s.message_id, s.seq, s.provider_id, m.sender, s.updated_at FROM segment s"
                " INDEXED BY segment_awaiting_receipt JOIN message m ON m.id = s.message_id"
                " WHERE s.route=? AND s.status='accepted' AND s.updated_at < ? AND s.provider_id IS NOT NULL"
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
                row = conn.execute("SELECT status FROM segment WHERE message_id=? AND seq=?", (mid, seq)).fetchone()
                if row is None or row[0] != STATUS_WORD[Status.ACCEPTED]:
                    continue  # a receipt came meanwhile
                changed |= _segment_status(conn, mid, seq, Status.UNDELIVERED, "no receipt", now)
                ended += 1
            return ended, changed

        return await self._noting_outbox(self.execute(op))

    def _noting_outbox(self, fut: asyncio.Future[tuple[T, bool]]) -> asyncio.Future[T]:
        """The result of an operation that returns (result, outbox changed); the pushers are
        woken when it changed. For the callers that take an operation's future, not a coroutine."""
        out: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[tuple[T, bool]]) -> None:
            if out.cancelled():
                return
            if f.cancelled():
                out.cancel()
            elif f.exception() is not None:
                out.set_exception(f.exception())  # type: ignore[arg-type]
            else:
                result, changed = f.result()
                if changed:
                    self.outbox_changed.set()
                out.set_result(result)

        fut.add_done_callback(done)
        return out

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

    # --- HTTP providers: one provider id per message ----------------------------
    #
    # An HTTP provider splits the text itself and answers with one id per
    # message, so the id sits on segment 0 and every segment row of the
    # message moves together: the message is delivered when the provider says
    # so, and the SMPP aggregate rules keep working unchanged.

    async def provider_accepted(self, message_id: int, provider_id: str, *, poll_at: float,
                                channel: str | None = None, pending_ttl: float | None = None) -> None:
        """The provider took the message; apply any callback that beat its answer
        (and is younger than ``pending_ttl``: an older one is a stale or forged
        word about an id the provider happened to reuse)."""
        now = self.clock()
        oldest = now - pending_ttl if pending_ttl is not None else float("-inf")

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT route FROM message WHERE id=?", (message_id,)).fetchone()
            if row is None:
                return False
            route = row[0]
            conn.execute("UPDATE segment SET provider_id=NULL WHERE message_id=?", (message_id,))
            conn.execute("UPDATE segment SET provider_id=? WHERE message_id=? AND seq=0", (provider_id, message_id))
            conn.execute("UPDATE message SET poll_at=?, channel=coalesce(?, channel) WHERE id=?",
                         (poll_at, channel, message_id))
            changed = _all_segments(conn, message_id, Status.ACCEPTED, None, now)
            early = conn.execute(
                "SELECT id, status, detail, expired, received_at FROM receipt_pending"
                " WHERE route=? AND provider_id=? ORDER BY id",
                (route, provider_id),
            ).fetchall()
            for rid, status, detail, expired, received_at in early:
                if not expired and received_at >= oldest:
                    changed |= _all_segments(conn, message_id, Status(status), detail, now)
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
                conn.execute("UPDATE segment SET provider_id=? WHERE message_id=? AND seq=0", (pid, mid))
                _all_segments(conn, mid, Status.SUBMITTED, None, now)

        await self.execute(op)

    async def submitted_unconfirmed(self, route: str) -> list[PollItem]:
        """Messages whose request went out with a known id but whose answer never came."""

        def op(conn: sqlite3.Connection) -> list[PollItem]:
            rows = conn.execute(
                "SELECT m.id, s.provider_id, m.phone, m.channel, m.sender, m.text, m.created_at FROM message m"
                " JOIN segment s ON s.message_id = m.id AND s.seq = 0"
                " WHERE m.route=? AND m.status IN ('queued','submitted') AND s.status='submitted'"
                " AND s.provider_id IS NOT NULL ORDER BY m.id",
                (route,),
            ).fetchall()
            return [PollItem(*r) for r in rows]

        return await self.execute(op)

    async def provider_failed(self, message_id: int, status: Status, detail: str) -> None:
        """The provider refused the message for good."""
        now = self.clock()
        if await self.execute(lambda conn: _all_segments(conn, message_id, status, detail, now)):
            self.outbox_changed.set()

    async def provider_receipt(self, route: str, provider_id: str, status: Status, detail: str,
                               *, keep_pending: bool = True, pending_max: int | None = None,
                               pending_ttl: float | None = None) -> int | None:
        """Apply a callback or poll result; the message id, or None when the id is unknown.

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
                "SELECT message_id FROM segment WHERE route=? AND provider_id=?", (route, provider_id)
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
                        "INSERT INTO receipt_pending (route, provider_id, status, detail, received_at)"
                        " VALUES (?,?,?,?,?)",
                        (route, provider_id, status, detail, now),
                    )
                return None, False
            return row[0], _all_segments(conn, row[0], status, detail, now)

        mid, changed = await self.execute(op)
        if changed:
            self.outbox_changed.set()
        return mid

    async def record_event(self, message_id: int, status: Status, detail: str) -> None:
        """Keep a provider word that changes no status (a Viber miss before the SMS fallback)."""
        now = self.clock()
        await self.execute(lambda conn: _event(conn, message_id, None, status, False, detail, now))

    async def due_polls(self, route: str, limit: int = 100) -> list[PollItem]:
        """Accepted messages whose poll time has come, oldest first."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> list[PollItem]:
            rows = conn.execute(
                "SELECT m.id, s.provider_id, m.phone, m.channel, m.sender, m.text, m.created_at FROM message m"
                " JOIN segment s ON s.message_id = m.id AND s.seq = 0"
                " WHERE m.route=? AND m.poll_at IS NOT NULL AND m.poll_at <= ? AND m.status='accepted'"
                " AND s.provider_id IS NOT NULL ORDER BY m.poll_at LIMIT ?",
                (route, now, limit),
            ).fetchall()
            return [PollItem(*r) for r in rows]

        return await self.execute(op)

    async def poll_item(self, route: str, provider_id: str) -> PollItem | None:
        """The message a provider id belongs to, whatever its status."""

        def op(conn: sqlite3.Connection) -> PollItem | None:
            row = conn.execute(
                "SELECT m.id, s.provider_id, m.phone, m.channel, m.sender, m.text, m.created_at FROM segment s"
                " JOIN message m ON m.id = s.message_id WHERE s.route=? AND s.provider_id=?",
                (route, provider_id),
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

    async def schedule_polls(self, message_ids: Iterable[int], at: float | None) -> None:
        rows = [(at, mid) for mid in message_ids]
        await self.execute(lambda conn: conn.executemany("UPDATE message SET poll_at=? WHERE id=?", rows))

    async def start_fallback(self, message_id: int) -> None:
        """Viber did not deliver: from now on the message is owed an SMS (survives a restart)."""
        await self.execute(lambda conn: conn.execute(
            "UPDATE message SET channel='viber_fallback', poll_at=NULL WHERE id=?", (message_id,)))

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

    # --- Bitrix24 outbox -------------------------------------------------------

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
            for sent in (0, 1):  # the finals, then the 'sent's
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

    # --- reading ---------------------------------------------------------------

    async def message(self, message_id: int) -> dict[str, Any] | None:
        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            conn.row_factory = sqlite3.Row
            try:
                row = conn.execute("SELECT * FROM message WHERE id=?", (message_id,)).fetchone()
                if row is None:
                    return None
                out = dict(row)
                out["segment_rows"] = [
                    dict(r)
                    for r in conn.execute("SELECT * FROM segment WHERE message_id=? ORDER BY seq", (message_id,))
                ]
                out["events"] = [
                    dict(r) for r in conn.execute("SELECT * FROM event WHERE message_id=? ORDER BY id", (message_id,))
                ]
                return out
            finally:
                conn.row_factory = None

        return await self.execute(op)

    async def counts(self) -> dict[str, Any]:
        """Per route and status, plus the backlog figures `smppd status` shows."""

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            by_route: dict[str, dict[str, int]] = {}
            for route, status, n in conn.execute("SELECT route, status, count(*) FROM message GROUP BY 1, 2"):
                by_route.setdefault(route, {})[status] = n
            return {
                "messages": by_route,
                "outbox": conn.execute("SELECT count(*) FROM outbox").fetchone()[0],
                "receipts_pending": conn.execute(
                    "SELECT count(*) FROM receipt_pending WHERE expired=0"
                ).fetchone()[0],
                "receipts_unmatched": conn.execute(
                    "SELECT count(*) FROM receipt_pending WHERE expired=1"
                ).fetchone()[0],
            }

        return await self.execute(op)


# --- operations (run in the store thread) ----------------------------------------


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"database schema {version} is newer than this smppd ({SCHEMA_VERSION})")
    for v in range(version + 1, SCHEMA_VERSION + 1):
        # Statement by statement: executescript() would COMMIT on its own.
        conn.execute("BEGIN")
        for statement in MIGRATIONS[v].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={v}")
        conn.execute("COMMIT")


# SQLite primary result codes that say the storage failed, not the operation: SQLITE_FULL
# (ENOSPC), SQLITE_IOERR (EIO, EFBIG, a WAL or shm that cannot grow), SQLITE_READONLY
# (the filesystem was remounted read-only under us).
_STORAGE_ERRORS = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY})


def storage_error(e: BaseException) -> bool:
    """Whether ``e`` means the disk cannot take writes now (retry later), not a bad operation."""
    # sqlite_errorcode (3.11+) is set on errors SQLite raised, not on ones built in Python.
    code = getattr(e, "sqlite_errorcode", 0) if isinstance(e, sqlite3.Error) else 0
    return (code & 0xFF) in _STORAGE_ERRORS


def _probe_write(conn: sqlite3.Connection) -> None:
    """A write that changes nothing, committed: fails now if the database cannot be written."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("PRAGMA user_version=%d" % conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _run_group(conn: sqlite3.Connection, ops: list[Operation[Any]]) -> list[tuple[bool, Any]]:
    """Run ops in one transaction, committed once; a failing op rolls back only its own writes.

    Optimistic: the ops run back to back without a savepoint each (SAVEPOINT and
    RELEASE are two statements per op, a sixth of the writer's statements). An op
    that raises is rare (a constraint, a bug); then the whole transaction rolls
    back and the group runs again with a savepoint around each op. Ops are plain
    functions of the database (see ``Store.execute``), so running one again
    after the rollback gives what the first run would have.
    """
    results: list[tuple[bool, Any]] | None = None
    try:
        with _transaction(conn):
            results = [(True, op(conn)) for op in ops]
    except Exception:
        if results is not None:  # the ops ran, the COMMIT failed: nobody's write is durable
            raise
        return _run_group_isolated(conn, ops)
    return results


def _run_group_isolated(conn: sqlite3.Connection, ops: list[Operation[Any]]) -> list[tuple[bool, Any]]:
    """The slow path of ``_run_group``: a savepoint per op, so one failure spares the rest."""
    results: list[tuple[bool, Any]] = []
    with _transaction(conn):
        for op in ops:
            conn.execute("SAVEPOINT op")
            try:
                results.append((True, op(conn)))
                conn.execute("RELEASE op")
            except Exception as e:
                if storage_error(e):  # nobody's write can be kept: the whole group waits
                    raise
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                results.append((False, e))
    return results


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT; anything that escapes (an op, the COMMIT, a cancel) rolls back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# A message's row; a message_id already stored for the portal inserts nothing (rowcount 0), so
# the common, new message costs no separate duplicate lookup.
_INSERT_MESSAGE = (
    "INSERT INTO message (member_id, b24_id, code, route, sender, phone, text, encoding,"
    " segments, module_id, status, reason, created_at, updated_at, hold, hold_until, entities,"
    " duplicate_of, concat_ref, b24_status, final_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (member_id, b24_id) DO NOTHING"
)


def _intake_many(conn: sqlite3.Connection, messages: Sequence[NewMessage], now: float) -> list[IntakeResult]:
    """Store messages in order; their segment and event rows go in as one executemany each.

    Nothing in an intake reads the segment or event table, and the event rows keep their
    order (a repeat writes the pending rows before its own events), so the database is
    exactly what one message after the other leaves, event ids included.
    """
    rows = _IntakeRows()
    repeats = _Repeats(conn, messages, now)
    results = [_intake(conn, m, now, rows, repeats) for m in messages]
    rows.write(conn)
    return results


class _IntakeRows:
    """The segment and event rows of a batch of intakes, not written yet."""

    def __init__(self) -> None:
        self.segments: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []

    def write(self, conn: sqlite3.Connection) -> None:
        if self.segments:
            conn.executemany("INSERT INTO segment (message_id, seq, route, status, updated_at) VALUES (?,?,?,?,?)",
                             self.segments)
            self.segments = []
        if self.events:
            conn.executemany(_EVENT_INSERT, self.events)
            self.events = []


def _intake(conn: sqlite3.Connection, m: NewMessage, now: float, rows: _IntakeRows,
            repeats: _Repeats) -> IntakeResult:
    """Store one message, or find the one already stored under its (portal, message_id);
    its segment and intake event rows are left in ``rows``.

    The INSERT itself detects the duplicate (Bitrix24 retries are rare), so what it
    stores is decided first, with reads only: a duplicate's repeat check is wasted
    but harmless, and the concatenation counter moves only once the row is in.
    """
    reason, first = m.reason, None
    if reason is None and m.phone is not None and m.duplicate_window > 0:
        first = repeats.first_of(m, now - m.duplicate_window)
        if first is not None and m.duplicate_fails:
            reason, first = f"duplicate of message {first[0]} (same number and text)", None
    status = Status.FAILED if reason else Status.QUEUED
    hold = None if reason or first else m.hold
    ref = _next_concat_ref(conn, m.phone) if m.segments > 1 and not reason and not first else None
    b24 = _b24_forward(None, status) if status is Status.FAILED else None
    word = STATUS_WORD[status]
    cur = conn.execute(
        _INSERT_MESSAGE,
        (m.member_id, m.b24_id, m.code, m.route, m.sender, m.phone, m.text, m.encoding,
         m.segments, m.module_id, word, reason, now, now, hold, m.hold_until if hold else None,
         m.entities, first[0] if first else None, ref, b24,
         now if status is Status.FAILED else None),  # final at birth: never in message_open
    )
    if cur.rowcount == 0:  # this portal's message_id is stored already
        row = conn.execute(
            "SELECT id, status FROM message WHERE member_id=? AND b24_id=?", (m.member_id, m.b24_id)
        ).fetchone()
        return IntakeResult(row[0], STATUS_OF[row[1]], duplicate=True)
    mid = cur.lastrowid
    assert mid is not None
    if ref is not None:
        _take_concat_ref(conn, m.phone, ref)
    if status is Status.QUEUED and first is None:
        repeats.stored(m, mid, now)
    if first is None:  # a repeat gets no segments: nothing of it is ever submitted
        rows.segments += [(mid, seq, m.route, word, now) for seq in range(m.segments)]
    rows.events.append((mid, None, word, 1, reason or (f"held: {hold}" if hold else None), now))
    if b24 is not None:
        _to_outbox(conn, m.member_id, m.b24_id, m.code, b24, now)
    if first is not None:
        rows.write(conn)  # its own events follow its intake event
        _event(conn, mid, None, status, True, f"repeat of message {first[0]}: follows its status", now)
        _follow(conn, mid, m.member_id, m.b24_id, m.code, None, Status.QUEUED, Status(first[1]),
                f"duplicate of message {first[0]}", now)
        status = Status(conn.execute("SELECT status FROM message WHERE id=?", (mid,)).fetchone()[0])
    return IntakeResult(mid, status, duplicate=False, duplicate_of=first[0] if first else None,
                        reason=reason, concat_ref=ref)


def _next_concat_ref(conn: sqlite3.Connection, phone: str | None) -> int:
    """The next 16-bit concatenation reference for one destination (reference §6); read only,
    ``_take_concat_ref`` keeps it once the message is stored (a duplicate takes none).

    A per-destination counter: two long messages to one handset in flight at
    once never share a reference, which a global 8-bit counter or a random one
    (smpplib defect 12) cannot promise.  An 8-bit UDH uses the low octet, which
    still cycles through 256 values per destination.
    """
    row = conn.execute("SELECT last FROM concat_counter WHERE phone=?", (phone or "",)).fetchone()
    return 0 if row is None else (row[0] + 1) & 0xFFFF


def _take_concat_ref(conn: sqlite3.Connection, phone: str | None, ref: int) -> None:
    conn.execute(
        "INSERT INTO concat_counter (phone, last) VALUES (?, ?) ON CONFLICT (phone) DO UPDATE SET last=excluded.last",
        (phone or "", ref),
    )


def _due_range(conn: sqlite3.Connection, member_id: str, sent: int, now: float, skip: Collection[str],
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
    cur = conn.execute(OUTBOX_DUE, (member_id, sent, now))
    try:
        for row in cur:
            if row[1] not in skip:
                due.append(OutboxItem._make(row))
                if len(due) >= limit:
                    break
    finally:
        cur.close()
    return due


def _accept_segment(conn: sqlite3.Connection, message_id: int, seq: int, provider_id: str, now: float,
                    rules: ReceiptRules = NO_RULES) -> bool:
    """A submit_sm_resp: the segment is accepted under ``provider_id``, and any receipt that
    arrived first (receipt_pending) is applied now; True if the outbox changed."""
    early_ids = [provider_id]
    if rules.id_readings:  # a receipt that came first under another reading of this id
        early_ids += [r for _, r in _resp_readings(provider_id)]
        early_ids += [provider_id] * (3 - len(early_ids))  # one statement, cached: always 3 ids
        row = conn.execute(_RESP_READ_READINGS, (*early_ids, message_id, seq)).fetchone()
    else:
        row = conn.execute(_RESP_READ, (provider_id, message_id, seq)).fetchone()
    if row is None:
        return False
    changed = _segment_status(conn, message_id, seq, Status.ACCEPTED, None, now,
                              current=STATUS_OF[row[1]], provider_id=provider_id, message=row[2:9])
    if not row[9]:  # the usual case: no receipt came first
        early_ids = []
    for early_id in dict.fromkeys(early_ids):
        early = conn.execute(
            "SELECT id, status, detail FROM receipt_pending WHERE route=? AND provider_id=? AND expired=0 ORDER BY id",
            (row[0], early_id),
        ).fetchall()
        for rid, status, detail in early:
            changed |= _segment_status(conn, message_id, seq, STATUS_OF[status], detail, now)
            conn.execute("DELETE FROM receipt_pending WHERE id=?", (rid,))
            if rules.multipart != "all":
                changed |= _whole_message(conn, message_id, seq, STATUS_OF[status], detail, now, rules)
    if rules.multipart != "all" and row[7] > 1:
        changed |= _from_representative(conn, message_id, seq, now, rules)
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


def _apply_receipt(conn: sqlite3.Connection, route: str, provider_id: str, status: Status, detail: str,
                   now: float, rules: ReceiptRules = NO_RULES) -> tuple[str | None, bool]:
    """(how the id matched, or None; outbox changed); an unknown id waits in receipt_pending
    for its resp."""
    how: str | None = "as-is"
    row = conn.execute(_RECEIPT_READ, (route, provider_id)).fetchone()
    if row is None and rules.id_readings:
        for how, reading in _receipt_readings(provider_id):
            row = conn.execute(_RECEIPT_READ_OPEN, (route, reading)).fetchone()
            if row is not None:
                break
    if row is None:
        conn.execute(
            "INSERT INTO receipt_pending (route, provider_id, status, detail, received_at) VALUES (?,?,?,?,?)",
            (route, provider_id, status, detail, now),
        )
        return None, False
    mid, seq = row[0], row[1]
    changed = _segment_status(conn, mid, seq, status, detail, now, current=STATUS_OF[row[2]], message=row[3:10])
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
    for (other,) in conn.execute("SELECT seq FROM segment WHERE message_id=? AND seq<>? AND status=?",
                                 (mid, seq, accepted)).fetchall():
        changed |= _segment_status(conn, mid, other, status, f"{detail} (receipt of part {seq + 1})", now)
    return changed


def _from_representative(conn: sqlite3.Connection, mid: int, seq: int, now: float, rules: ReceiptRules) -> bool:
    """A part accepted after the receipt of the part that stands for its message."""
    rows = conn.execute("SELECT seq, status, error FROM segment WHERE message_id=? AND seq<>?", (mid, seq)).fetchall()
    segments = len(rows) + 1
    for other, word, error in rows:
        status = STATUS_OF[word]
        if status in FINAL and _stands_for_message(other, segments, rules.multipart):
            detail = f"{error or word} (receipt of part {other + 1})"
            return _segment_status(conn, mid, seq, status, detail, now)
    return False


_EVENT_INSERT = "INSERT INTO event (message_id, seq, status, applied, detail, at) VALUES (?,?,?,?,?,?)"


def _event(conn: sqlite3.Connection, mid: int, seq: int | None, status: Status, applied: bool,
           detail: str | None, now: float) -> None:
    conn.execute(_EVENT_INSERT, (mid, seq, STATUS_WORD[status], int(applied), detail, now))


def _segment_status(conn: sqlite3.Connection, mid: int, seq: int, new: Status, detail: str | None,
                    now: float, *, current: Status | None = None, provider_id: str | None = None,
                    message: tuple[Any, ...] | None = None) -> bool:
    """Move one segment forward, recompute its message; True if the outbox changed.

    A move backwards (a late resp after a receipt, a duplicated receipt) is
    recorded as an event with applied=0 and changes nothing else (but a
    ``provider_id`` is still kept: receipts are matched by it). ``current`` is
    the segment's status when the caller has just read it, ``message`` the
    message's ``_MESSAGE_COLUMNS`` read with it (nothing wrote the message since).
    """
    if current is None:
        row = conn.execute("SELECT status FROM segment WHERE message_id=? AND seq=?", (mid, seq)).fetchone()
        if row is None:
            return False
        current = STATUS_OF[row[0]]
    if not may_advance(current, new):
        if provider_id is not None:
            conn.execute("UPDATE segment SET provider_id=? WHERE message_id=? AND seq=?", (provider_id, mid, seq))
        _event(conn, mid, seq, new, False, detail, now)
        return False
    error = _failure(new, detail)
    word = STATUS_WORD[new]
    if provider_id is None:  # a receipt: SQLite leaves the segment_provider index alone
        conn.execute("UPDATE segment SET status=?, error=coalesce(?, error), updated_at=? WHERE message_id=? AND seq=?",
                     (word, error, now, mid, seq))
    else:
        conn.execute("UPDATE segment SET status=?, error=coalesce(?, error), provider_id=?, updated_at=?"
                     " WHERE message_id=? AND seq=?", (word, error, provider_id, now, mid, seq))
    _event(conn, mid, seq, new, True, detail, now)
    return _message_status(conn, mid, now, detail, new, message)


def _all_segments(conn: sqlite3.Connection, mid: int, new: Status, detail: str | None, now: float) -> bool:
    """Move every segment of an HTTP-provider message at once (one id per message)."""
    changed = False
    for (seq,) in conn.execute("SELECT seq FROM segment WHERE message_id=? ORDER BY seq", (mid,)).fetchall():
        changed |= _segment_status(conn, mid, seq, new, detail, now)
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
        parts = conn.execute("SELECT status FROM segment WHERE message_id=?", (mid,))
        new = aggregate([STATUS_OF[s] for (s,) in parts])
    if not may_advance(current, new):
        return False
    reason = _failure(new, detail)
    b24 = _b24_forward(b24_current, new)
    _move_message(conn, mid, new, reason, b24, now)
    changed = b24 is not None and _to_outbox(conn, member_id, b24_id, code, b24, now)
    if followed:  # somebody repeated this message: the repeats take its status
        for f in conn.execute(
            "SELECT id, member_id, b24_id, code, b24_status, status FROM message WHERE duplicate_of=?", (mid,)
        ).fetchall():
            changed |= _follow(conn, f[0], f[1], f[2], f[3], f[4], STATUS_OF[f[5]], new, reason, now)
    return changed


class _Repeats:
    """The repeat check of a batch of intakes: the earlier message each one repeats (same
    portal, number and text, in its window), as ``ORDER BY id LIMIT 1`` over the stored
    messages and the batch's own earlier ones would find it.

    One read of the stored messages for all of the batch's numbers and texts (the check ran
    one SELECT per message, mostly finding nothing), then the batch's messages as they are
    stored. A message that failed or was refused does not count: sending it again is a
    retry, not a double send; nor does a repeat (it follows its first).
    """

    def __init__(self, conn: sqlite3.Connection, messages: Sequence[NewMessage], now: float) -> None:
        self._earlier: dict[tuple[str, str | None, str], list[tuple[int, str, float]]] = {}  # by id, oldest first
        checked = [m for m in messages if m.reason is None and m.phone is not None and m.duplicate_window > 0]
        if not checked:
            return
        since = now - max(m.duplicate_window for m in checked)
        for member_id in {m.member_id for m in checked}:
            of_member = [m for m in checked if m.member_id == member_id]
            phones = sorted({m.phone for m in of_member if m.phone is not None})
            texts = sorted({m.text for m in of_member})
            for i in range(0, len(phones), 400):
                for j in range(0, len(texts), 400):
                    self._read(conn, member_id, phones[i:i + 400], texts[j:j + 400], since)

    def _read(self, conn: sqlite3.Connection, member_id: str, phones: list[str], texts: list[str],
              since: float) -> None:
        for mid, phone, text, status, created_at in conn.execute(
            f"SELECT id, phone, text, status, created_at FROM message WHERE member_id=?"
            f" AND phone IN ({','.join('?' * len(phones))}) AND created_at>=?"
            f" AND text IN ({','.join('?' * len(texts))})"
            " AND duplicate_of IS NULL AND status NOT IN ('failed', 'rejected') ORDER BY id",
            (member_id, *phones, since, *texts),
        ):
            self._earlier.setdefault((member_id, phone, text), []).append((mid, status, created_at))

    def first_of(self, m: NewMessage, since: float) -> tuple[int, str] | None:
        for mid, status, created_at in self._earlier.get((m.member_id, m.phone, m.text), ()):
            if created_at >= since:
                return mid, status
        return None

    def stored(self, m: NewMessage, mid: int, now: float) -> None:
        """``m`` was stored as ``mid`` at ``now``, queued and no repeat: later messages of the
        batch may repeat it."""
        if m.phone is not None:
            self._earlier.setdefault((m.member_id, m.phone, m.text), []).append((mid, "queued", now))


def _follow(conn: sqlite3.Connection, mid: int, member_id: str, b24_id: str, code: str, b24_current: str | None,
            current: Status, new: Status, reason: str | None, now: float) -> bool:
    """A repeat takes its first message's status: one SMS went out, both posts learn its fate."""
    if not may_advance(current, new):
        return False
    b24 = _b24_forward(b24_current, new)
    _move_message(conn, mid, new, _failure(new, reason), b24, now)
    _event(conn, mid, None, new, True, "follows its first message", now)
    return b24 is not None and _to_outbox(conn, member_id, b24_id, code, b24, now)


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


def _b24_forward(b24_current: str | None, new: Status) -> str | None:
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


def _to_outbox(conn: sqlite3.Connection, member_id: str, b24_id: str, code: str, b24: str, now: float) -> bool:
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
