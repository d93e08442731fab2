"""Which database the store writes: a SQLite file (the default, one machine) or PostgreSQL.

``[daemon] database`` is a path (SQLite) or a ``postgresql://`` URL. Everything above
this module is the same for both: operations are plain functions over a DB-API
connection and use one SQL text, written for SQLite; the PostgreSQL connection
(``postgres``) translates each statement text once and caches it. What differs per
engine lives here, behind ``Engine``:

* how the writer's connection is opened and set up (PRAGMAs only on SQLite);
* where the schema version is kept (``PRAGMA user_version``, or a one-row table);
* the DDL of the migrations (type names per engine);
* which errors mean "the storage cannot write now" (hold and retry) rather than
  "this operation is wrong" (fail it), and the one log line about them;
* a probe write that commits only when writes go through again.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator, Iterator, Protocol

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(database: str) -> bool:
    """Whether ``[daemon] database`` names a PostgreSQL database rather than a SQLite file."""
    return database.startswith(POSTGRESQL_SCHEMES)


class Connection(Protocol):
    """What operations use of a connection: the DB-API subset both engines give."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


def database_errors() -> tuple[type[BaseException], ...]:
    """The driver errors a read of the store can raise (for ``except``): sqlite3's, and
    psycopg's once it was loaded (nothing else can raise one)."""
    found: tuple[type[BaseException], ...] = (sqlite3.Error,)
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        found += (psycopg.Error,)
    return found


def integrity_errors() -> tuple[type[BaseException], ...]:
    """A constraint the operation broke (a duplicate key), on either engine."""
    found: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        found += (psycopg.IntegrityError,)
    return found


class Engine:
    """One database engine's side of the store; ``engine_for`` picks it from the config."""

    name = ""
    # After a storage error the writer opens a new connection before it tries again
    # (PostgreSQL: the server may be another one by then; SQLite: the same file, kept open).
    reconnect_after_storage_error = False
    # Several daemons may write this database at once (PostgreSQL), so work that must happen
    # once across them (spending a single-use refresh token) takes a lock in the database.
    shared = False

    def __init__(self, database: str) -> None:
        self.database = database

    @property
    def display(self) -> str:
        """The database for a log line or an error: never a password."""
        return self.database

    def open_problem(self) -> str | None:
        """Why the database cannot be opened for writing, found before trying, or None."""
        return None

    def connect(self) -> Connection:
        """The writer's connection: autocommit, transactions by explicit BEGIN/COMMIT."""
        raise NotImplementedError

    def connect_readonly(self) -> Connection:
        """A connection that reads only and never blocks the writer (journal, report)."""
        raise NotImplementedError

    def broken(self, conn: Connection) -> bool:
        """The connection must be opened again before the next group (PostgreSQL)."""
        return False

    def schema_version(self, conn: Connection) -> int:
        raise NotImplementedError

    def set_schema_version(self, conn: Connection, version: int) -> None:
        raise NotImplementedError

    @contextmanager
    def schema_lock(self, conn: Connection) -> Iterator[None]:
        """Around a migration step's transaction: no other node migrates at the same time."""
        yield

    @asynccontextmanager
    async def cluster_lock(self, name: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Held while one node does what no other node may do at the same time (``name`` says
        what); yields whether it is held (``wait=False``: False at once when another node
        holds it). One machine (SQLite): the daemon's own locks already serialise it."""
        yield True

    def ddl(self, statement: str) -> str:
        """A migration's statement as this engine spells it."""
        return statement

    def probe(self, conn: Connection) -> None:
        """A write that changes nothing, in the caller's transaction."""
        raise NotImplementedError

    def storage_error(self, e: BaseException) -> bool:
        """Whether ``e`` means the storage cannot write now (hold, retry), not a bad operation."""
        raise NotImplementedError

    def problem(self, e: BaseException) -> str:
        """What the storage lacks, for the one ``store_unavailable`` line."""
        return str(e)

    def open_error(self, e: BaseException) -> tuple[str, bool]:
        """(problem, whether starting again later can work) for an error at open."""
        return str(e), self.storage_error(e)

    def free_bytes(self) -> float | None:
        """Bytes free under the database for the metrics, None when not ours to see."""
        return None


# SQLite primary result codes that say the storage failed, not the operation: SQLITE_FULL
# (ENOSPC), SQLITE_IOERR (EIO, EFBIG, a WAL or shm that cannot grow), SQLITE_READONLY
# (the filesystem was remounted read-only under us).
_STORAGE_ERRORS = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY})


def storage_error(e: BaseException) -> bool:
    """Whether ``e`` means the storage cannot take writes now (retry later), not a bad operation."""
    if isinstance(e, sqlite3.Error):
        # sqlite_errorcode (3.11+) is set on errors SQLite raised, not on ones built in Python.
        return (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _STORAGE_ERRORS
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(e, psycopg.Error):
        return pg_storage_error(e)
    return False


def pg_storage_error(e: BaseException) -> bool:
    """Whether a psycopg error is the storage failing (hold and retry), not the operation.

    OperationalError covers a lost or refused connection (SQLSTATE class 08), a server
    shutting down (57P01..57P03), a full disk or no memory (53), an I/O error (58), a
    serialization failure or deadlock (40); 25006 is a write on a read-only server (a
    standby after a failover, until the connection reaches the new primary);
    InterfaceError is a connection already closed.
    """
    psycopg = sys.modules["psycopg"]
    if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    state = getattr(e, "sqlstate", None) or ""
    return state == "25006" or state.startswith(("08", "53", "57", "58"))



_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def redact(database: str) -> str:
    """A database URL without its password (a SQLite path is returned as it is)."""
    return _PASSWORD.sub(r"\1***@", database)
