"""The store's tables: every migration since the first, applied in order at open.

One description for both engines: the DDL is written for SQLite and each engine
spells it its own way (``Engine.ddl``: PostgreSQL's type names). A database is at a
version (SQLite's ``PRAGMA user_version``, PostgreSQL's ``smppd_schema`` row); each
step runs in one transaction, so a crash mid-migration leaves the previous version,
never half of the next. On PostgreSQL a step holds an advisory lock, so two nodes that
start together migrate once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Connection, Engine

SCHEMA_VERSION = 11
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
    CREATE INDEX outbox_due ON outbox (member_id, (status = 'sent'), created_at);
    """,
    # A 'sent' now waits SENT_COALESCE seconds (next_at in the future), so under load the
    # outbox holds thousands of rows that are not due yet; with created_at in the index the
    # next-50 query stepped over every one of them (3.2 ms at 20,000). With next_at it reads
    # the due range only (16 µs), for the finals and then for the 'sent's.
    6: """
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox (member_id, (status = 'sent'), next_at);
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
    # issue 15.2: one name per id. ``message_id`` meant Bitrix24's id, our row id and the
    # SMSC's id; the columns now say which: a segment's and an event's ``row_id`` is
    # message.id, ``smsc_id`` is the id the SMSC or HTTP provider gave the part (message.b24_id
    # was already Bitrix24's). SQLite rewrites the indexes that name the columns
    # (segment_provider, event_message, receipt_pending_id and their WHERE clauses) itself.
    11: """
    ALTER TABLE segment RENAME COLUMN message_id TO row_id;
    ALTER TABLE segment RENAME COLUMN provider_id TO smsc_id;
    ALTER TABLE event RENAME COLUMN message_id TO row_id;
    ALTER TABLE receipt_pending RENAME COLUMN provider_id TO smsc_id;
    """,
}


def migrate(conn: Connection, engine: Engine | None = None) -> None:
    """Bring the database to ``SCHEMA_VERSION``, one transaction per step (SQLite by default)."""
    if engine is None:
        from .sqlite import SqliteEngine

        engine = SqliteEngine("")
    version = engine.schema_version(conn)
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"database schema {version} is newer than this smppd ({SCHEMA_VERSION})")
    for v in range(version + 1, SCHEMA_VERSION + 1):
        with engine.schema_lock(conn):
            # Statement by statement: executescript() would COMMIT on its own.
            conn.execute("BEGIN")
            try:
                if engine.schema_version(conn) < v:  # else another node took this step meanwhile
                    for statement in MIGRATIONS[v].split(";"):
                        if statement.strip():
                            conn.execute(engine.ddl(statement))
                    engine.set_schema_version(conn, v)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
