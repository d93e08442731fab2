"""The global stop list: numbers that opted out of marketing.

Kept in the store (it must survive restarts and is the legal record of an opt-out)
and mirrored in memory, because intake asks it for every marketing message and
must not pay a database round trip for that. Every change goes to disk first,
then to the set, so the set never claims more than the disk holds.
"""

from __future__ import annotations

from typing import Any

import structlog

from .. import phone
from ..store import Store

log = structlog.get_logger(__name__)


class StopList:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._numbers: set[str] = set()

    async def load(self) -> int:
        self._numbers = await self.store.stoplist_numbers()
        return len(self._numbers)

    def __contains__(self, e164: object) -> bool:
        return e164 in self._numbers

    def __len__(self) -> int:
        return len(self._numbers)

    async def add(self, e164: str, source: str) -> bool:
        """Add a normalized number; False when it was already there (the first record is kept)."""
        added = await self.store.stoplist_add(e164, source)
        self._numbers.add(e164)
        if added:
            log.info("stoplist_added", to=phone.mask(e164), source=source)
        return added

    async def remove(self, e164: str) -> bool:
        removed = await self.store.stoplist_remove(e164)
        self._numbers.discard(e164)
        if removed:
            log.info("stoplist_removed", to=phone.mask(e164))
        return removed

    async def entries(self) -> list[dict[str, Any]]:
        return [{"phone": p, "source": source, "added_at": at} for p, source, at in await self.store.stoplist()]
