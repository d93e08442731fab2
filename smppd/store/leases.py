"""The cluster's database side (PostgreSQL only): the lease table, its statements, the
fencing check, and the two connections a node keeps of its own (leases, the work bell).

Kept here because every SQL text and every engine import of smppd lives in the store
package; ``smppd.cluster`` decides, this module only talks to the database. The lease
statements run on their own connection, never the writer's, with psycopg's ``%s``
placeholders; ``FENCE_CHECK`` alone runs inside the writer's operations and so is spelled
like the store's other SQL (``?``).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import psycopg
import psycopg.sql

# Created by the lease keeper at start on every node (idempotent), not by the store's
# migrations: SQLite never has it, and nothing but the cluster reads it.
LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY,             -- 'route:<name>', 'portal:<member_id>', 'job:<name>'
    node TEXT NOT NULL,                -- [daemon] node of the holder
    token BIGINT NOT NULL,             -- the fencing token: +1 at every acquisition
    expires_at TIMESTAMPTZ NOT NULL,   -- database clock; another node may take it after this
    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""

# Every advisory lock of smppd is keyed (LOCK_CLASS, hashtext(name)): a lease's, and the short
# ones the store takes by name (a portal's token refresh, its app events).
LOCK_CLASS = 0x5350  # "SP"
TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(%s))"
# A takeover only of an expired row (by the database's clock), and the token goes up; run in
# one transaction after TAKEOVER_LOCK.
ACQUIRE = (
    "INSERT INTO lease AS l (name, node, token, expires_at) VALUES (%(name)s, %(node)s, 1,"
    " now() + make_interval(secs => %(ttl)s))"
    " ON CONFLICT (name) DO UPDATE SET node = EXCLUDED.node, token = l.token + 1,"
    " expires_at = EXCLUDED.expires_at, acquired_at = now() WHERE l.expires_at < now()"
    " RETURNING token"
)
RENEW = (
    "UPDATE lease SET expires_at = now() + make_interval(secs => %(ttl)s)"
    " WHERE name = %(name)s AND node = %(node)s AND token = %(token)s AND expires_at > now() RETURNING token"
)
RELEASE = (
    "UPDATE lease SET expires_at = now() - interval '1 millisecond'"
    " WHERE name = %(name)s AND node = %(node)s AND token = %(token)s"
)
OWNERS = (
    "SELECT name, node, token, expires_at > now(), extract(epoch FROM expires_at - now())::float8,"
    " extract(epoch FROM now() - acquired_at)::float8 FROM lease ORDER BY name"
)
# FOR KEY SHARE: a takeover (which locks the row FOR UPDATE first: TAKEOVER_LOCK) waits for
# every transaction that passed the check, while the holder's renewals (a plain UPDATE of
# expires_at, FOR NO KEY UPDATE) never wait for its own writer's transactions.
FENCE_CHECK = "SELECT token FROM lease WHERE name = ? FOR KEY SHARE"
TAKEOVER_LOCK = "SELECT 1 FROM lease WHERE name = %s FOR UPDATE"
# Before a takeover, without a lock: is the row free at all? (A contender polls; it must not
# queue FOR UPDATE behind the holder's writes every time it looks.)
FREE = "SELECT NOT EXISTS (SELECT 1 FROM lease WHERE name = %s AND expires_at >= now())"
NOTIFY = "SELECT pg_notify(%s, %s)"


# --- the connections the cluster keeps of its own (never the writer's) -----------------------

# What a lease or bell statement raises when the database cannot be reached or answer in
# time: the callers' one except clause (they import no engine).
LEASE_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, OSError, TimeoutError)


def lease_token(conn: Any, name: str) -> int | None:
    """Inside a writer operation: the lease's token now, the row locked FOR KEY SHARE."""
    row = conn.execute(FENCE_CHECK, (name,)).fetchone()
    return None if row is None else int(row[0])


class LeaseConnection:
    """One autocommit connection for a node's leases: advisory locks live as long as it does.

    Every statement has a deadline (``timeout``): a dead network must read as an error
    in seconds, not when TCP gives up.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], timeout: float) -> None:
        self._conn = conn
        self.timeout = timeout

    @classmethod
    async def open(cls, conninfo: str, application_name: str, timeout: float) -> LeaseConnection:
        conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, application_name=application_name, connect_timeout=max(2, int(timeout * 2))),
            timeout * 2)
        self = cls(conn, timeout)
        try:
            await self._one(LEASE_SCHEMA, None)
        except LEASE_ERRORS:
            await self.close()
            raise
        return self

    @property
    def closed(self) -> bool:
        return self._conn.closed

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._conn.close(), 1.0)
        except LEASE_ERRORS:
            pass

    async def _one(self, sql: str, params: Any) -> Any:
        async def run() -> Any:
            cur = await self._conn.execute(sql, params)
            return await cur.fetchone() if cur.description is not None else None

        return await asyncio.wait_for(run(), self.timeout)

    async def try_lock(self, lock_class: int, name: str) -> bool:
        row = await self._one(TRY_LOCK, (lock_class, name))
        return bool(row and row[0])

    async def unlock(self, lock_class: int, name: str) -> None:
        await self._one(UNLOCK, (lock_class, name))

    async def take_over(self, name: str, node: str, ttl: float) -> int | None:
        """The new token if the row was free (expired or absent) and is ours now, else None.

        Looks without a lock first (a contender polls; it must not queue behind the holder's
        writes each time), then locks FOR UPDATE, which waits for the old holder's writes
        that already passed their fence check, and bumps the token.
        """
        conn = self._conn

        async def attempt() -> int | None:
            free = await (await conn.execute(FREE, (name,))).fetchone()
            if not free or not free[0]:
                return None
            async with conn.transaction():
                await conn.execute(TAKEOVER_LOCK, (name,))
                row = await (await conn.execute(ACQUIRE, {"name": name, "node": node, "ttl": ttl})).fetchone()
            return None if row is None else int(row[0])

        return await asyncio.wait_for(attempt(), self.timeout)

    async def renew(self, name: str, node: str, token: int, ttl: float) -> bool:
        return await self._one(RENEW, {"name": name, "node": node, "ttl": ttl, "token": token}) is not None

    async def release(self, name: str, node: str, token: int) -> None:
        await self._one(RELEASE, {"name": name, "node": node, "token": token})

    async def owners(self) -> list[tuple[str, str, int, bool, float, float]]:
        """Every lease row: (name, node, token, live, seconds until it expires, seconds held)."""

        async def run() -> list[Any]:
            return await (await self._conn.execute(OWNERS)).fetchall()

        return [tuple(r) for r in await asyncio.wait_for(run(), self.timeout)]  # type: ignore[misc]


class NotifyConnection:
    """LISTEN/NOTIFY on a connection of its own (the work bell)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, conninfo: str, application_name: str) -> NotifyConnection:
        return cls(await psycopg.AsyncConnection.connect(conninfo, autocommit=True,
                                                          application_name=application_name, connect_timeout=5))

    async def notify(self, channel: str, payload: str) -> None:
        await self._conn.execute(NOTIFY, (channel, payload))

    async def listen(self, channel: str) -> AsyncIterator[str]:
        """The payloads sent on ``channel``, as they come (until the connection fails)."""
        await self._conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        async for note in self._conn.notifies():
            yield note.payload

    async def close(self) -> None:
        try:
            await self._conn.close()
        except LEASE_ERRORS:
            pass
