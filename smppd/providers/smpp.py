"""An SMPP route: the queue of segments for one operator, fed to its bind.

The route turns stored messages into submit_sm segments (our own GSM 03.38 /
UCS-2 splitter and UDH), keeps the throughput cap, and turns the session's
events into store operations.  Segments that the operator did not confirm go
back to the front of the queue; nothing leaves the queue without an answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Coroutine, Sequence

import structlog

from .. import metrics, phone, text
from ..config import SmppRouteConfig
from ..model import Status, UnknownReceiptState, receipt_status
from ..smpp import codec
from ..smpp.connection import Connection, session_config_for
from ..smpp.session import (
    MessageReceived,
    ReceiptReceived,
    Submit,
    SubmitAccepted,
    SubmitRejected,
    SubmitUnconfirmed,
)
from ..store import OpenMessage, Store
from ..throttle import SlidingWindowLimiter

log = structlog.get_logger(__name__)

ALPHANUMERIC_TON, ALPHANUMERIC_NPI = 5, 0
INTERNATIONAL_TON, E164_NPI = 1, 1
TEMPORARY_RETRY_DELAY = 1.0  # a throttled or busy SMSC gets a breather before the same segment


@dataclass(frozen=True)
class SegmentJob:
    message_id: int
    seq: int
    submit: Submit


def build_segments(message: OpenMessage, *, registered_delivery: int = 1) -> list[SegmentJob]:
    """The submit_sm of each open segment of a message.

    The concatenation reference comes from our message id, so a segment resent
    after a restart carries the same reference as its already-delivered
    siblings and the handset can still join them.
    """
    encoded = text.encode(message.text)
    total = encoded.segments
    sender = message.sender
    numeric = sender.lstrip("+").isdigit()
    ref = message.id % 256
    jobs = []
    for seq in message.open_segments:
        body = encoded.parts[seq]
        esm_class = 0
        if total > 1:
            body = text.udh_concat(ref, total, seq + 1) + body
            esm_class = 0x40
        jobs.append(
            SegmentJob(
                message.id,
                seq,
                Submit(
                    ref=(message.id, seq),
                    source_addr=sender.lstrip("+") if numeric else sender,
                    source_addr_ton=INTERNATIONAL_TON if numeric else ALPHANUMERIC_TON,
                    source_addr_npi=E164_NPI if numeric else ALPHANUMERIC_NPI,
                    destination_addr=phone.digits(message.phone),
                    esm_class=esm_class,
                    data_coding=encoded.data_coding,
                    registered_delivery=registered_delivery,
                    short_message=body,
                ),
            )
        )
    return jobs


class SmppRoute:
    def __init__(self, cfg: SmppRouteConfig, store: Store) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.queue: deque[SegmentJob] = deque()
        self.limiter = SlidingWindowLimiter(cfg.throughput)
        self.connection = Connection(
            cfg.name, cfg.host, cfg.port, session_config_for(cfg), self._on_events,
            reconnect_min=cfg.reconnect_min, reconnect_max=cfg.reconnect_max,
        )
        self._inflight: dict[Any, SegmentJob] = {}  # by Submit.ref, awaiting submit_sm_resp
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.stats = {"submitted": 0, "accepted": 0, "rejected": 0, "requeued": 0,
                      "receipts": 0, "receipts_unmatched": 0, "mo": 0}

    # --- feeding ---------------------------------------------------------------

    def enqueue(self, message: OpenMessage) -> None:
        for job in build_segments(message, registered_delivery=self.cfg.registered_delivery):
            self.queue.append(job)
        self._wake.set()

    async def load_open(self) -> int:
        """Queue what the store says was never confirmed (start-up after a stop or crash)."""
        messages = await self.store.open_messages(self.name)
        for m in messages:
            self.enqueue(m)
        return len(messages)

    @property
    def depth(self) -> int:
        return len(self.queue)

    # --- running ---------------------------------------------------------------

    async def run(self) -> None:
        conn_task = asyncio.create_task(self.connection.run(), name=f"smpp-{self.name}")
        try:
            await self._pump()
        finally:
            conn_task.cancel()

    async def _pump(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while self.queue and self.connection.can_submit() and not self._stopping:
                wait = self.limiter.delay()
                if wait > 0:
                    metrics.THROTTLE_EVENTS.labels(self.name, "throughput").inc()
                    await asyncio.sleep(wait)
                    continue
                job = self.queue.popleft()
                try:
                    self.connection.submit(job.submit)
                except ValueError as e:  # the codec refused a field: no retry can fix it
                    self._spawn(self.store.segment_failed(job.message_id, job.seq, Status.FAILED, f"invalid: {e}"))
                    continue
                self._inflight[job.submit.ref] = job
                self.limiter.record()
                self.stats["submitted"] += 1
                metrics.submit_sent(self.name, job.submit.ref)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work, let outstanding resps arrive (bounded), unbind."""
        self._stopping = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._inflight and loop.time() < deadline and self.connection.bound:
            await asyncio.sleep(0.02)
        await self.connection.stop(max(0.1, deadline - loop.time()))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(0.1, deadline - loop.time()))

    # --- session events --------------------------------------------------------

    def _on_events(self, connection: Connection, events: Sequence[object]) -> None:
        for e in events:
            if isinstance(e, SubmitAccepted):
                metrics.submit_answered(self.name, e.ref)
                job = self._inflight.pop(e.ref, None)
                if job:
                    self.stats["accepted"] += 1
                    self._spawn(self.store.segment_accepted(job.message_id, job.seq, e.message_id))
            elif isinstance(e, SubmitRejected):
                self._rejected(e)
            elif isinstance(e, SubmitUnconfirmed):
                job = self._inflight.pop(e.ref, None)
                if job:
                    self.stats["requeued"] += 1
                    self.queue.appendleft(job)
            elif isinstance(e, ReceiptReceived):
                self._spawn(self._receipt(connection, e))
            elif isinstance(e, MessageReceived):
                self.stats["mo"] += 1
                log.info("smpp_mo_received", route=self.name, source=phone.mask(e.message.source_addr))
                connection.acknowledge(e.sequence)
        self._wake.set()

    def _rejected(self, e: SubmitRejected) -> None:
        metrics.submit_answered(self.name, e.ref)
        job = self._inflight.pop(e.ref, None)
        if job is None:
            return
        reason = codec.status_name(e.status)
        if e.temporary:
            self.stats["requeued"] += 1
            metrics.THROTTLE_EVENTS.labels(self.name, reason).inc()
            log.info("smpp_submit_temporary_error", route=self.name, message=job.message_id, status=reason)
            self._spawn(self._requeue_later(job, TEMPORARY_RETRY_DELAY))
            return
        self.stats["rejected"] += 1
        log.warning("smpp_submit_rejected", route=self.name, message=job.message_id, status=reason)
        self._spawn(self.store.segment_failed(job.message_id, job.seq, Status.FAILED, reason))

    async def _requeue_later(self, job: SegmentJob, delay: float) -> None:
        await asyncio.sleep(delay)
        self.queue.appendleft(job)
        self._wake.set()

    async def _receipt(self, connection: Connection, e: ReceiptReceived) -> None:
        """Store the receipt, then answer deliver_sm: an unanswered one is redelivered."""
        r = e.receipt
        self.stats["receipts"] += 1
        try:
            status = receipt_status(r.state, r.stat)
        except UnknownReceiptState as err:
            log.warning("smpp_receipt_unknown_state", route=self.name, provider_id=r.message_id, error=str(err))
            connection.acknowledge(e.sequence)
            return
        detail = r.stat or f"message_state={r.state}"
        if r.error and r.error.strip("0"):
            detail += f" err:{r.error}"
        matched = await self.store.apply_receipt(self.name, r.message_id, status, detail)
        if not matched:
            self.stats["receipts_unmatched"] += 1
            log.info("smpp_receipt_before_resp", route=self.name, provider_id=r.message_id)
        connection.acknowledge(e.sequence)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("smpp_route_task_failed", route=self.name, error=repr(task.exception()))
