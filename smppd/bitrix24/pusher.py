"""Drains the durable outbox of one portal into Bitrix24, 50 updates a request.

The portal allows about 2 requests per second, so status updates leave in
``batch`` calls of up to 50 ``messageservice.message.status.update`` commands
(100 updates/s at most).  The outbox row is deleted only after Bitrix24 said
yes (or said the message is gone), so an outage of any length loses nothing:
the backlog drains at the portal's limit afterwards.  A failed batch pauses the
portal (probing at most every ``OUTAGE_MAX`` seconds); an update Bitrix24 refuses
on its own is retried on its own backoff; ``ERROR_MESSAGE_NOT_FOUND`` ends it.
"""

from __future__ import annotations

import asyncio

import structlog

from ..ops import metrics
from ..backoff import backoff
from ..model import OutboxItem
from ..store import Store
from .rest import RestClient, RestError

log = structlog.get_logger(__name__)

BATCH_SIZE = 50
IDLE_POLL = 1.0  # how often an idle pusher looks for retries that came due
RETRY_MIN, RETRY_MAX = 2.0, 300.0  # per update Bitrix24 refused
# Longest pause between probes of a failing portal: bounds how long a recovered portal
# waits before its backlog starts draining.
OUTAGE_MAX = 60.0
# Batches in flight per portal. The leaky bucket in RestClient keeps the request rate within
# the portal's limit however many are in flight; more than one lets the outbox drain at that
# limit even when each batch waits on the store and the network.
PIPELINE = 4
# While a bulk job (``smppd contacts``) waits for the portal's budget, a batch of fewer than
# BATCH_SIZE updates leaves at most this often: the updates wait a moment and go out fuller,
# instead of spending every request slot on a few updates each and starving the job.
# A full batch (a backlog) never waits: the pusher keeps its priority.
PARTIAL_GAP_UNDER_BULK = 2.0
# Bitrix24 purges messages after 14 days; an update for one can never succeed.
TERMINAL_ERRORS = frozenset({"ERROR_MESSAGE_NOT_FOUND"})


def retry_delay(attempts: int) -> float:
    """``attempts`` counts from 0; the bounds are read at call time (tests shorten them)."""
    return backoff(attempts + 1, RETRY_MIN, RETRY_MAX)


class StatusPusher:
    def __init__(self, store: Store, client: RestClient) -> None:
        self.store = store
        self.client = client
        self.member_id = client.portal.member_id
        self.pushed = 0
        self.dropped = 0
        self._stopping = False
        self.failures = 0  # whole batches failed in a row (the portal is unreachable or refusing)
        self.paused_until = 0.0  # store clock; no request before this while failing
        self._inflight: set[str] = set()  # Bitrix24 ids of the updates in a batch in flight
        # Cleared while an app event of this portal is being proven: the proof goes first in
        # the portal's budget (an unproven update leaves every post refused), no new batch starts.
        self.may_push = asyncio.Event()
        self.may_push.set()
        self._last_sent = float("-inf")  # event-loop time of the last batch started

    async def run(self) -> None:
        """Keep up to ``PIPELINE`` full batches in flight; the REST client's bucket sets the pace.

        One batch at a time would cap the portal at one batch per round trip
        (two store round trips and an HTTP one), below the portal's own limit
        when the store is busy committing intake. Batches in flight never share
        a message, so each message's updates still reach Bitrix24 in order.
        """
        inflight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                _raise_failed(inflight)
                if not self.may_push.is_set():
                    await self.may_push.wait()
                    continue
                pause = self.paused_until - self.store.clock()
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue
                # A failing portal gets one probe at a time, not a pipeline of them.
                if len(inflight) >= (1 if self.failures else PIPELINE):
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                items = await self.store.outbox_due(self.member_id, BATCH_SIZE, exclude=self._inflight)
                if not items:
                    self.store.outbox_changed.clear()
                    await self._idle(inflight)
                    continue
                if inflight and len(items) < BATCH_SIZE:
                    # No backlog: the updates wait for the batch in flight and fill up meanwhile.
                    # Partial batches sent side by side would spend the portal's ~2 requests/s
                    # on a few updates each.
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if len(items) < BATCH_SIZE and self.client.bulk_waiting:
                    hold = self._last_sent + PARTIAL_GAP_UNDER_BULK - asyncio.get_running_loop().time()
                    if hold > 0:
                        await asyncio.sleep(hold)
                        continue
                self._last_sent = asyncio.get_running_loop().time()
                self._inflight.update(i.b24_id for i in items)  # before the next read, not when the task starts
                inflight.add(asyncio.create_task(self._push_held(items)))
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _idle(self, inflight: set[asyncio.Task[None]]) -> None:
        """Until the outbox changes, a batch in flight ends, or IDLE_POLL (retries come due)."""
        changed = asyncio.create_task(self.store.outbox_changed.wait())
        try:
            await asyncio.wait({changed, *inflight}, timeout=IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()

    async def _push_held(self, items: list[OutboxItem]) -> None:
        """Push; the messages stay out of the next reads (``run`` put them in) until their rows are settled."""
        try:
            await self.push(items)
        finally:
            self._inflight.difference_update(i.b24_id for i in items)

    def stop(self) -> None:
        self._stopping = True
        self.store.outbox_changed.set()
        self.may_push.set()

    async def push(self, items: list[OutboxItem]) -> None:
        commands = {
            f"m{i}": (
                "messageservice.message.status.update",
                {"CODE": item.code, "MESSAGE_ID": item.b24_id, "STATUS": item.status},
            )
            for i, item in enumerate(items)
        }
        failures_before = self.failures
        try:
            results, errors = await metrics.timed_push(self.member_id, self.client.batch(commands))
        except RestError as e:
            metrics.rest_error(self.member_id, e)
            # The portal failed, not these updates: pause the whole portal and keep every
            # row due, so the backlog drains in order as soon as a probe gets through.
            if self.failures > failures_before:  # a batch sent alongside already counted this failure
                return
            self.failures += 1
            delay = min(OUTAGE_MAX, retry_delay(self.failures - 1))
            self.paused_until = self.store.clock() + delay
            log.warning("bitrix24_push_failed", portal=self.member_id, method="batch", error=e.code,
                        updates=len(items), failures=self.failures, retry_in=round(delay, 1))
            return
        if self.failures:
            log.info("bitrix24_push_recovered", portal=self.member_id, after_failures=self.failures)
            self.failures = 0
        done, retry = [], []
        for i, item in enumerate(items):
            err = errors.get(f"m{i}")
            metrics.rest_error(self.member_id, err)
            if err is None:
                self.pushed += 1
                done.append(item)
            elif err.code in TERMINAL_ERRORS:
                self.dropped += 1
                log.warning("bitrix24_message_gone", portal=self.member_id, message=item.row_id, b24_id=item.b24_id,
                            status=item.status, error=err.code)
                done.append(item)
            else:
                log.warning("bitrix24_status_refused", portal=self.member_id, message=item.row_id, b24_id=item.b24_id,
                            method="messageservice.message.status.update",
                            status=item.status, error=err.code, description=err.description)
                retry.append(item)
        if done:
            await self.store.outbox_done(done)
        for item in retry:
            await self.store.outbox_retry([item], retry_delay(item.attempts))


def _raise_failed(tasks: set[asyncio.Task[None]]) -> None:
    """Drop finished batches; a batch that died of an exception takes the pusher down with it
    (the daemon treats the pusher as essential: systemd restarts it and the outbox resumes)."""
    for task in [t for t in tasks if t.done()]:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
