"""The portal's request budget as the client sees it: a leaky bucket with two priorities.

Bitrix24 meters each portal with a leaky bucket (about 2 requests a second, a burst of 50,
bitrix24.md §8); one mirror of it per portal, shared by every caller of that portal (the
pusher, registration, app-event proofs, ``smppd contacts``), keeps them all under the limit
together, so the portal's 503 is rare rather than the pacing signal.
"""

from __future__ import annotations

from typing import Awaitable, Callable

#: Call priorities (issue 16). ``PRIORITY_NORMAL`` is everything that always was (the status
#: pusher, registration); ``PRIORITY_BULK`` is a long job (``smppd contacts``) that must never
#: delay the others: it only takes budget the normal callers leave unused.
PRIORITY_BULK = 0
PRIORITY_NORMAL = 1
#: Units of the burst a bulk caller never takes, so a normal call finds room at once.
BULK_HEADROOM = 10


class LeakyBucket:
    """Client-side mirror of the portal's bucket, so we rarely meet its 503.

    Each request reserves one unit at once (no lock needed in asyncio) and sleeps until the
    level it reserved is back under ``burst``; concurrent callers therefore queue in order.
    A bulk request instead waits, without reserving, until the level is below
    ``burst - BULK_HEADROOM``: normal callers (who reserve at once) always go first, and
    ``bulk_waiting`` tells them someone would use what they leave.
    """

    def __init__(self, rate: float | None, burst: int, clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._level = 0.0
        self._at = clock()
        self.bulk_waiting = 0

    def _drain(self) -> None:
        now = self._clock()
        if self._rate is not None:
            self._level = max(0.0, self._level - (now - self._at) * self._rate)
        self._at = now

    async def acquire(self, priority: int = PRIORITY_NORMAL) -> None:
        if self._rate is None:
            return
        if priority < PRIORITY_NORMAL:
            await self._acquire_bulk()
            return
        self._drain()
        self._level += 1
        excess = self._level - self._burst
        if excess > 0:
            await self._sleep(excess / self._rate)

    async def _acquire_bulk(self) -> None:
        ceiling = max(1.0, self._burst - BULK_HEADROOM)
        self.bulk_waiting += 1
        try:
            while True:
                self._drain()
                if self._level + 1 <= ceiling:
                    self._level += 1
                    return
                assert self._rate is not None
                await self._sleep(max(0.01, (self._level + 1 - ceiling) / self._rate))
        finally:
            self.bulk_waiting -= 1

    def saturate(self) -> None:
        """The portal said its bucket is full: assume ours is too, so others slow down."""
        self._drain()
        self._level = max(self._level, float(self._burst))


__all__ = ["BULK_HEADROOM", "PRIORITY_BULK", "PRIORITY_NORMAL", "LeakyBucket"]
