"""Store helpers shared by test modules: a message to take in, a small disk to fill."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from smppd.store import NewMessage, is_postgresql


def new(b24_id: str = "a" * 32, segments: int = 1, reason: str | None = None, member: str = "m1") -> NewMessage:
    return NewMessage(member_id=member, b24_id=b24_id, code="by_life", route="life", sender="Shop",
                      phone=None if reason else "+375291234567", text="hello", encoding="gsm7",
                      segments=segments, reason=reason)


def fill(state: Path) -> Path:
    filler = state / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def connect(database: Path | str, *, by_name: bool = False) -> Any:
    """A plain connection to a store's database for a test to look into or arrange rows:
    sqlite3's, or on PostgreSQL one that takes the same SQL (``smppd.store.postgres``);
    both begin a transaction on the first write, and ``commit()`` ends it. ``by_name``: rows
    are read by index or by column name (sqlite3.Row)."""
    if not is_postgresql(str(database)):
        conn = sqlite3.connect(database)
        if by_name:
            conn.row_factory = sqlite3.Row
        return conn
    from smppd.store.postgres import PostgresEngine

    pg = PostgresEngine(str(database)).connect_plain()
    if by_name:
        pg.row_factory = _row_by_name
    return pg


class _Row(tuple):  # type: ignore[type-arg]
    """A row read by index or by column name, as sqlite3.Row."""

    names: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self.names[key] if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self.names)


def _row_by_name(cursor: Any) -> Any:
    names = {d.name: i for i, d in enumerate(cursor.description or ())}
    row_type = type("Row", (_Row,), {"names": names})
    return lambda values: row_type(values)
