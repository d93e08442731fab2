"""Helpers for the end-to-end tests: the demo's rig plus lookups into the store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from smppd.cli.demo import FINAL_B24, Rig, handler_url

from tests.rigs.store_rig import connect


async def post(rig: Rig, code: str, to: str, body: str, **kw: object) -> tuple[str, int, dict]:
    """Create a message in the portal and post its HANDLER form to the shim."""
    b24_id, form = rig.portal.create_message(code, to, body, **kw)
    async with aiohttp.ClientSession() as http:
        async with http.post(handler_url(rig, code), data=form) as resp:
            return b24_id, resp.status, await resp.json(content_type=None)


async def wait_final(rig: Rig, b24_ids: list[str], timeout: float = 15.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = {i: rig.portal.messages[i].status for i in b24_ids}
        if all(s in FINAL_B24 for s in statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"not final in time: {statuses}")
        await asyncio.sleep(0.05)


def db(rig: Rig) -> Any:
    """A connection to the rig's store (either engine), rows by index or by column name."""
    return connect(rig.config.daemon.database, by_name=True)


def smsc_ids(rig: Rig, b24_id: str) -> list[str]:
    rows = db(rig).execute(
        "SELECT s.smsc_id FROM segment s JOIN message m ON m.id = s.row_id"
        " WHERE m.b24_id=? ORDER BY s.seq", (b24_id,)
    ).fetchall()
    return [r[0] for r in rows]
