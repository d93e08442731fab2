"""The durable store: SQLite in WAL mode (or PostgreSQL) behind one writer with group commit.

One ``Store`` is the interface the daemon and its parts use; it is the writer
(``writer``: group commit, the full-disk policy) with each concern's operations
over it, one module per concern:

* ``engine``: SQLite or PostgreSQL (``postgres``: psycopg, one SQL text translated);
* ``schema``: the tables and their migrations, one description for both engines;
* ``intake``: the idempotent insert and the repeat rule;
* ``status``: how a resp or receipt moves segments, messages, repeats and the
  outbox (the heart of the domain: plain functions run inside operations);
* ``receipts``: the SMPP routes' resps, receipts, MO and unmatched receipts;
* ``polling``: the HTTP routes' SMSC ids, callbacks, polls and fallbacks;
* ``outbox``: what the Bitrix24 pushers read and clear;
* ``portals``: portals, tokens and app events;
* ``contacts``: the stop list and what is kept per number;
* ``holds``: messages a business rule holds;
* ``admin``: the admin commands' reads and acts;
* ``reader``: a read-only connection for the journal and ``smppd report``, apart
  from the writer.

The records these take and give (``NewMessage``, ``OpenMessage``, ...) live in
``model``. Status rules (what may move where, what Bitrix24 sees) come from there too.
"""

from __future__ import annotations

from ..model import (
    NO_RULES,
    IntakeResult,
    NewMessage,
    OpenMessage,
    OutboxItem,
    PollItem,
    PortalRecord,
    ReceiptRules,
    StoredAppEvent,
    Unreceipted,
)
from .admin import Admin
from .contacts import Contacts
from .holds import Holds
from .intake import Intake
from .outbox import OUTBOX_DUE, SENT_COALESCE, Outbox
from .polling import Polling
from .portals import Portals
from .receipts import MAX_PENDING_RECEIPTS, PENDING_RECEIPT_TTL, Receipts
from .schema import MIGRATIONS, SCHEMA_VERSION
from .writer import (
    HOLD,
    HOLD_BOUNDED,
    MAX_GROUP,
    MAX_HELD_RECEIPTS,
    REFUSE,
    RESUME_FREE_BYTES,
    UNAVAILABLE_RETRY,
    Operation,
    StoreClosed,
    StoreOpenError,
    StoreUnavailable,
)
from .database import engine_for
from .engine import database_errors, integrity_errors, is_postgresql, storage_error
from .sqlite import open_problem, write_problem


class Store(Intake, Receipts, Polling, Outbox, Holds, Portals, Contacts, Admin):
    """The store's one interface: the writer plus every concern's operations.

    Mixins over one base (``Writer``) rather than parts that hold a writer: the
    callers keep one object and one name per operation (``store.intake``,
    ``store.apply_receipts``), each concern's code stays in its own module, and the
    hot operations cost no extra hop through a delegate.
    """


__all__ = [
    "HOLD", "HOLD_BOUNDED", "MAX_GROUP", "MAX_HELD_RECEIPTS", "MAX_PENDING_RECEIPTS", "MIGRATIONS", "NO_RULES",
    "OUTBOX_DUE", "PENDING_RECEIPT_TTL", "REFUSE", "RESUME_FREE_BYTES", "SCHEMA_VERSION", "SENT_COALESCE",
    "UNAVAILABLE_RETRY", "IntakeResult", "NewMessage", "OpenMessage", "Operation", "OutboxItem", "PollItem",
    "PortalRecord", "ReceiptRules", "Store", "StoreClosed", "StoreOpenError", "StoreUnavailable", "StoredAppEvent",
    "Unreceipted", "database_errors", "engine_for", "integrity_errors", "is_postgresql", "open_problem",
    "storage_error", "write_problem",
]
