"""An SMPP route: the queue of segments for one operator, fed to its bind.

The route turns stored messages into submit_sm segments (our own GSM 03.38 /
UCS-2 splitter and UDH), keeps the throughput cap, and turns the session's
events into store operations.  Segments that the operator did not confirm go
back to the front of the queue; nothing leaves the queue without an answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Callable, Collection, Sequence

import structlog

from ..ops import metrics
from .. import phone
from ..background import Background
from ..config import SmppRouteConfig
from ..model import FINAL, Status, UnknownReceiptState, receipt_status
# ESME_RX_T_APPN, "try again later": the deliver_sm answer when we could not store it
from ..smpp.pdu import ESME_RINVBNDSTS, ESME_RMSGQFUL, ESME_RTHROTTLED, ESME_RX_T_APPN, status_name
from ..smpp.receipts import ShortMessage
from ..smpp.connection import Connection, session_config_for
from ..smpp.segments import SegmentJob, build_segments
from ..smpp.events import (
    MessageReceived,
    QueryAnswered,
    QueryFailed,
    ReceiptReceived,
    SubmitAccepted,
    SubmitRejected,
    SubmitUnconfirmed,
)
from ..smpp.flow import FlowPolicy, Limits
from ..model import OpenMessage, ReceiptRules, Unreceipted
from ..store import Store, StoreUnavailable
from .throttle import SlidingWindowLimiter

log = structlog.get_logger(__name__)

TEMPORARY_RETRY_DELAY = 1.0  # an SMSC with a system error gets a breather before the same segment
# The operator meters arrivals: our coalesced writes and the network can bunch sends that
# left us a second apart, so the cap is kept over a slightly longer window.
CAP_SLACK = 0.05
# At most this many segments wait in memory; the rest of a backlog (a day-long operator
# outage is a million messages) stays in the store and is read back a page at a time as
# the queue drains, so the daemon's RSS does not grow with the backlog.
MEMORY_QUEUE = 20_000
REFILL_PAGE = 5_000
# How often to look for parts with no receipt (issue 14.8); shorter for short test validities.
RECEIPT_WATCH_INTERVAL = 60.0
# What each id-base reading means in the route's configuration (issue 14.6).
ID_BASE_ADVICE = {
    "hex": 'receipt_id_base = "hex" and resp_id_base = "dec"',
    "dec": 'receipt_id_base = "dec" and resp_id_base = "hex"',
}



class SmppRoute:
    """One operator: its queue of segments, its binds, its cap, and what comes back."""

    def __init__(self, cfg: SmppRouteConfig, store: Store) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.queue: deque[SegmentJob] = deque()
        self.limiter = SlidingWindowLimiter(cfg.throughput, 1.0 + CAP_SLACK)
        self.connections: list[Connection] = []
        modes = ("transmitter", "receiver") if cfg.bind_mode == "pair" else (cfg.bind_mode,)
        for _ in range(cfg.binds):
            for mode in modes:
                self.connections.append(Connection(
                    cfg.name, cfg.host, cfg.port, session_config_for(cfg, mode), self._on_events,
                    reconnect_min=cfg.reconnect_min, reconnect_max=cfg.reconnect_max,
                    bind_retry_min=cfg.bind_retry_min,
                ))
        self.connection = self.connections[0]  # the first bind, for `smppd status`
        self._senders = [c for c in self.connections if c.session_config.bind_mode != "receiver"]
        # ESME_RMSGQFUL pauses, ESME_RTHROTTLED cuts rate and window (smppd/smpp/flow.py)
        self.flow = self._flow_policy(cfg)
        self._limits = Limits(cfg.throughput, cfg.window, 0.0)  # the limits last applied
        # (row id, seq) -> (temporary refusals so far, time of the first): issue 14.5
        self._temporary: dict[tuple[int, int], tuple[int, float]] = {}
        self.rules = ReceiptRules(id_readings=cfg.receipt_id_base == "auto", multipart=cfg.multipart_receipts)
        metrics.RECEIPTS_UNMATCHED.labels(cfg.name)  # shown as 0 from the start: increase() sees the first
        self._base_warned: set[str] = set()  # the id-base readings already logged at warning level
        self._to_query: deque[Unreceipted] = deque()  # query_sm to send, paced like submits
        self._queried: dict[tuple[int, int], float] = {}  # part -> store time of its last query_sm
        self._inflight: dict[Any, SegmentJob] = {}  # by Submit.ref, awaiting submit_sm_resp
        self._wake = asyncio.Event()
        self._background = Background("smpp_route_task_failed", route=cfg.name)
        self._tasks = self._background.tasks
        self._spawn = self._background.spawn
        self._stopping = False
        # Business rules read MO texts (a STOP reply); awaited before the deliver_sm is acknowledged.
        self.on_mo: Callable[[str, ShortMessage], Awaitable[None]] | None = None
        self.memory_queue = MEMORY_QUEUE
        self._spilled = False  # open messages of this route are in the store but not in memory
        self._loaded_max = 0  # highest row id ever queued in memory
        self._dropped = 0  # enqueues left to the store while spilled
        self._refilling = False
        self.stats = {"submitted": 0, "accepted": 0, "rejected": 0, "requeued": 0, "throttled": 0,
                      "receipts": 0, "receipts_unmatched": 0, "receipts_unstored": 0, "mo": 0,
                      "no_receipt": 0, "queries": 0}

    # --- feeding ---------------------------------------------------------------

    def enqueue(self, message: OpenMessage) -> None:
        # A message newer than all in memory waits in the store while the queue is full, or
        # while older ones still do (order): _refill reads it back. Older ids (a hold
        # released) are never left behind, since a refill only reads ids above _loaded_max.
        if message.id > self._loaded_max:
            if self._spilled or len(self.queue) >= self.memory_queue:
                self._spilled = True
                self._dropped += 1
                self._wake.set()
                return
            self._loaded_max = message.id
        for job in build_segments(message, self.cfg):
            self.queue.append(job)
        self._wake.set()

    async def load_open(self) -> int:
        """Queue what the store says was never confirmed (start-up after a stop or crash).

        Only the first page of a large backlog is read now (a start with 100,000 queued
        takes as long as one with 20,000); the pump reads the rest as it goes.
        """
        messages = await self.store.open_messages(self.name, limit=self.memory_queue)
        for m in messages:
            self.enqueue(m)
        if len(messages) >= self.memory_queue:
            self._spilled = True
        return len(messages)

    async def _refill(self) -> None:
        """Read the next page of the backlog that waits in the store, oldest first."""
        try:
            dropped = self._dropped
            page = await self.store.open_messages(self.name, after_id=self._loaded_max, limit=REFILL_PAGE)
            for m in page:
                self._loaded_max = max(self._loaded_max, m.id)
                for job in build_segments(m, self.cfg):
                    self.queue.append(job)
            # Caught up only if the page was short and nothing was left to the store meanwhile
            # (a message committed after the SELECT has a higher id: the next page gets it).
            if len(page) < REFILL_PAGE and self._dropped == dropped:
                self._spilled = False
        finally:
            self._refilling = False
            self._wake.set()

    def _maybe_refill(self) -> None:
        if self._spilled and not self._refilling and len(self.queue) < self.memory_queue // 2:
            self._refilling = True
            self._spawn(self._refill())

    @property
    def depth(self) -> int:
        return len(self.queue)

    @property
    def bound(self) -> bool:
        return any(c.bound for c in self.connections)

    @property
    def inflight(self) -> int:
        """submit_sm awaiting their resp, over all binds (window occupancy)."""
        return len(self._inflight)

    @property
    def binds_made(self) -> int:
        """Successful binds since start, over all connections."""
        return sum(c.binds for c in self.connections)

    def busy_segments(self) -> set[tuple[int, int]]:
        """(row id, segment) this route holds in memory: `smppd retry` must not add them twice."""
        jobs = [*self.queue, *self._inflight.values()]
        return {(j.row_id, j.seq) for j in jobs}

    @staticmethod
    def _flow_policy(cfg: SmppRouteConfig) -> FlowPolicy:
        return FlowPolicy(cfg.throughput, cfg.window, pause_min=cfg.queue_full_pause,
                          pause_max=cfg.queue_full_pause_max, recovery=cfg.throttle_recovery)

    def retune(self, cfg: SmppRouteConfig) -> None:
        """A new throughput from a SIGHUP reload, without touching the binds."""
        self.cfg = cfg
        self.rules = ReceiptRules(id_readings=cfg.receipt_id_base == "auto", multipart=cfg.multipart_receipts)
        self.limiter = SlidingWindowLimiter(cfg.throughput, 1.0 + CAP_SLACK)
        self.flow.retune(cfg.throughput, cfg.window)
        self._limits = Limits(-1, -1, 0.0)  # applied afresh: the new limiter, a new window
        self._apply_limits(asyncio.get_running_loop().time())

    def status(self) -> dict[str, Any]:
        """What `smppd status` shows for this route."""
        now = asyncio.get_running_loop().time()
        limits = self.flow.limits(now)
        return {
            "bound": self.bound,
            "binds": sum(1 for c in self.connections if c.bound),
            "bind_failures": sum(c.bind_failures for c in self.connections),
            "queue": self.depth,
            "backlog_in_store": self._spilled,
            "inflight": len(self._inflight),
            "window": limits.window,
            "rate_cap": int(limits.rate) if limits.rate > 0 else None,
            "paused": limits.resume_at > now,
            **self.stats,
        }

    # --- running ---------------------------------------------------------------

    async def run(self) -> None:
        conn_tasks = [asyncio.create_task(c.run(), name=f"smpp-{self.name}-{i}")
                      for i, c in enumerate(self.connections)]
        watch = asyncio.create_task(self._receipt_watch(), name=f"smpp-{self.name}-receipts")
        try:
            await self._pump()
            # stop() unbinds each connection; their tasks end once the unbind is answered.
            await asyncio.gather(*conn_tasks, return_exceptions=True)
        finally:
            watch.cancel()
            for t in conn_tasks:
                t.cancel()

    def _free_sender(self) -> Connection | None:
        """The bound transmitter with a free window slot and the fewest submits in flight."""
        best = None
        for c in self._senders:
            if c.can_submit() and (best is None or c.outstanding < best.outstanding):
                best = c
        return best

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            self._maybe_refill()
            while (self.queue or self._to_query) and not self._stopping:
                now = loop.time()
                pause = self._apply_limits(now) - now
                if pause > 0:
                    loop.call_later(pause, self._wake.set)
                    break
                conn = self._free_sender()
                if conn is None:
                    break
                wait = self.limiter.delay()
                if wait > 0:
                    metrics.THROTTLE_EVENTS.labels(self.name, "throughput").inc()
                    await asyncio.sleep(wait)
                    continue
                if not self.queue:
                    self._send_query(conn, self._to_query.popleft())
                    continue
                job = self.queue.popleft()
                if self._spilled:
                    self._maybe_refill()
                try:
                    conn.submit(job.submit)
                except ValueError as e:  # the codec refused a field: no retry can fix it
                    self._spawn(self.store.segment_failed(job.row_id, job.seq, Status.FAILED, f"invalid: {e}"))
                    continue
                self._inflight[job.submit.ref] = job
                self.limiter.record()
                self.flow.sent(loop.time())
                self.stats["submitted"] += 1
                metrics.submit_sent(self.name, job.submit.ref)

    def _send_query(self, conn: Connection, part: Unreceipted) -> None:
        """query_sm for a part with no receipt, paced by the same cap as submits."""
        self.limiter.record()
        self.stats["queries"] += 1
        self._queried[(part.row_id, part.seq)] = self.store.clock()
        sender = part.sender
        numeric = sender.lstrip("+").isdigit()
        ton, npi = (self.cfg.numeric_ton, self.cfg.numeric_npi) if numeric else (self.cfg.alpha_ton, self.cfg.alpha_npi)
        try:
            conn.query(("query", part), self._resp_spelling(part.smsc_id), sender.lstrip("+") if numeric else sender,
                       ton, npi)
        except (ValueError, RuntimeError) as e:
            log.warning("smpp_query_sm_not_sent", route=self.name, message=part.row_id, error=str(e))

    def _resp_spelling(self, stored: str) -> str:
        """The id as the SMSC spelt it in the resp, from our canonical spelling."""
        if self.cfg.resp_id_base == "hex" or (self.cfg.resp_id_base is None and self.cfg.receipt_id_base == "hex"):
            return format(int(stored), "X")
        return stored

    async def _receipt_watch(self) -> None:
        """Parts accepted with no receipt: query_sm after query_sm_delay (when the route has
        query_sm = true), undelivered "no receipt" after validity (issue 14.8)."""
        cfg = self.cfg
        interval = min(RECEIPT_WATCH_INTERVAL, cfg.validity / 10)
        if cfg.query_sm:
            interval = min(interval, cfg.query_sm_delay / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._receipt_watch_once()
            except Exception as e:  # the store is closing, or busy: the next round tries again
                log.warning("smpp_receipt_watch_failed", route=self.name, error=repr(e))

    async def _receipt_watch_once(self) -> None:
        cfg = self.cfg
        now = self.store.clock()
        stale = await self.store.unreceipted(self.name, now - cfg.validity)
        if stale:
            ended = await self.store.no_receipt([(u.row_id, u.seq) for u in stale])
            self.stats["no_receipt"] += ended
            if ended:
                log.warning("smpp_no_receipt", route=self.name, parts=ended, validity=cfg.validity)
            for u in stale:
                self._queried.pop((u.row_id, u.seq), None)
        if cfg.query_sm:
            waiting = {(q.row_id, q.seq) for q in self._to_query}
            for u in await self.store.unreceipted(self.name, now - cfg.query_sm_delay):
                key = (u.row_id, u.seq)
                if key not in waiting and self._queried.get(key, float("-inf")) <= now - cfg.query_sm_delay:
                    self._to_query.append(u)
            if self._to_query:
                self._wake.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work, let outstanding resps arrive (bounded), unbind every bind.

        Whatever is still unanswered stays open in the store and is sent at the next start.
        """
        self._stopping = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._inflight and loop.time() < deadline and self.bound:
            await asyncio.sleep(0.02)
        await asyncio.gather(*(c.stop(max(0.1, deadline - loop.time())) for c in self.connections))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(0.1, deadline - loop.time()))

    # --- flow control ------------------------------------------------------------

    def _apply_limits(self, now: float) -> float:
        """Hand the policy's current rate and window to the limiter and the binds; returns
        when the route may submit again (a queue-full pause), <= now when it may now."""
        limits = self.flow.limits(now)
        if (limits.rate, limits.window) != (self._limits.rate, self._limits.window):
            window = max(1, limits.window)
            for c in self._senders:
                c.set_window(window)
            self.limiter.set_cap(max(1, int(limits.rate)) if limits.rate > 0 else 0)
        self._limits = limits
        return limits.resume_at

    # --- session events --------------------------------------------------------

    def _on_events(self, connection: Connection, events: Sequence[object]) -> None:
        """The events of one read. Its resps and its receipts are stored as one operation
        each, resps first: a receipt in the same read as its resp then finds its segment."""
        accepted: list[tuple[int, int, str]] = []
        receipts: list[ReceiptReceived] = []
        for e in events:
            if isinstance(e, SubmitAccepted):
                metrics.submit_answered(self.name, e.ref)
                job = self._inflight.pop(e.ref, None)
                if job:
                    self.stats["accepted"] += 1
                    self.flow.accepted(asyncio.get_running_loop().time())
                    if self._temporary:
                        self._temporary.pop((job.row_id, job.seq), None)
                    accepted.append((job.row_id, job.seq, e.smsc_id))
            elif isinstance(e, ReceiptReceived):  # the other event of every message
                receipts.append(e)
            elif isinstance(e, SubmitRejected):
                self._rejected(e)
            elif isinstance(e, SubmitUnconfirmed):
                job = self._inflight.pop(e.ref, None)
                if job:
                    self.stats["requeued"] += 1
                    self.queue.appendleft(job)
            elif isinstance(e, MessageReceived):
                self._spawn(self._mo(connection, e))
            elif isinstance(e, QueryAnswered):
                self._query_answered(e)
            elif isinstance(e, QueryFailed):
                part = e.ref[1]
                log.info("smpp_query_sm_failed", route=self.name, message=part.row_id, seq=part.seq,
                         status=status_name(e.status) if e.status else "timeout")
        if accepted:
            self._background.track(self.store.segments_accepted(accepted, self.rules))
        if receipts:
            self._receipts(connection, receipts)
        self._wake.set()

    def _rejected(self, e: SubmitRejected) -> None:
        metrics.submit_answered(self.name, e.ref)
        job = self._inflight.pop(e.ref, None)
        if job is None:
            return
        reason = status_name(e.status)
        now = asyncio.get_running_loop().time()
        if e.status == ESME_RMSGQFUL:
            # "Queue full": pause and resume at the rate we had (flow.py); the same part
            # goes first once the pause ends. Not counted against temporary_retries: it says
            # nothing about this part.
            self._count_flow(reason)
            before = self.flow.resume_at
            resume = self.flow.queue_full(now)
            if resume != before:
                log.info("smpp_queue_full_pause", route=self.name, seconds=round(resume - now, 3))
            self.queue.appendleft(job)
            return
        if e.status == ESME_RTHROTTLED:
            self._count_flow(reason)
            if self.flow.throttled(now):
                limits = self.flow.limits(now)
                log.warning("smpp_throttled", route=self.name, window=limits.window, rate=round(limits.rate, 1))
            self.queue.appendleft(job)
            return
        if e.temporary and e.status == ESME_RINVBNDSTS:
            self.stats["requeued"] += 1
            self.queue.appendleft(job)  # the session ends; the rebind's backoff is the delay
            return
        if e.temporary:
            key = (job.row_id, job.seq)
            count, first = self._temporary.get(key, (0, now))
            count += 1
            if count <= self.cfg.temporary_retries and now - first < self.cfg.temporary_retry_age:
                self._temporary[key] = (count, first)
                self.stats["requeued"] += 1
                metrics.THROTTLE_EVENTS.labels(self.name, reason).inc()
                log.info("smpp_submit_temporary_error", route=self.name, message=job.row_id, b24_id=job.b24_id,
                         seq=job.seq, status=reason, attempt=count)
                self._spawn(self._requeue_later(job, TEMPORARY_RETRY_DELAY))
                return
            # issue 14.5: bounded by count and age, then the part fails with the code as reason
            self._temporary.pop(key, None)
            log.warning("smpp_submit_retries_exhausted", route=self.name, message=job.row_id, b24_id=job.b24_id,
                        seq=job.seq, status=reason, refusals=count, seconds=round(now - first, 1))
        self.stats["rejected"] += 1
        log.warning("smpp_submit_rejected", route=self.name, message=job.row_id, b24_id=job.b24_id,
                    seq=job.seq, status=reason)
        self._spawn(self.store.segment_failed(job.row_id, job.seq, Status.FAILED, reason))

    def _count_flow(self, reason: str) -> None:
        self.stats["requeued"] += 1
        self.stats["throttled"] += 1
        metrics.THROTTLE_EVENTS.labels(self.name, reason).inc()

    def _query_answered(self, e: QueryAnswered) -> None:
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

    async def _requeue_later(self, job: SegmentJob, delay: float) -> None:
        await asyncio.sleep(delay)
        self.queue.appendleft(job)
        self._wake.set()

    def _receipts(self, connection: Connection, events: list[ReceiptReceived]) -> None:
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

    # --- the Route protocol (routes/base.py), issue 14 item 10 --------------------
    # Thin and self-contained on purpose: what the daemon, reload, admin and metrics
    # need, read from the state above without changing how the route works.

    kind = "smpp"

    @property
    def up(self) -> bool:
        return self.bound

    @property
    def window_size(self) -> int | None:
        return self.cfg.window

    @property
    def trouble(self) -> str | None:
        if self.bound:
            return None
        failures = sum(c.bind_failures for c in self.connections)
        return f"no bind to {self.cfg.host}:{self.cfg.port}" + (f" ({failures} failed binds)" if failures else "")

    async def resume(self) -> int:
        """Queue the open messages of the store that this route does not already hold."""
        held = {mid for mid, _ in self.busy_segments()}
        resumed = 0
        for m in await self.store.open_messages(self.name):
            if m.id not in held:
                self.enqueue(m)
                resumed += 1
        return resumed

    def cancel(self, row_ids: Collection[int]) -> int:
        """Drop the queued segments of these messages; submit_sm on the wire get their resp."""
        ids = set(row_ids)
        kept = [j for j in self.queue if j.row_id not in ids]
        dropped = len(self.queue) - len(kept)
        if dropped:
            self.queue.clear()
            self.queue.extend(kept)
        return dropped

    async def _mo(self, connection: Connection, e: MessageReceived) -> None:
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

