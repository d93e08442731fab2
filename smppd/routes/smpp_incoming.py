"""What the binds of an SMPP route bring in: receipts, replies (MO), query_sm answers.

The outgoing side (queue, policy, submits) is ``routes/smpp.py``; this is the other
direction, kept apart because its rules are the store's and the SMSC's, not the
pump's: a receipt is stored before its deliver_sm is answered (an unanswered one is
redelivered; one we could not store is answered ESME_RX_T_APPN, "try later"), and
an MO is stored and handed to the business rules before it is answered.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import structlog

from .. import phone
from ..background import Background
from ..config import SmppRouteConfig
from ..model import FINAL, ReceiptRules, Status, UnknownReceiptState, Unreceipted, receipt_status
from ..smpp.connection import Connection
from ..smpp.events import MessageReceived, QueryAnswered, ReceiptReceived
from ..smpp.pdu import ESME_RX_T_APPN
from ..smpp.receipts import ShortMessage
from ..store import Store, StoreUnavailable

log = structlog.get_logger(__name__)

# What each id-base reading means in the route's configuration (issue 14.6).
ID_BASE_ADVICE = {
    "hex": 'receipt_id_base = "hex" and resp_id_base = "dec"',
    "dec": 'receipt_id_base = "dec" and resp_id_base = "hex"',
}


class SmppIncoming:
    """Stores what one SMPP route's binds deliver and answers each deliver_sm."""

    def __init__(self, cfg: SmppRouteConfig, store: Store, stats: dict[str, int], background: Background) -> None:
        self.name = cfg.name
        self.store = store
        self.stats = stats  # the route's counters: one set per route in `smppd status`
        self._background = background
        self.rules = self.rules_for(cfg)
        self._base_warned: set[str] = set()  # the id-base readings already logged at warning level
        # Business rules read MO texts (a STOP reply); awaited before the deliver_sm is acknowledged.
        self.on_mo: Callable[[str, ShortMessage], Awaitable[None]] | None = None

    @staticmethod
    def rules_for(cfg: SmppRouteConfig) -> ReceiptRules:
        return ReceiptRules(id_readings=cfg.receipt_id_base == "auto", multipart=cfg.multipart_receipts)

    def query_answered(self, e: QueryAnswered) -> None:
        """A final message_state in a query_sm_resp is taken as that part's receipt."""
        part: Unreceipted = e.ref[1]
        try:
            status = receipt_status(e.message_state, None)
        except UnknownReceiptState:
            return
        if status not in FINAL:
            return  # still en route: asked again after query_sm_delay, ended at validity
        detail = f"query_sm message_state={e.message_state}"
        if e.error_code:
            detail += f" err:{e.error_code}"
        self._background.track(self.store.match_receipts(self.name, [(part.smsc_id, status, detail)], self.rules))

    def receipts(self, connection: Connection, events: list[ReceiptReceived]) -> None:
        """Store the receipts, then answer each deliver_sm: an unanswered one is redelivered.

        If the store fails, the answer is ESME_RX_T_APPN: the SMSC delivers it again later,
        instead of waiting for a response that never comes and stalling its window.
        """
        known: list[ReceiptReceived] = []
        rows: list[tuple[str, Status, str]] = []
        for e in events:
            r = e.receipt
            self.stats["receipts"] += 1
            try:
                status = receipt_status(r.state, r.stat)
            except UnknownReceiptState as err:
                log.warning("smpp_receipt_unknown_state", route=self.name, smsc_id=r.smsc_id, error=str(err))
                connection.acknowledge(e.sequence)
                continue
            detail = r.stat or f"message_state={r.state}"
            if r.error and r.error.strip("0"):
                detail += f" err:{r.error}"
            known.append(e)
            rows.append((r.smsc_id, status, detail))
        if not rows:
            return

        def stored(fut: asyncio.Future[list[str | None]]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                error = "cancelled" if fut.cancelled() else repr(fut.exception())
                # A full disk beyond the held bound: the store said why once; no line per receipt.
                full = not fut.cancelled() and isinstance(fut.exception(), StoreUnavailable)
                for e in known:
                    self.stats["receipts_unstored"] += 1
                    if not full:
                        log.error("smpp_receipt_not_stored", route=self.name, smsc_id=e.receipt.smsc_id,
                                  error=error)
                    connection.acknowledge(e.sequence, ESME_RX_T_APPN)
                return
            for e, how in zip(known, fut.result()):
                if how is None:
                    self.stats["receipts_unmatched"] += 1
                    log.info("smpp_receipt_before_resp", route=self.name, smsc_id=e.receipt.smsc_id)
                elif how != "as-is" and how not in self._base_warned:
                    self._base_warned.add(how)
                    log.warning("smpp_receipt_id_base_mismatch", route=self.name, smsc_id=e.receipt.smsc_id,
                                reading=how, advice=f"set {ID_BASE_ADVICE[how]} in [route.{self.name}]")
                connection.acknowledge(e.sequence)

        try:
            fut = self.store.match_receipts(self.name, rows, self.rules)
        except Exception as err:  # the store is closed, or full beyond the held receipts: nothing was written
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(err)
            if isinstance(err, StoreUnavailable):  # answered 0x64 now; the store said why once
                stored(fut)
                return
        fut.add_done_callback(stored)
        self._background.track(fut)

    async def mo(self, connection: Connection, e: MessageReceived) -> None:
        """Store the MO (a reply, a STOP), hand it to the rules, then answer.

        An unanswered deliver_sm is redelivered; one we could not store is answered
        ESME_RX_T_APPN so the SMSC tries again later.
        """
        m = e.message
        self.stats["mo"] += 1
        try:
            await self.store.mo_received(self.name, m.source_addr, m.destination_addr, m.esm_class,
                                         m.data_coding, m.short_message)
        except Exception as err:
            log.error("smpp_mo_not_stored", route=self.name, source=phone.mask(m.source_addr), error=repr(err))
            connection.acknowledge(e.sequence, ESME_RX_T_APPN)
            return
        log.info("smpp_mo_received", route=self.name, source=phone.mask(m.source_addr))
        try:
            if self.on_mo is not None:
                await self.on_mo(self.name, m)
        finally:
            connection.acknowledge(e.sequence)

