"""The channel a number was last reached on (Viber or SMS), kept and written to the CRM.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping, Protocol

import structlog

from ..rest import BATCH_MAX_COMMANDS, RestError
from .scan import BulkClient, ContactsJob, chunks

log = structlog.get_logger(__name__)


CHANNEL_FIELD = "UF_CRM_SMS_CHANNEL"
CHANNEL_FLUSH = 5.0  # seconds marks gather before they go to Bitrix24 together
FIND_MAX = 20  # values per crm.duplicate.findbycomm (its documented limit)


class ChannelTable(Protocol):
    async def channel_marks(self) -> dict[str, str]: ...

    async def channel_mark(self, phone: str, channel: str) -> bool: ...


class PreferredChannel:
    """How the Viber cascade of a Viber-first SMSC.ru route ended, per number (issue 16 §4).

    Viber delivered: ``viber``; Viber failed and the SMS went out: ``sms``. Kept in the store
    (so ``skip_viber_for_sms_contacts`` routes send SMS at once to those numbers) and written
    to ``UF_CRM_SMS_CHANNEL`` of the contacts with that number (``crm.duplicate.findbycomm``,
    20 numbers a command, then ``crm.contact.update``), at bulk priority, a few seconds' worth
    of marks at a time. Only a change is written: the same ending again costs nothing.
    """

    def __init__(self, store: ChannelTable, clients: Callable[[], Mapping[str, BulkClient]],
                 flush: float = CHANNEL_FLUSH) -> None:
        self._store = store
        self._clients = clients
        self._flush = flush
        self._sms: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._fields_made: set[str] = set()
        self.written = 0

    async def load(self) -> None:
        self._sms = {p for p, c in (await self._store.channel_marks()).items() if c == "sms"}

    def prefers_sms(self, phone_e164: str) -> bool:
        return phone_e164 in self._sms

    def note(self, phone_e164: str, channel: str) -> None:
        """Called by the route, synchronously: the work happens in `run`."""
        if channel == "sms":
            self._sms.add(phone_e164)
        else:
            self._sms.discard(phone_e164)
        self._queue.put_nowait((phone_e164, channel))

    async def run(self) -> None:
        while True:
            first = await self._queue.get()
            await asyncio.sleep(self._flush)
            marks = dict([first])
            while not self._queue.empty():
                number, channel = self._queue.get_nowait()
                marks[number] = channel
            changed = {n: c for n, c in marks.items() if await self._store.channel_mark(n, c)}
            if changed:
                try:
                    await self.write(changed)
                except RestError as e:  # the mark is stored; the CRM field waits for the next change
                    log.warning("contacts.channel_write_failed", error=e.code, numbers=len(changed))
                except Exception as e:  # never let one bad answer end the marks for the daemon's life
                    log.error("contacts.channel_write_failed", error=type(e).__name__, numbers=len(changed))

    async def write(self, marks: Mapping[str, str]) -> None:
        for member_id, client in self._clients().items():
            job = ContactsJob(client)
            if member_id not in self._fields_made:
                await job.ensure_fields(["contact"], [(CHANNEL_FIELD, "string", "SMS: preferred channel")])
                self._fields_made.add(member_id)
            updates: dict[tuple[str, int], dict[str, Any]] = {}
            for channel in ("viber", "sms"):
                numbers = sorted(n for n, c in marks.items() if c == channel)
                finds = {f"f{i}": ("crm.duplicate.findbycomm", {"type": "PHONE", "values": chunk})
                         for i, chunk in enumerate(chunks(numbers, FIND_MAX))}
                for part in chunks(list(finds.items()), BATCH_MAX_COMMANDS):
                    found, _, _ = await job.batch(dict(part))
                    for answer in found.values():
                        ids = answer.get("CONTACT", []) if isinstance(answer, dict) else []
                        for contact_id in ids:
                            updates[("contact", int(contact_id))] = {CHANNEL_FIELD: channel}
            await job.write(updates)
            self.written += job.report.updated
