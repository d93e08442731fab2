"""SQLite: a file in WAL mode, synchronous=FULL; the default engine, for one machine."""

from __future__ import annotations

import os
import sqlite3

from .engine import Connection, Engine, is_postgresql, storage_error

class SqliteConnection(sqlite3.Connection):
    """sqlite3's connection as it is (same C methods, no cost); a subclass only so that both
    engines' connections are told apart by type."""



class SqliteEngine(Engine):
    """A SQLite file in WAL mode, synchronous=FULL: the default, for one machine."""

    name = "sqlite"

    def open_problem(self) -> str | None:
        return write_problem(self.database)

    def connect(self) -> Connection:
        conn = sqlite3.connect(self.database, isolation_level=None, factory=SqliteConnection)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the shim's 200 promises the message survives power loss too.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def connect_readonly(self) -> Connection:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, check_same_thread=False,
                               factory=SqliteConnection)
        conn.execute("PRAGMA query_only=1")
        return conn

    def schema_version(self, conn: Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, conn: Connection, version: int) -> None:
        conn.execute(f"PRAGMA user_version={int(version)}")

    def probe(self, conn: Connection) -> None:
        # The header's user_version, unchanged: a page write that commits only when the disk takes writes.
        self.set_schema_version(conn, self.schema_version(conn))

    def storage_error(self, e: BaseException) -> bool:
        return storage_error(e)

    def problem(self, e: BaseException) -> str:
        return _storage_problem(self.database, e)

    def open_error(self, e: BaseException) -> tuple[str, bool]:
        problem = write_problem(self.database)
        if problem is None and storage_error(e):  # a full disk: WAL mode needs room for its -shm
            return _storage_problem(self.database, e), True
        return problem or open_problem(self.database, e), False

    def free_bytes(self) -> float | None:
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.database)) or ".")
        except OSError:
            return None
        return float(st.f_bavail * st.f_frsize)


def write_problem(path: str) -> str | None:
    """Why ``path`` cannot be a writable database, in words an operator can act on, or None.

    SQLite says only "unable to open database file" or "attempt to write a readonly
    database"; the filesystem can say which of the usual causes it is. Checked before
    SQLite opens the file too, so the one line names the cause.
    """
    if is_postgresql(path):
        return None
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


