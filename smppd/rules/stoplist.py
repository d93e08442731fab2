"""The global stop list: numbers that opted out of marketing.

Kept in the store (it must survive restarts and is the legal record of an opt-out)
and mirrored in memory, because intake asks it for every marketing message and
must not pay a database round trip for that. Every change goes to disk first,
then to the set, so the set never claims more than the disk holds.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import structlog

from .. import phone, text
from ..rpc import RpcError
from ..smpp.receipts import ShortMessage
from ..store import Store
from . import is_stop_word

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

    async def on_reply(self, route: str, mo: ShortMessage, stop_words: Iterable[str]) -> bool:
        """An SMS reply of just a stop word puts its sender on the stop list; True when it did.

        Why here: an opt-out by SMS is the same legal record as one typed by an admin.
        """
        try:
            body = text.decode(mo.data_coding, text.strip_udh(mo.esm_class, mo.short_message)[1])
        except ValueError:
            return False
        if not is_stop_word(body, stop_words):
            return False
        try:
            number = phone.normalize(mo.source_addr)  # TON 1 digits (375…) or a national form
        except phone.InvalidNumber as e:
            log.warning("stop_word_from_invalid_number", route=route, reason=e.reason)
            return False
        await self.add(number, f"mo:{route}")
        return True

    def methods(self) -> dict[str, Callable[[Mapping[str, Any]], Any]]:
        """``smppd stoplist add|remove|list`` over the socket."""

        async def add(params: Mapping[str, Any]) -> dict[str, Any]:
            number = _number_param(params)
            return {"phone": number, "added": await self.add(number, str(params.get("source") or "cli"))}

        async def remove(params: Mapping[str, Any]) -> dict[str, Any]:
            number = _number_param(params)
            return {"phone": number, "removed": await self.remove(number)}

        async def entries(params: Mapping[str, Any]) -> dict[str, Any]:
            return {"numbers": await self.entries()}

        return {"stoplist.add": add, "stoplist.remove": remove, "stoplist.list": entries}


def _number_param(params: Mapping[str, Any]) -> str:
    raw = params.get("phone")
    if not isinstance(raw, str):
        raise RpcError("bad_request", "phone: must be a string", field="phone")
    try:
        return phone.normalize(raw)
    except phone.InvalidNumber as e:
        raise RpcError("bad_request", f"phone: {e.reason}", field="phone") from None
