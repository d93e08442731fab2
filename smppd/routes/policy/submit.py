"""What an SMPP route does with each answer to a submit_sm, and when the next may go.

Sans-I/O, as the session is: the route (``routes/smpp.py``) tells ``SubmitPolicy``
what happened and when (``now``, the loop's monotonic clock) and carries out the
answer; nothing here sleeps, sends or writes. One object holds every rule of the
hot path so the route asks one thing per submit:

* the cap over any sliding second, counted in segments (``cap.py``), kept over a
  slightly longer window (``CAP_SLACK``) since our coalesced writes and the network
  can bunch sends that left us a second apart;
* ``ESME_RMSGQFUL`` pauses, ``ESME_RTHROTTLED`` halves rate and window and recovers
  within seconds (``flow.py``); the part goes back to the front, and neither counts
  against the part's own retries: they say nothing about it;
* ``ESME_RINVBNDSTS`` ends the session: the part goes back to the front and the
  rebind's back-off is its delay;
* any other temporary error (system error, the SMSC's "try later") retries the
  same part after ``TEMPORARY_RETRY_DELAY``, bounded in count and age (issue 14.5),
  then the part fails with the code as its reason; a final error fails it at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import SmppRouteConfig
from ...smpp.pdu import ESME_RINVBNDSTS, ESME_RMSGQFUL, ESME_RTHROTTLED
from .cap import SlidingWindowLimiter
from .flow import FlowPolicy, Limits

TEMPORARY_RETRY_DELAY = 1.0  # an SMSC with a system error gets a breather before the same segment
CAP_SLACK = 0.05  # the operator meters arrivals: the cap is kept over 1.05 s

PartKey = tuple[int, int]  # (row id, segment)


@dataclass(frozen=True, slots=True)
class Paused:
    """Queue full: the part goes back to the front; nothing is sent before ``until``.
    ``new``: this refusal opened the pause (one log line per pause, not per part)."""

    until: float
    new: bool


@dataclass(frozen=True, slots=True)
class SlowedDown:
    """Throttled: the part goes back to the front; ``cut`` holds the new limits when this
    refusal cut them (the rest of the burst falls within ``hold``: None)."""

    cut: Limits | None


@dataclass(frozen=True, slots=True)
class Requeue:
    """Back to the front at once: the session is ending and the rebind is the delay."""


@dataclass(frozen=True, slots=True)
class RetryLater:
    """A temporary error within its bounds: the same part again at ``at``."""

    at: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Fail:
    """The part fails with ``reason``; ``refusals``/``seconds`` > 0 when its retries ran out."""

    refusals: int = 0
    seconds: float = 0.0


Verdict = Paused | SlowedDown | Requeue | RetryLater | Fail


class SubmitPolicy:
    """The cap, the flow (pause, AIMD) and the bounded requeue of one SMPP route."""

    def __init__(self, rate: float, window: int, *, temporary_retries: int, temporary_retry_age: float,
                 pause_min: float, pause_max: float, recovery: float) -> None:
        # No defaults: the route's config has them (smppd.config), written once.
        self.flow = FlowPolicy(rate, window, pause_min=pause_min, pause_max=pause_max, recovery=recovery)
        self.cap = SlidingWindowLimiter(rate, 1.0 + CAP_SLACK)
        self.window = max(1, int(window))  # what the binds' windows should be now
        self.temporary_retries = temporary_retries
        self.temporary_retry_age = temporary_retry_age
        self._applied = (float(rate), int(window))  # the flow's (rate, window) last handed to cap and window
        self._temporary: dict[PartKey, tuple[int, float]] = {}  # part -> (refusals so far, time of the first)

    @classmethod
    def for_route(cls, cfg: SmppRouteConfig) -> SubmitPolicy:
        return cls(cfg.throughput, cfg.window, temporary_retries=cfg.temporary_retries,
                   temporary_retry_age=cfg.temporary_retry_age, pause_min=cfg.queue_full_pause,
                   pause_max=cfg.queue_full_pause_max, recovery=cfg.throttle_recovery)

    def retune(self, cfg: SmppRouteConfig) -> None:
        """A reload's new cap and window: a fresh cap count, the flow's climb aims at the new cap."""
        self.cap = SlidingWindowLimiter(cfg.throughput, 1.0 + CAP_SLACK)
        self.flow.retune(cfg.throughput, cfg.window)
        self.temporary_retries = cfg.temporary_retries
        self.temporary_retry_age = cfg.temporary_retry_age
        self._applied = (-1.0, -1)  # the next resume_at() hands the limits over afresh

    # --- before a submit ------------------------------------------------------------

    def resume_at(self, now: float) -> float:
        """When the route may submit again (a pause or a breather); <= now: it may now.

        Also hands the flow's current rate to the cap and its window to ``window``,
        which the route gives its binds when it changed.
        """
        limits = self.flow.limits(now)
        if (limits.rate, limits.window) != self._applied:
            self._applied = (limits.rate, limits.window)
            self.window = max(1, limits.window)
            self.cap.set_cap(max(1, int(limits.rate)) if limits.rate > 0 else 0)
        return limits.resume_at

    def cap_delay(self, now: float) -> float:
        """Seconds until the cap lets the next segment (or query_sm) go; 0: now."""
        return self.cap.delay(now)

    def limits(self, now: float) -> Limits:
        return self.flow.limits(now)

    def next_deadline(self, now: float) -> float | None:
        """When the limits change by themselves next (a pause ends, a climb is done)."""
        return self.flow.next_deadline(now)

    # --- what happened ----------------------------------------------------------------

    def sent(self, now: float) -> None:
        """A submit_sm left."""
        self.cap.record(now)
        self.flow.sent(now)

    def queried(self, now: float) -> None:
        """A query_sm left: paced by the same cap, not counted as traffic the flow learns from."""
        self.cap.record(now)

    def accepted(self, row_id: int, seq: int, now: float) -> None:
        """A submit_sm_resp without error for part ``seq`` of message ``row_id``."""
        self.flow.accepted(now)
        if self._temporary:
            self._temporary.pop((row_id, seq), None)

    def refused(self, row_id: int, seq: int, status: int, temporary: bool, now: float) -> Verdict:
        """A submit_sm_resp with an error: what becomes of the part."""
        part = (row_id, seq)
        if status == ESME_RMSGQFUL:
            before = self.flow.resume_at
            until = self.flow.queue_full(now)
            return Paused(until, until != before)
        if status == ESME_RTHROTTLED:
            return SlowedDown(self.flow.limits(now) if self.flow.throttled(now) else None)
        if not temporary:
            return Fail()
        if status == ESME_RINVBNDSTS:
            return Requeue()
        count, first = self._temporary.get(part, (0, now))
        count += 1
        if count <= self.temporary_retries and now - first < self.temporary_retry_age:
            self._temporary[part] = (count, first)
            return RetryLater(now + TEMPORARY_RETRY_DELAY, count)
        self._temporary.pop(part, None)
        return Fail(count, now - first)

    def forget(self, row_ids: set[int]) -> None:
        """Cancelled messages: their retry counts go too."""
        for part in [p for p in self._temporary if p[0] in row_ids]:
            del self._temporary[part]
