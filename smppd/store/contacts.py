"""What is kept per number and per portal's contact base: the stop list, the preferred
channel, HLR results, and how far ``smppd contacts normalize`` got."""

from __future__ import annotations

import sqlite3
from typing import Iterable

from .writer import Writer


class Contacts(Writer):
    """Per-number records and the contact-base tools' progress."""

    # --- the stop list (smppd/rules/stoplist.py keeps it in memory too) -----------------

    async def stoplist_numbers(self) -> set[str]:
        rows = await self.execute(lambda conn: conn.execute("SELECT phone FROM stoplist").fetchall())
        return {r[0] for r in rows}

    async def stoplist(self) -> list[tuple[str, str, float]]:
        """(phone, source, added_at), oldest first."""
        return await self.execute(
            lambda conn: conn.execute("SELECT phone, source, added_at FROM stoplist ORDER BY added_at").fetchall())

    async def stoplist_add(self, e164: str, source: str) -> bool:
        """False when the number was there already: the first record is kept."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT INTO stoplist (phone, source, added_at) VALUES (?,?,?)"
                               " ON CONFLICT (phone) DO NOTHING",
                               (e164, source, now))
            return cur.rowcount == 1

        return await self.execute(op)

    async def stoplist_remove(self, e164: str) -> bool:
        return await self.execute(
            lambda conn: conn.execute("DELETE FROM stoplist WHERE phone=?", (e164,)).rowcount == 1)

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
            conn.execute("INSERT INTO preferred_channel (phone, channel, updated_at) VALUES (?,?,?) ON CONFLICT (phone)"
                         " DO UPDATE SET channel=excluded.channel, updated_at=excluded.updated_at",
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
            "INSERT INTO hlr_cache (phone, reachable, operator, region, checked_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT (phone) DO UPDATE SET reachable=excluded.reachable, operator=excluded.operator,"
            " region=excluded.region, checked_at=excluded.checked_at",
            rows))

