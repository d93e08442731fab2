"""What the admin commands (``smppd message/stuck/retry/cancel/status``) read and change."""

from __future__ import annotations

import sqlite3
from typing import Any, Collection, Sequence

from .writer import Writer


class Admin(Writer):
    """Reads and acts for the admin methods; never on the hot path."""

    # --- reading ---------------------------------------------------------------

    async def message(self, row_id: int) -> dict[str, Any] | None:
        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            found = _rows(conn, "SELECT * FROM message WHERE id=?", (row_id,))
            if not found:
                return None
            out = found[0]
            out["segment_rows"] = _rows(conn, "SELECT * FROM segment WHERE row_id=? ORDER BY seq", (row_id,))
            out["events"] = _rows(conn, "SELECT * FROM event WHERE row_id=? ORDER BY id", (row_id,))
            return out

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

    async def select_messages(self, statuses: Sequence[str], *, ids: Sequence[int] = (),
                              older_than: float | None = None, route: str | None = None,
                              limit: int) -> list[tuple[int, str, str, float, str, str | None, float | None]]:
        """(id, route, status, seconds since its last change, member_id, hold, hold_until) of the
        messages in ``statuses``, narrowed by ids, age and route, by id."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> list[tuple[int, str, str, float, str, str | None, float | None]]:
            sql = (f"SELECT id, route, status, ? - updated_at, member_id, hold, hold_until FROM message"
                   f" WHERE status IN ({','.join('?' * len(statuses))})")
            args: list[Any] = [now, *statuses]
            if ids:
                sql += f" AND id IN ({','.join('?' * len(ids))})"
                args += ids
            if older_than is not None:
                sql += " AND updated_at <= ?"
                args.append(now - older_than)
            if route is not None:
                sql += " AND route = ?"
                args.append(route)
            return conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()

        return await self.execute(op)

    async def unhold(self, ids: Collection[int]) -> None:
        """Take messages out of any hold (the hold worker then never releases them)."""
        rows = [(i,) for i in ids]
        await self.execute(lambda conn: conn.executemany(
            "UPDATE message SET hold=NULL, hold_until=NULL WHERE id=? AND hold IS NOT NULL", rows))

    async def open_segments(self, ids: Collection[int], statuses: Sequence[str]) -> list[tuple[int, int]]:
        """(row id, seq) of the messages' segments in ``statuses``."""
        wanted = list(ids)

        def op(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            q = ",".join("?" * len(wanted)) or "NULL"
            return conn.execute(
                f"SELECT row_id, seq FROM segment WHERE row_id IN ({q})"
                f" AND status IN ({','.join('?' * len(statuses))})", (*wanted, *statuses),
            ).fetchall()

        return await self.execute(op)


def _rows(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The rows as {column: value}, by the DB-API's ``description`` (either engine)."""
    cur = conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]
