"""An SMPP route: the queue of segments for one operator, fed to its binds.

The asyncio shell of the route: it turns stored messages into submit_sm segments
(our own GSM 03.38 / UCS-2 splitter and UDH), feeds them to the binds, and hands
every answer to its policies, then does what they decide. The rules themselves
are sans-I/O and tested without sockets: the cap, queue-full pauses, throttle cuts
and the bounded requeue of temporary errors in ``policy/submit.py``, which
messages wait in memory and which in the store in ``policy/backlog.py``.
Receipts, replies and query_sm answers are ``smpp_incoming.py``. Segments that
the operator did not confirm go back to the front of the queue; nothing leaves
the queue without an answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Callable, Collection, Hashable, Sequence

import structlog

from ..ops import metrics
from ..background import Background
from ..config import SmppRouteConfig
from ..model import OpenMessage, Status, Unreceipted
from ..smpp.pdu import status_name
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
from ..store import Store
from .policy.backlog import Backlog, Refill
from .policy.submit import Paused, Requeue, RetryLater, SlowedDown, SubmitPolicy
from .smpp_incoming import SmppIncoming

log = structlog.get_logger(__name__)

# How often to look for parts with no receipt (issue 14.8); shorter for short test validities.
RECEIPT_WATCH_INTERVAL = 60.0


class SmppRoute:
    """One operator: its queue of segments, its binds, its cap, and what comes back."""

    def __init__(self, cfg: SmppRouteConfig, store: Store) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.queue: deque[SegmentJob] = deque()
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
        # the cap, queue-full pauses, throttle cuts, bounded requeue: routes/policy/submit.py
        self.policy = SubmitPolicy.for_route(cfg)
        self._window = cfg.window  # the window the binds have
        # which open messages wait in memory, which in the store: routes/policy/backlog.py
        self.backlog = Backlog()
        metrics.RECEIPTS_UNMATCHED.labels(cfg.name)  # shown as 0 from the start: increase() sees the first
        self._to_query: deque[Unreceipted] = deque()  # query_sm to send, paced like submits
        self._queried: dict[tuple[int, int], float] = {}  # part -> store time of its last query_sm
        self._inflight: dict[Hashable, SegmentJob] = {}  # by Submit.ref, awaiting submit_sm_resp
        self._wake = asyncio.Event()
        self._background = Background("smpp_route_task_failed", route=cfg.name)
        self._tasks = self._background.tasks
        self._spawn = self._background.spawn
        self._stopping = False
        self.stats = {"submitted": 0, "accepted": 0, "rejected": 0, "requeued": 0, "throttled": 0,
                      "receipts": 0, "receipts_unmatched": 0, "receipts_unstored": 0, "mo": 0,
                      "no_receipt": 0, "queries": 0}
        # receipts, MO and query_sm answers: routes/smpp_incoming.py
        self.incoming = SmppIncoming(cfg, store, self.stats, self._background)

    # --- feeding ---------------------------------------------------------------

    def enqueue(self, message: OpenMessage) -> None:
        # While the queue is full, or older ones still wait in the store, a new message
        # waits there too (it is committed already) and _refill reads it back in order.
        if self.backlog.admit(message.id, len(self.queue)):
            self.queue.extend(build_segments(message, self.cfg))
        self._wake.set()

    async def load_open(self) -> int:
        """Queue what the store says was never confirmed (start-up after a stop or crash).

        Only the first page of a large backlog is read now (a start with 100,000 queued
        takes as long as one with 20,000); the pump reads the rest as it goes.
        """
        messages = await self.store.open_messages(self.name, limit=self.backlog.memory)
        for m in messages:
            self.enqueue(m)
        self.backlog.loaded(len(messages))
        return len(messages)

    async def _refill(self, request: Refill) -> None:
        """Read the next page of the backlog that waits in the store, oldest first."""
        try:
            page = await self.store.open_messages(self.name, after_id=request.after_id, limit=request.limit)
        except BaseException:
            self.backlog.failed()  # the next drain reads it again
            self._wake.set()
            raise
        for m in page:
            self.queue.extend(build_segments(m, self.cfg))
        self.backlog.refilled(request, [m.id for m in page])
        self._wake.set()

    def _maybe_refill(self) -> None:
        request = self.backlog.refill(len(self.queue))
        if request is not None:
            self._spawn(self._refill(request))

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

    def retune(self, cfg: SmppRouteConfig) -> None:
        """A new throughput from a SIGHUP reload, without touching the binds."""
        self.cfg = cfg
        self.incoming.rules = self.incoming.rules_for(cfg)
        self.policy.retune(cfg)
        self._window = -1  # applied afresh: the new cap, a new window
        self._apply_limits(asyncio.get_running_loop().time())

    def status(self) -> dict[str, Any]:
        """What `smppd status` shows for this route."""
        now = asyncio.get_running_loop().time()
        limits = self.policy.limits(now)
        return {
            "bound": self.bound,
            "binds": sum(1 for c in self.connections if c.bound),
            "bind_failures": sum(c.bind_failures for c in self.connections),
            "queue": self.depth,
            "backlog_in_store": self.backlog.spilled,
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
        policy = self.policy
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
                wait = policy.cap_delay(now)
                if wait > 0:
                    metrics.THROTTLE_EVENTS.labels(self.name, "throughput").inc()
                    await asyncio.sleep(wait)
                    continue
                if not self.queue:
                    self._send_query(conn, self._to_query.popleft(), now)
                    continue
                job = self.queue.popleft()
                if self.backlog.spilled:
                    self._maybe_refill()
                try:
                    conn.submit(job.submit)
                except ValueError as e:  # the codec refused a field: no retry can fix it
                    self._spawn(self.store.segment_failed(job.row_id, job.seq, Status.FAILED, f"invalid: {e}"))
                    continue
                self._inflight[job.submit.ref] = job
                policy.sent(now)
                self.stats["submitted"] += 1
                metrics.submit_sent(self.name, job.submit.ref)

    def _send_query(self, conn: Connection, part: Unreceipted, now: float) -> None:
        """query_sm for a part with no receipt, paced by the same cap as submits."""
        self.policy.queried(now)
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
        """Hand the policy's current window to the binds; returns when the route may submit
        again (a queue-full pause, a throttle's breather), <= now when it may now."""
        resume = self.policy.resume_at(now)
        if self.policy.window != self._window:
            self._window = self.policy.window
            for c in self._senders:
                c.set_window(self._window)
        return resume

    # --- session events --------------------------------------------------------

    def _on_events(self, connection: Connection, events: Sequence[object]) -> None:
        """The events of one read. Its resps and its receipts are stored as one operation
        each, resps first: a receipt in the same read as its resp then finds its segment."""
        accepted: list[tuple[int, int, str]] = []
        receipts: list[ReceiptReceived] = []
        now = asyncio.get_running_loop().time()
        for e in events:
            if isinstance(e, SubmitAccepted):
                metrics.submit_answered(self.name, e.ref)
                job = self._inflight.pop(e.ref, None)
                if job:
                    self.stats["accepted"] += 1
                    self.policy.accepted(job.row_id, job.seq, now)
                    accepted.append((job.row_id, job.seq, e.smsc_id))
            elif isinstance(e, ReceiptReceived):  # the other event of every message
                receipts.append(e)
            elif isinstance(e, SubmitRejected):
                self._rejected(e, now)
            elif isinstance(e, SubmitUnconfirmed):
                job = self._inflight.pop(e.ref, None)
                if job:
                    self.stats["requeued"] += 1
                    self.queue.appendleft(job)
            elif isinstance(e, MessageReceived):
                self._spawn(self.incoming.mo(connection, e))
            elif isinstance(e, QueryAnswered):
                self.incoming.query_answered(e)
            elif isinstance(e, QueryFailed):
                part = e.ref[1]
                log.info("smpp_query_sm_failed", route=self.name, message=part.row_id, seq=part.seq,
                         status=status_name(e.status) if e.status else "timeout")
        if accepted:
            self._background.track(self.store.segments_accepted(accepted, self.incoming.rules))
        if receipts:
            self.incoming.receipts(connection, receipts)
        self._wake.set()

    def _rejected(self, e: SubmitRejected, now: float) -> None:
        """Carry out the policy's verdict on a refused part (routes/policy/submit.py)."""
        metrics.submit_answered(self.name, e.ref)
        job = self._inflight.pop(e.ref, None)
        if job is None:
            return
        reason = status_name(e.status)
        verdict = self.policy.refused(job.row_id, job.seq, e.status, e.temporary, now)
        if isinstance(verdict, Paused):  # the same part goes first once the pause ends
            self._count_flow(reason)
            if verdict.new:
                log.info("smpp_queue_full_pause", route=self.name, seconds=round(verdict.until - now, 3))
            self.queue.appendleft(job)
        elif isinstance(verdict, SlowedDown):
            self._count_flow(reason)
            if verdict.cut is not None:
                log.warning("smpp_throttled", route=self.name, window=verdict.cut.window,
                            rate=round(verdict.cut.rate, 1))
            self.queue.appendleft(job)
        elif isinstance(verdict, Requeue):
            self.stats["requeued"] += 1
            self.queue.appendleft(job)
        elif isinstance(verdict, RetryLater):
            self.stats["requeued"] += 1
            metrics.THROTTLE_EVENTS.labels(self.name, reason).inc()
            log.info("smpp_submit_temporary_error", route=self.name, message=job.row_id, b24_id=job.b24_id,
                     seq=job.seq, status=reason, attempt=verdict.attempt)
            self._spawn(self._requeue_later(job, verdict.at - now))
        else:
            if verdict.refusals:
                log.warning("smpp_submit_retries_exhausted", route=self.name, message=job.row_id,
                            b24_id=job.b24_id, seq=job.seq, status=reason, refusals=verdict.refusals,
                            seconds=round(verdict.seconds, 1))
            self.stats["rejected"] += 1
            log.warning("smpp_submit_rejected", route=self.name, message=job.row_id, b24_id=job.b24_id,
                        seq=job.seq, status=reason)
            self._spawn(self.store.segment_failed(job.row_id, job.seq, Status.FAILED, reason))

    def _count_flow(self, reason: str) -> None:
        self.stats["requeued"] += 1
        self.stats["throttled"] += 1
        metrics.THROTTLE_EVENTS.labels(self.name, reason).inc()

    async def _requeue_later(self, job: SegmentJob, delay: float) -> None:
        await asyncio.sleep(delay)
        self.queue.appendleft(job)
        self._wake.set()

    @property
    def on_mo(self) -> Callable[[str, ShortMessage], Awaitable[None]] | None:
        """Hears replies (a STOP) once stored; awaited before the deliver_sm is answered."""
        return self.incoming.on_mo

    @on_mo.setter
    def on_mo(self, hook: Callable[[str, ShortMessage], Awaitable[None]] | None) -> None:
        self.incoming.on_mo = hook

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
        self.policy.forget(ids)
        kept = [j for j in self.queue if j.row_id not in ids]
        dropped = len(self.queue) - len(kept)
        if dropped:
            self.queue.clear()
            self.queue.extend(kept)
        return dropped
