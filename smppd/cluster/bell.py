"""The wake-up of a route's owner when another node stored work for it: LISTEN/NOTIFY.

A post taken by node B for a route node A owns is committed by B and is A's to send.
Rather than have every owner poll every route's queue, B rings: ``NOTIFY smppd_work``
with the route and the row ids, after the commit; A hears it on a connection of its
own and reads those messages (still open?) from the shared store. A ring lost to a
reconnect costs latency, not the message: owners read the store again at every
takeover and on a slow safety timer (``ownership``).
"""

from __future__ import annotations

import asyncio
from typing import Callable

import structlog

from ..store.leases import LEASE_ERRORS, NotifyConnection

log = structlog.get_logger(__name__)

CHANNEL = "smppd_work"
MAX_PAYLOAD = 7000  # NOTIFY takes < 8000 bytes
FLUSH_DELAY = 0.005  # rings within this are sent together
RECONNECT_DELAY = 1.0

Heard = Callable[[str, list[int]], None]


def encode(route: str, ids: list[int]) -> list[str]:
    """``route:row_id,row_id,…`` payloads, each under NOTIFY's size limit."""
    out, chunk, size = [], [], len(route) + 1
    for i in ids:
        s = str(i)
        if chunk and size + len(s) + 1 > MAX_PAYLOAD:
            out.append(f"{route}:{','.join(chunk)}")
            chunk, size = [], len(route) + 1
        chunk.append(s)
        size += len(s) + 1
    if chunk:
        out.append(f"{route}:{','.join(chunk)}")
    return out


def decode(payload: str) -> tuple[str, list[int]] | None:
    route, sep, rest = payload.rpartition(":")
    if not sep or not route:
        return None
    try:
        return route, [int(x) for x in rest.split(",") if x]
    except ValueError:
        return None


class WorkBell:
    """Rings for routes owned elsewhere; hears the rings for routes owned here."""

    def __init__(self, conninfo: str, node: str, heard: Heard) -> None:
        self.conninfo = conninfo
        self.node = node
        self.heard = heard
        self._pending: dict[str, list[int]] = {}
        self._flush: asyncio.Event = asyncio.Event()
        self.rung = 0
        self.heard_count = 0

    def ring(self, route: str, row_id: int) -> None:
        self._pending.setdefault(route, []).append(row_id)
        self._flush.set()

    async def run(self) -> None:
        await asyncio.gather(self._send_loop(), self._listen_loop())

    async def _connect(self, purpose: str) -> NotifyConnection:
        while True:
            try:
                return await NotifyConnection.open(self.conninfo, f"smppd-{purpose}-{self.node}")
            except LEASE_ERRORS as e:
                log.warning("work_bell_connect_failed", purpose=purpose, error=type(e).__name__)
                await asyncio.sleep(RECONNECT_DELAY)

    async def _send_loop(self) -> None:
        conn = await self._connect("ring")
        while True:
            await self._flush.wait()
            await asyncio.sleep(FLUSH_DELAY)
            self._flush.clear()
            pending, self._pending = self._pending, {}
            payloads = [p for route, ids in pending.items() for p in encode(route, ids)]
            try:
                for p in payloads:
                    await conn.notify(CHANNEL, p)
                self.rung += len(payloads)
            except LEASE_ERRORS as e:
                # Lost rings cost latency only: the owner's safety read finds the messages.
                log.warning("work_bell_ring_failed", error=type(e).__name__, rings=len(payloads))
                await conn.close()
                conn = await self._connect("ring")

    async def _listen_loop(self) -> None:
        while True:
            conn = await self._connect("listen")
            try:
                async for payload in conn.listen(CHANNEL):
                    found = decode(payload)
                    if found is not None:
                        self.heard_count += 1
                        self.heard(*found)
            except LEASE_ERRORS as e:
                log.warning("work_bell_listen_lost", error=type(e).__name__)
            finally:
                await conn.close()
            await asyncio.sleep(RECONNECT_DELAY)
