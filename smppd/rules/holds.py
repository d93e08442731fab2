"""Held messages: stored and acknowledged, waiting for a business rule to let them go.

Two holds (``rules.HOLD_*``):

* ``consent``: marketing whose CRM consent is still to be read. Read in batches
  after the HANDLER post was answered, so Bitrix24 never waits on its own REST
  API; a refusal fails the message with the reason, a yes releases it (or moves
  it to the quiet hold).
* ``quiet``: marketing posted during quiet hours. When they end it goes back to
  the consent hold, so what goes out in the morning has consent no older than
  the cache TTL (a contact may withdraw it overnight) and a number that replied
  STOP meanwhile is caught by the stop-list check on release.

The hold lives in the message row, so a restart loses nothing: the worker
simply finds the rows again, and ``Store.open_messages`` skips held rows so a
restart cannot send them early.

No hold lasts for ever (issue 14 item 11): Bitrix24 shows "sent" for as long as
we hold, so a message held longer than ``[rules] hold_max_age`` (24 h) fails
with the hold's reason, and a consent that cannot be read for good (the app
lacks the crm scope, the portal has no CRM, the user may not read it) fails
the message at once instead of being asked again every 30 s.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo
from typing import Any, Callable, Container

import structlog

from .. import phone
from ..bitrix24.rest import RestError
from .consent import ConsentReader, Verdict, permanent, permission_reason
from . import HOLD_CONSENT, HOLD_QUIET, REASON_STOPLIST, Entity, Rules
from ..model import OpenMessage
from ..store import Store

log = structlog.get_logger(__name__)

CONSENT_BATCH = 500  # held messages judged per round
RETRY_DELAY = 30.0  # after Bitrix24 could not be asked
IDLE_WAKE = 3600.0  # nothing due: look again anyway (cheap, and guards against a missed wake)


class HoldWorker:
    def __init__(self, store: Store, rules: Rules, consent: ConsentReader,
                 dispatch: Callable[[OpenMessage], None], stoplist: Container[str] = frozenset()) -> None:
        self.failures: dict[str, str] = {}  # member_id -> the last consent lookup error, for `smppd stuck`
        self.expired = 0  # messages failed for holding longer than hold_max_age
        self.store = store
        self.rules = rules
        self.consent = consent
        self.dispatch = dispatch
        self.stoplist = stoplist
        self._wake = asyncio.Event()
        self._retry_at: dict[str, float] = {}  # member_id -> wall time of the next consent attempt

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                delay = await self.step()
            except Exception as e:  # never let one bad round end the releases for good
                log.error("holds_step_failed", error=repr(e))
                delay = RETRY_DELAY
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, delay))
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def step(self) -> float:
        """Judge what waits for consent, release what quiet hours held; seconds until the next due."""
        self._wake.clear()
        now = self.rules.clock()
        await self._expire()
        # quiet hours are over for these: back to the consent hold for a fresh verdict
        await self.store.holds_ended(HOLD_QUIET, HOLD_CONSENT, now)
        more = await self._judge_consent()
        if more:
            return 0.0
        next_quiet = await self.store.next_hold_end(HOLD_QUIET)
        due = [IDLE_WAKE]
        if next_quiet is not None:
            due.append(next_quiet - now)
        due += [at - now for at in self._retry_at.values() if at > now]
        return min(due)

    def why(self, member_id: str, hold: str, hold_until: float | None) -> str:
        """Why a held message waits, in words an admin acts on (`smppd stuck`)."""
        if hold == HOLD_QUIET and hold_until is not None:
            return f"quiet hours, until {_local(hold_until, self.rules)}"
        if hold == HOLD_CONSENT:
            failed = self.failures.get(member_id)
            return "consent: reading the CRM" + (f" (last try failed: {failed})" if failed else "")
        return f"held: {hold}"

    def hold_reason(self, member_id: str, hold: str) -> str:
        """The reason a message held too long fails with: its hold, and what kept it."""
        hours = f"{self.rules.cfg.hold_max_age / 3600:g} h"
        if hold == HOLD_QUIET:
            return f"held over {hours} in quiet hours"
        failed = self.failures.get(member_id)
        return f"held over {hours}: consent could not be read" + (f" ({failed})" if failed else "")

    async def _expire(self) -> None:
        """Fail what has been held longer than ``hold_max_age``, with the hold's reason."""
        cutoff = self.store.clock() - self.rules.cfg.hold_max_age
        rows = await self.store.held_since(cutoff, CONSENT_BATCH)
        if not rows:
            return
        failed = [(mid, self.hold_reason(member_id, hold)) for mid, member_id, hold in rows]
        await self.store.fail_held(failed)
        self.store.outbox_changed.set()
        self.expired += len(failed)
        for mid, reason in failed:
            self.rules.stats.refuse(reason)
        log.warning("holds_expired", messages=len(failed), max_age=self.rules.cfg.hold_max_age,
                    reasons=sorted({r for _, r in failed}))

    async def counts(self) -> dict[str, int]:
        """Messages waiting per hold, for ``smppd status``: a stuck consent lookup shows here."""
        return await self.store.held_counts()

    async def _release(self, messages: list[OpenMessage]) -> None:
        """Dispatch what a hold let go, unless the number opted out while it waited."""
        stopped = {m.id for m in messages if m.phone in self.stoplist}
        if stopped:
            await self.store.fail_held((mid, REASON_STOPLIST) for mid in stopped)
            self.store.outbox_changed.set()
        for m in messages:
            if m.id in stopped:
                self.rules.stats.refuse(REASON_STOPLIST)
                log.info("message_refused", id=m.id, reason=REASON_STOPLIST)
                continue
            self.rules.stats.released += 1
            log.info("message_released", id=m.id, to=phone.mask(m.phone))
            self.dispatch(m)

    async def _judge_consent(self) -> bool:
        """One round of consent lookups; True when more held messages are waiting than one round takes."""
        now = self.rules.clock()
        self._retry_at = {m: at for m, at in self._retry_at.items() if at > now}
        rows = await self.store.held(HOLD_CONSENT, self._retry_at, CONSENT_BATCH)
        by_portal: dict[str, list[tuple[int, tuple[tuple[Entity, ...], str | None]]]] = defaultdict(list)
        for mid, member_id, entities, number in rows:
            by_portal[member_id].append((mid, (_entities(entities), number)))
        for member_id, items in by_portal.items():
            try:
                verdicts = await self.consent.check(member_id, [e for _, e in items])
            except RestError as e:
                if permanent(e):  # the app may not read the CRM: no retry changes that, the admin must
                    self.consent.warn_permission(member_id, e)
                    verdicts = [Verdict(False, permission_reason(e)) for _ in items]
                    self.failures.pop(member_id, None)
                    await self._decide(items, verdicts)
                    continue
                self.failures[member_id] = e.code
                self._retry_at[member_id] = now + RETRY_DELAY
                log.warning("consent_lookup_failed", member_id=member_id, error=e.code, held=len(items),
                            retry_in=RETRY_DELAY)
                continue
            self._retry_at.pop(member_id, None)
            self.failures.pop(member_id, None)
            await self._decide(items, verdicts)
        return len(rows) == CONSENT_BATCH

    async def _decide(self, items: list[tuple[int, tuple[tuple[Entity, ...], str | None]]],
                      verdicts: list[Verdict]) -> None:
        """Apply one portal's verdicts: fail the refused, hold for quiet hours or release the rest."""
        release_at = self.rules.quiet_release_at()
        decisions = [(mid, v) for (mid, _), v in zip(items, verdicts)]
        # the refused fail through the status path (repeats and the outbox follow), the rest go
        released = await self.store.judged(
            HOLD_CONSENT, [(mid, None if v.consent else (v.reason or "no consent")) for mid, v in decisions],
            HOLD_QUIET if release_at is not None else None, release_at)
        if any(not v.consent for _, v in decisions):
            self.store.outbox_changed.set()
        for mid, v in decisions:
            if not v.consent:
                assert v.reason is not None
                self.rules.stats.refuse(v.reason)
                log.info("message_refused", id=mid, reason=v.reason)
            elif release_at is not None:
                self.rules.stats.hold(HOLD_QUIET)
                log.info("message_held", id=mid, hold=HOLD_QUIET, until=release_at)
        await self._release(released)


def _local(stamp: float, rules: Rules) -> str:
    return datetime.fromtimestamp(stamp, ZoneInfo(rules.cfg.timezone)).strftime("%Y-%m-%d %H:%M %Z")


def _entities(raw: Any) -> tuple[Entity, ...]:
    try:
        return tuple(Entity(int(t), int(i)) for t, i in json.loads(raw or "[]"))
    except (ValueError, TypeError):
        return ()

