"""Portals (their OAuth tokens) and the app events that install, update and uninstall them."""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import AsyncIterator, Callable, Mapping, Sequence

from ..model import PortalRecord, StoredAppEvent
from .writer import Writer


#: (claimed by this node, the event as stored: None when it is gone) while a node proves it.
EventTurn = tuple[bool, StoredAppEvent | None]


class Portals(Writer):
    """Portals, their tokens and app versions, and the app events kept until proven."""

    # --- portals ---------------------------------------------------------------

    async def seed_portal(self, p: PortalRecord) -> None:
        """Add a portal from the config unless the store already knows it.

        The store's tokens win: a refresh may have rotated them since the
        config was written. A row nothing can use (no client_id: an install kept before
        migration 8) is replaced, so a hand-written [[portal]] completes it.
        """
        await self._put_portal(
            p,
            "DO UPDATE SET domain=excluded.domain, client_endpoint=excluded.client_endpoint,"
            " server_endpoint=excluded.server_endpoint, client_id=excluded.client_id,"
            " client_secret=excluded.client_secret, application_token=excluded.application_token,"
            " access_token=excluded.access_token, refresh_token=excluded.refresh_token,"
            " updated_at=excluded.updated_at WHERE portal.client_id = ''",
        )

    async def upsert_portal(self, p: PortalRecord) -> None:
        """Store a portal from an install/update event: the event's tokens win (they are newest)."""
        await self._put_portal(
            p,
            "DO UPDATE SET domain=excluded.domain, client_endpoint=excluded.client_endpoint,"
            " server_endpoint=excluded.server_endpoint, client_id=excluded.client_id,"
            " client_secret=excluded.client_secret, application_token=excluded.application_token,"
            " access_token=excluded.access_token, refresh_token=excluded.refresh_token,"
            " updated_at=excluded.updated_at",
        )

    async def _put_portal(self, p: PortalRecord, on_conflict: str) -> None:
        row = (p.member_id, p.domain, p.client_endpoint, p.server_endpoint, p.client_id, p.client_secret,
               p.application_token, p.access_token, p.refresh_token, self.clock())

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT INTO portal VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (member_id) {on_conflict}", row)

        await self.execute(op)

    async def remove_portal(self, member_id: str) -> bool:
        """Forget an uninstalled portal. Its outbox stays: a reinstall drains it."""

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM portal WHERE member_id=?", (member_id,)).rowcount > 0

        return await self.execute(op)

    async def portals(self) -> list[PortalRecord]:
        def op(conn: sqlite3.Connection) -> list[PortalRecord]:
            rows = conn.execute(
                "SELECT member_id, domain, client_endpoint, server_endpoint, client_id, client_secret,"
                " application_token, access_token, refresh_token FROM portal"
            ).fetchall()
            return [PortalRecord(*r) for r in rows]

        return await self.execute(op)

    async def save_tokens(self, p: PortalRecord) -> None:
        """Store a refreshed pair, durably, before the REST client uses it (rest/oauth.py).

        Only the tokens: the endpoints a refresh answer names are used by that client, and
        the portal's row keeps what its install event proved.
        """
        row = (p.access_token, p.refresh_token, self.clock(), p.member_id)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE portal SET access_token=?, refresh_token=?, updated_at=? WHERE member_id=?", row)

        await self.execute(op)

    async def portal(self, member_id: str) -> PortalRecord | None:
        """The portal's stored row (its newest stored token pair), None when it is not installed."""

        def op(conn: sqlite3.Connection) -> PortalRecord | None:
            row = conn.execute(
                "SELECT member_id, domain, client_endpoint, server_endpoint, client_id, client_secret,"
                " application_token, access_token, refresh_token FROM portal WHERE member_id=?", (member_id,)
            ).fetchone()
            return None if row is None else PortalRecord(*row)

        return await self.execute(op)

    @property
    def refresh_turn(self) -> Callable[[str], AbstractAsyncContextManager[PortalRecord | None]] | None:
        """What a REST client holds while it refreshes a portal's tokens, when several nodes
        share the database (rest/oauth.py); None on one machine, where the client's own
        lock is enough."""
        return self._refresh_turn if self.engine.shared else None

    @asynccontextmanager
    async def _refresh_turn(self, member_id: str) -> AsyncIterator[PortalRecord | None]:
        """One node at a time refreshes a portal, and reads the stored pair once it may.

        Why: a refresh token is single-use. Two nodes spending it at once leave one with
        ``invalid_grant``; the one that waited finds the other's pair stored and adopts it.
        The lock is released after ``save_tokens`` committed, so the stored pair is the newest.
        """
        async with self.engine.cluster_lock(f"portal-refresh:{member_id}"):
            yield await self.portal(member_id)

    @property
    def app_event_turn(self) -> Callable[[StoredAppEvent], AbstractAsyncContextManager[EventTurn]] | None:
        """What a node holds while it proves an app event, when several nodes share the
        database (bitrix24/install.py); None on one machine, where one queue holds them all."""
        return self._app_event_turn if self.engine.shared else None

    @asynccontextmanager
    async def _app_event_turn(self, e: StoredAppEvent) -> AsyncIterator[EventTurn]:
        """(claimed, the event as stored now): claimed for this node while it is proven, not
        claimed while another node proves its portal's events; stored None when another
        node already proved it.

        Why a claim: every node loads the stored events at start, and a proof spends the
        event's single-use refresh token, so two nodes proving one event fail it for both.
        The claim is per portal (its events are proven in order) and never waits, as
        ``SKIP LOCKED`` would not: the node that skips tries again after its back-off.
        """
        async with self.engine.cluster_lock(f"app-event:{e.member_id}", wait=False) as held:
            yield held, (await self.app_event(e.id)) if held else e

    async def app_event(self, event_id: int) -> StoredAppEvent | None:
        """One stored event as it is now (another node may have updated or deleted it)."""

        def op(conn: sqlite3.Connection) -> StoredAppEvent | None:
            r = conn.execute("SELECT id, event, member_id, domain, auth, stage, received_at, attempts, next_at,"
                             " last_error FROM app_event WHERE id=?", (event_id,)).fetchone()
            return None if r is None else StoredAppEvent(r[0], r[1], r[2], r[3], json.loads(r[4]), *r[5:])

        return await self.execute(op)

    # --- app events (bitrix24/events.py) ----------------------------------------

    async def add_app_event(self, event: str, member_id: str, domain: str, auth: Mapping[str, str]) -> StoredAppEvent:
        """Store an app event before it is answered: durable on return."""
        now = self.clock()
        blob = json.dumps(dict(auth), separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute("INSERT INTO app_event (event, member_id, domain, auth, received_at, next_at)"
                               " VALUES (?,?,?,?,?,?)", (event, member_id, domain, blob, now, now))
            return int(cur.lastrowid or 0)

        row_id = await self.execute(op)
        return StoredAppEvent(row_id, event, member_id, domain, dict(auth), "received", now, 0, now, None)

    async def app_events(self) -> list[StoredAppEvent]:
        def op(conn: sqlite3.Connection) -> list[StoredAppEvent]:
            rows = conn.execute("SELECT id, event, member_id, domain, auth, stage, received_at, attempts, next_at,"
                                " last_error FROM app_event ORDER BY id").fetchall()
            return [StoredAppEvent(r[0], r[1], r[2], r[3], json.loads(r[4]), *r[5:]) for r in rows]

        return await self.execute(op)

    async def update_app_event(self, e: StoredAppEvent) -> None:
        """Keep what a proof step learned (a spent refresh token's successor first of all)."""
        blob = json.dumps(dict(e.auth), separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE app_event SET auth=?, stage=?, attempts=?, next_at=?, last_error=? WHERE id=?",
                         (blob, e.stage, e.attempts, e.next_at, e.last_error, e.id))

        await self.execute(op)

    async def delete_app_events(self, ids: Sequence[int]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM app_event WHERE id=?", [(i,) for i in ids])

        await self.execute(op)

    async def app_version(self, member_id: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT version FROM portal_version WHERE member_id=?", (member_id,)).fetchone()
            return None if row is None else str(row[0])

        return await self.execute(op)

    async def set_app_version(self, member_id: str, version: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO portal_version VALUES (?,?) ON CONFLICT (member_id) DO UPDATE"
                         " SET version=excluded.version", (member_id, version))

        await self.execute(op)
