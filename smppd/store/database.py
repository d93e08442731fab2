"""Which engine ``[daemon] database`` names: a SQLite path, or a ``postgresql://`` URL."""

from __future__ import annotations

from .engine import Connection, Engine, is_postgresql
from .sqlite import SqliteEngine


def engine_for(database: str) -> Engine:
    """The engine ``[daemon] database`` names: a ``postgresql://`` URL or a SQLite path."""
    if is_postgresql(database):
        from .postgres import PostgresEngine

        return PostgresEngine(database)
    return SqliteEngine(database)


def connect_readonly(database: str) -> Connection:
    """A read-only connection to the store (journal, ``smppd report``), either engine."""
    return engine_for(database).connect_readonly()
