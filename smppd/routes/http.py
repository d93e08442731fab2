"""What every HTTP provider route shares: batching, rate, retries, polling.

An HTTP route implements ``base.Route``, like ``SmppRoute``, so the daemon
does not care which kind a CODE goes out on.  The provider modules (``smsru``,
``smsc``) only say how one batch is sent, how a status is asked for and how a
callback is read; the rules that keep "nothing accepted is lost" and "nothing
sent twice when the provider took it" live here once:

* a batch that got no answer because the request never reached the provider
  (connection refused, HTTP 5xx) is retried with backoff;
* a batch whose request may have reached the provider (timeout, dropped
  connection, unreadable answer) is *ambiguous*: the route asks the provider
  whether it has it (``confirm``), for as long as asking fails, before
  resending; a provider that cannot be asked (SMS.ru has no lookup without its
  id) resends, at-least-once as DESIGN.md decides, and counts it;
* "duplicate request" (SMSC error 9) means the provider has it: asked, never
  resent; a message a callback finished or an admin cancelled is never resent.
  These rules are ``policy.resend.ResendPolicy`` (sans-I/O); this module
  carries out its decisions;
* a message leaves memory only when the store has its outcome; what is in
  memory at a crash is still ``queued`` in the store and is reloaded.

Store mapping: one SMSC id per message, on segment 0; every segment row
of the message moves with it (``Store.provider_accepted``).

Grouping into requests is ``policy.batch.Batcher``, the request rate
``policy.cap``; the transport and what its failures mean, ``smppd.http_client``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Collection, Mapping, Sequence

import aiohttp
import structlog

from ..background import Background
from ..config import HttpRouteConfig
from ..http_client import Ambiguous, Unavailable
from ..model import FINAL, OpenMessage, PollItem, Status
from ..store import Store
from .provider_client import ProviderClient
from .answers import Accepted, Duplicate, DuplicateRequest, Outcome, ProviderError, Refused, Retry
from .policy.batch import Batch, Batcher, Job
from .policy.cap import SlidingWindowLimiter
from .policy.resend import Ask, Keep, Resend, ResendPolicy

log = structlog.get_logger(__name__)


class BadCallback(ValueError):
    """A callback we cannot read: answered 400, logged, nothing applied.

    ``field`` names the form field at fault, so the provider's support (or
    whoever reads our answer) is told which one, as every door's error does.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ForgedCallback(ValueError):
    """A callback whose signature does not match: answered 403, naming the field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class HttpRoute:
    """The asyncio shell shared by SMS.ru and SMSC routes.  Subclasses fill in
    ``submit``, ``confirm``, ``poll`` and ``callback``."""

    kind = "http"
    can_confirm = False  # True when confirm() can ask the provider about a request

    def __init__(self, cfg: HttpRouteConfig, store: Store, http: aiohttp.ClientSession | None = None,
                 *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.store = store
        self.client = ProviderClient(cfg, http)  # the provider's URL and its POST: provider_client.py
        self.monotonic = monotonic
        self.batcher = Batcher(cfg.batch_size, cfg.batch_interval)
        self.limiter = SlidingWindowLimiter(cfg.rate)
        self.rate_sleep = asyncio.sleep  # replaced with the clock in tests
        self._slots = asyncio.Semaphore(cfg.concurrency)
        self._wake = asyncio.Event()
        self._poll_wake = asyncio.Event()
        self._background = Background("http_route_task_failed", route=cfg.name)
        self._tasks = self._background.tasks
        self._spawn = self._background.spawn
        self._inflight = 0
        self._on_wire: list[Batch] = []  # batches being sent, for busy_segments()
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._trouble: str | None = None  # why the last request got no usable answer; None: up
        self.policy = ResendPolicy(can_ask=self.can_confirm, retry_min=cfg.retry_min, retry_max=cfg.retry_max)
        self.stats: dict[str, int] = {
            "requests": 0, "accepted": 0, "refused": 0, "retries": 0, "ambiguous": 0,
            "ambiguous_resent": 0, "account_errors": 0, "callbacks": 0, "callbacks_rejected": 0,
            "polled": 0, "poll_given_up": 0, "receipts_unmatched": 0, "unknown_status": 0, "duplicates": 0,
        }

    # --- the route interface ---------------------------------------------------

    def enqueue(self, message: OpenMessage) -> None:
        self.add_job(Job(message, self.first_channel()))

    def add_job(self, job: Job) -> None:
        if self.policy.settled(job.message.id):  # a retry timer of a cancelled or finished message
            return
        self.batcher.add(job, self.monotonic())
        self._wake.set()

    def first_channel(self) -> str:
        return "sms"

    async def load_open(self) -> int:
        return await self._load_open(skip=set())

    async def _load_open(self, skip: set[int]) -> int:
        messages = [m for m in await self.store.open_messages(self.name) if m.id not in skip]
        for m in messages:
            self.enqueue(m)
        return len(messages)

    @property
    def depth(self) -> int:
        return len(self.batcher) + self._inflight

    @property
    def inflight(self) -> int:
        """Messages in requests on the wire."""
        return self._inflight

    def busy_segments(self) -> set[tuple[int, int]]:
        """(row id, segment) this route holds in memory: `smppd retry` must not add them twice."""
        jobs = [j for b in self._on_wire for j in b.jobs] + self.batcher.jobs()
        return {(j.message.id, seq) for j in jobs for seq in j.message.open_segments}

    async def run(self) -> None:
        poller = asyncio.create_task(self._poll_loop(), name=f"poll-{self.name}")
        try:
            await self._pump()
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop sending; let requests on the wire finish (bounded).  Jobs still
        batched stay ``queued`` in the store and are reloaded at start."""
        self._stopping = True
        self._stop_event.set()  # backoff and retry timers end now; their messages stay queued in the store
        self._wake.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for t in list(self._tasks):
            t.cancel()
        await self.close()

    async def close(self) -> None:
        await self.client.close()

    # --- the Route protocol (routes/base.py) ------------------------------------

    @property
    def up(self) -> bool:
        return self._trouble is None

    @property
    def trouble(self) -> str | None:
        return self._trouble

    @property
    def binds_made(self) -> int | None:
        return None

    @property
    def window_size(self) -> int | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"queue": self.depth, "inflight": self._inflight, "concurrency": self.cfg.concurrency, **self.stats}

    def retune(self, cfg: HttpRouteConfig) -> None:
        """A new request rate from a SIGHUP reload; requests on the wire are untouched."""
        self.cfg = cfg
        self.client.cfg = cfg
        self.limiter = SlidingWindowLimiter(cfg.rate)

    async def resume(self) -> int:
        return await self._load_open(skip={mid for mid, _ in self.busy_segments()})

    def cancel(self, row_ids: Collection[int]) -> int:
        self.policy.settle(row_ids)
        return self.batcher.remove(set(row_ids))

    # --- provider specifics ----------------------------------------------------

    async def submit(self, batch: Batch) -> dict[int, Outcome]:
        """Send one batch; an outcome per row id.  Raises Unavailable,
        Ambiguous or ProviderError."""
        raise NotImplementedError

    async def confirm(self, batch: Batch) -> dict[int, Outcome] | None:
        """After Ambiguous: which of the batch the provider has.  None when the
        provider cannot be asked; the batch is then resent."""
        return None

    async def poll(self, items: Sequence[PollItem]) -> dict[int, tuple[int, Status | None]]:
        """The provider's code and our status (None: not final / unknown) per row id."""
        raise NotImplementedError

    async def callback(self, form: Sequence[tuple[str, str]]) -> str:
        """Apply a status callback; the body to answer.  Raises BadCallback / ForgedCallback."""
        raise NotImplementedError

    def unknown_receipts(self) -> dict[str, Any]:
        """How many callbacks for ids not known yet the store keeps for this route, and how long."""
        return {"pending_max": self.cfg.unknown_receipts_max, "pending_ttl": self.cfg.unknown_receipts_ttl}

    async def accepted(self, job: Job, smsc_id: str) -> None:
        await self.store.provider_accepted(job.message.id, smsc_id,
                                           poll_at=self.store.clock() + self.cfg.poll_after,
                                           channel=job.channel, pending_ttl=self.cfg.unknown_receipts_ttl)

    async def polled(self, item: PollItem, code: int, status: Status | None) -> bool:
        """Apply one poll answer; True when the message needs no more polling."""
        if status is None:
            return False
        await self.receipt(item.smsc_id, status, f"{self.kind} {code} (polled)", keep_pending=False)
        return True

    async def receipt(self, smsc_id: str, status: Status, detail: str, *, keep_pending: bool = True) -> int | None:
        """Apply a callback's or poll's status; a final one settles the message for good:
        whatever this route still holds of it (a resend timer, a doubt) never sends it again."""
        mid = await self.store.provider_receipt(self.name, smsc_id, status, detail, keep_pending=keep_pending,
                                                **self.unknown_receipts())
        if mid is not None and status in FINAL:
            self.policy.settle([mid])
        return mid

    # --- sending ---------------------------------------------------------------

    async def _pump(self) -> None:
        while not self._stopping:
            for batch in self.batcher.due(self.monotonic()):
                await self._slots.acquire()
                while (wait := self.limiter.delay(self.monotonic())) > 0:
                    await self.rate_sleep(wait)
                self.limiter.record(self.monotonic())
                self._inflight += len(batch.jobs)
                self._spawn(self._send(batch))
                if self._stopping:
                    break
            deadline = self.batcher.next_deadline()
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - self.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _send(self, batch: Batch) -> None:
        self._on_wire.append(batch)
        try:
            outcomes = await self._send_until_answered(batch)
            if outcomes is None:
                return
            await self._apply(batch, outcomes)
        finally:
            self._on_wire.remove(batch)
            self._inflight -= len(batch.jobs)
            self._slots.release()

    def planned_ids(self, batch: Batch) -> dict[int, str] | None:
        """The SMSC ids the batch will get, when we choose them (recorded before sending)."""
        return None

    async def _send_until_answered(self, batch: Batch) -> dict[int, Outcome] | None:
        """Send a batch until the provider answers it; what ``ResendPolicy`` allows, no more.

        None: the route is stopping, or nothing of the batch may go any more (cancelled,
        finished by a callback); what is open stays in the store for the next start.
        """
        planned = self.planned_ids(batch)
        if planned:
            await self.store.provider_submitting(planned.items())
        all_ids = [j.message.id for j in batch.jobs]
        while True:
            ids = self.policy.sendable(all_ids)
            if not ids:
                return None
            self.stats["requests"] += 1
            decision: Resend | Ask | Keep
            reason = ""
            try:
                outcomes = await self.submit(batch)
            except Unavailable as e:
                self._trouble = reason = f"unavailable: {e}"
                decision = self.policy.unavailable(ids, self.monotonic())
            except Ambiguous as e:
                self._trouble = f"no answer: {e}"
                self.stats["ambiguous"] += 1
                reason = f"no answer: {e}"
                decision = self.policy.lost(ids, self.monotonic())
                if isinstance(decision, Resend):
                    self.stats["ambiguous_resent"] += 1  # the provider cannot be asked: at-least-once
            except DuplicateRequest as e:
                self._trouble = None
                self.stats["duplicates"] += 1
                log.warning("provider_duplicate_request", route=self.name, messages=len(ids), error=str(e),
                            hint="the provider has this request: asking for its state, never resending it")
                decision = self.policy.duplicate(ids, self.monotonic())
            except ProviderError as e:
                self._trouble = f"{self.kind} {e.code}: {e.text}" if e.account else None
                if e.account:
                    self.stats["account_errors"] += 1
                    log.error("provider_account_error", route=self.name, code=e.code, error=e.text)
                self.policy.answered(ids)
                if e.retry_after is None:
                    return {i: Refused(Status.FAILED, f"{self.kind} {e.code}: {e.text}") for i in ids}
                return {i: Retry(e.retry_after, f"{self.kind} {e.code}: {e.text}") for i in ids}
            else:
                self._trouble = None
                doubted = [i for i in ids if isinstance(outcomes.get(i), Duplicate)]
                self.policy.answered(i for i in ids if i not in doubted)
                if doubted:  # per number "duplicate": the provider has these; learn their state
                    self.stats["duplicates"] += len(doubted)
                    asked = await self._ask_until_answered(batch, self.policy.duplicate(doubted, self.monotonic()))
                    if asked is None:
                        return None
                    outcomes = {**outcomes, **asked}
                return {i: o for i, o in outcomes.items() if i in ids}
            if isinstance(decision, Keep):
                if planned:
                    return {i: Accepted(planned[i]) for i in decision.ids}
                # A provider that can neither be asked nor names its ids: leave the messages
                # as the store has them rather than send a second SMS.
                log.error("provider_duplicate_unrecorded", route=self.name, messages=len(decision.ids))
                return None
            if isinstance(decision, Ask):
                return await self._ask_until_answered(batch, decision)
            self.stats["retries"] += 1
            delay = max(0.0, decision.at - self.monotonic())
            log.warning("provider_request_retry", route=self.name, reason=reason, delay=round(delay, 2),
                        messages=len(ids))
            if await self._pause(delay):
                return None

    async def _ask_until_answered(self, batch: Batch, ask: Ask) -> dict[int, Outcome] | None:
        """Ask the provider which of ``ask.ids`` it has, until it says; what it has is accepted.

        The ones it does not have come back as ``Retry`` (``_apply`` queues them again,
        unless a callback or `smppd cancel` settles them first).  None: stopping; the
        messages stay ``submitted`` with their planned ids and the next start asks again.
        """
        while True:
            if await self._pause(max(0.0, ask.at - self.monotonic())):
                return None
            ids = [i for i in ask.ids if not self.policy.settled(i)]
            if not ids:
                return {}
            try:
                found = await self.confirm(batch)
            except (Unavailable, Ambiguous, ProviderError) as e:
                ask = self.policy.ask_failed(ids, self.monotonic())
                log.warning("provider_confirm_failed", route=self.name, error=str(e), messages=len(ids),
                            next_in=round(ask.at - self.monotonic(), 2))
                continue
            assert found is not None  # the policy asks only a provider that can be asked
            out: dict[int, Outcome] = {}
            for d in self.policy.asked({i: isinstance(found.get(i), Accepted) for i in ids}, self.monotonic()):
                if isinstance(d, Keep):
                    out.update({i: found[i] for i in d.ids})
                elif isinstance(d, Resend):
                    out.update({i: Retry(max(0.0, d.at - self.monotonic()), f"{self.kind}: not received, resending")
                                for i in d.ids})
            log.info("provider_ambiguous_confirmed", route=self.name, had=sum(isinstance(o, Accepted)
                                                                                for o in out.values()),
                     resending=sum(isinstance(o, Retry) for o in out.values()))
            return out

    async def _apply(self, batch: Batch, outcomes: Mapping[int, Outcome]) -> None:
        """Store every outcome of a batch; queued together, so one group commit, not one per number."""
        writes = []
        for job in batch.jobs:
            if self.policy.settled(job.message.id):
                continue  # a callback finished it, or an admin cancelled it, while it was on the wire
            out = outcomes.get(job.message.id)
            if out is None or isinstance(out, Duplicate):
                out = Retry(self.cfg.retry_min, "no answer for this number")
            if isinstance(out, Accepted):
                self.stats["accepted"] += 1
                writes.append(self.accepted(job, out.smsc_id))
            elif isinstance(out, Refused):
                self.stats["refused"] += 1
                log.info("provider_refused", route=self.name, message=job.message.id, b24_id=job.message.b24_id,
                         detail=out.detail)
                writes.append(self.store.provider_failed(job.message.id, out.status, out.detail))
            else:
                self.stats["retries"] += 1
                log.info("provider_retry_later", route=self.name, message=job.message.id, b24_id=job.message.b24_id,
                         detail=out.detail,
                         delay=out.delay)
                self._spawn(self._later(job, out.delay))
        await asyncio.gather(*writes)

    async def _later(self, job: Job, delay: float) -> None:
        if not await self._pause(delay):
            self.add_job(job)

    async def _pause(self, seconds: float) -> bool:
        """Sleep, cut short by stop(); True when the route is stopping."""
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        return self._stopping

    # --- polling ---------------------------------------------------------------

    async def poll_once(self, limit: int = 100) -> int:
        """Ask the provider about every message whose poll time has come; how many were asked."""
        items = await self.store.due_polls(self.name, limit)
        if not items:
            return 0
        try:
            answers = await self.poll(items)
        except (Unavailable, Ambiguous, ProviderError) as e:
            log.warning("provider_poll_failed", route=self.name, error=str(e), messages=len(items))
            answers = {}
        self.stats["polled"] += len(items)
        again, given_up = [], []
        now = self.store.clock()
        for item in items:
            code, status = answers.get(item.id, (None, None))
            if code is None or not await self.polled(item, code, status):
                (given_up if now - item.created_at > self.cfg.poll_for else again).append(item.id)
        if again:
            await self.store.schedule_polls(again, now + self.cfg.poll_interval)
        if given_up:  # the provider will not say any more; Bitrix24 keeps showing "sent"
            self.stats["poll_given_up"] += len(given_up)
            log.warning("provider_poll_given_up", route=self.name, messages=len(given_up))
            await self.store.schedule_polls(given_up, None)
        return len(items)

    async def _poll_loop(self) -> None:
        while True:
            try:
                while await self.poll_once() == 100:
                    pass
            except Exception as e:  # never let one bad answer end polling for good
                log.error("provider_poll_loop_error", route=self.name, error=repr(e))
            nxt = await self.store.next_poll_at(self.name)
            wait = self.cfg.poll_interval if nxt is None else min(self.cfg.poll_interval,
                                                                   max(0.0, nxt - self.store.clock()))
            self._poll_wake.clear()
            try:
                await asyncio.wait_for(self._poll_wake.wait(), max(wait, 0.05))
            except asyncio.TimeoutError:
                pass
