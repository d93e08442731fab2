"""The cluster's SQL (PostgreSQL only): the lease table, its statements, the fencing check.

Kept here because every SQL text of smppd lives in the store package; the asyncio shell
that sends these (``smppd.cluster.lease``) runs them on a connection of its own, never
the writer's, with psycopg's ``%s`` placeholders. ``FENCE_CHECK`` alone runs inside the
writer's operations and so is spelled like the store's other SQL (``?``).
"""

from __future__ import annotations

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
