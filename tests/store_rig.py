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


def connect(database: Path | str) -> Any:
    """A plain connection to a store's database for a test to look into or arrange rows:
    sqlite3's, or on PostgreSQL one that takes the same SQL (``smppd.store.postgres``);
    both begin a transaction on the first write, and ``commit()`` ends it."""
    if not is_postgresql(str(database)):
        return sqlite3.connect(database)
    from smppd.store.postgres import PostgresEngine

    return PostgresEngine(str(database)).connect_plain()
