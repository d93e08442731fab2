"""Sans-I/O flow policy of one SMPP route: when to pause and how fast to send.

Nothing here reads a clock or touches a socket: every call takes ``now`` (a
monotonic float, ``loop.time()``) and returns what to do; the asyncio route
(``routes/smpp.py``) only applies the answers. That keeps the decisions
testable second by second without an SMSC. How soon one bind reconnects is the
connection's business (``smpp/reconnect.py``).

Why the two congestion signals are treated differently (reference §4, §8,
issue 14):

* ``ESME_RMSGQFUL`` (0x14) says the SMSC's queue is full *now*, not that we
  send too fast. Cutting the rate (what we did before) made every later burst
  cost more: one queue-full every 20 submits halved the rate again and again.
  So it pauses the route, for an interval that grows only while queue-full
  repeats (each probe after a pause is refused again; one submit probes, not a
  window), and resumes at the rate and window it had once a submit is accepted.
* ``ESME_RTHROTTLED`` (0x58) says we are over the operator's rate: a short
  breather (``throttle_pause``, as before), halve rate and window
  (multiplicative decrease, at most once per ``hold``, since every submit in
  flight comes back refused too), then climb back to the configured rate
  linearly within ``recovery`` seconds of the last throttle. The old additive
  increase (+1/value per success, TCP's congestion avoidance) took minutes.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class Limits(NamedTuple):
    """What the route may do at one instant (a NamedTuple: one per submit)."""

    rate: float  # segments per second; 0 = no cap
    window: int  # submits in flight per bind
    resume_at: float  # no submit before this time (a queue-full pause); <= now: not paused


class FlowPolicy:
    """Pause on queue-full, multiplicative decrease with quick recovery on throttling."""

    def __init__(self, rate: float, window: int, *, pause_min: float = 0.1, pause_max: float = 5.0,
                 hold: float = 1.0, recovery: float = 3.0, rate_floor: float = 1.0,
                 learned_floor: float = 10.0, throttle_pause: float = 0.25) -> None:
        if pause_min <= 0 or pause_max < pause_min:
            raise ValueError("need 0 < pause_min <= pause_max")
        self.rate = float(rate)  # the configured cap; 0 = none
        self.window = int(window)
        self.pause_min = pause_min
        self.pause_max = pause_max
        self.hold = hold
        self.recovery = recovery
        self.rate_floor = rate_floor
        self.learned_floor = learned_floor
        self.throttle_pause = throttle_pause
        self.resume_at = 0.0  # the end of a queue-full pause
        self._throttle_until = 0.0  # the end of the breather after a throttle
        self._pause = 0.0  # the last queue-full pause; 0 when no queue-full streak is open
        self._cut_at: float | None = None  # last throttle cut
        self._cut_rate = 0.0
        self._cut_window = 0
        self._ceiling_rate = 0.0  # what the rate climbs back to (the configured or learned cap)
        self._sent: deque[float] = deque()  # send times of the last second (uncapped routes)
        self.queue_full_pauses = 0
        self.throttle_cuts = 0

    # --- inputs -------------------------------------------------------------------------

    def sent(self, now: float) -> None:
        """One submit left; an uncapped route learns its actual rate from these."""
        if self.rate > 0:
            return
        self._sent.append(now)
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()

    def accepted(self, now: float) -> None:
        """A submit went through: a queue-full streak is over; the next pause starts short."""
        if now >= self.resume_at:
            self._pause = 0.0

    def queue_full(self, now: float) -> float:
        """ESME_RMSGQFUL: pause; returns when to resume."""
        if now < self.resume_at:
            return self.resume_at  # a submit sent before the pause: the same event
        self._pause = self.pause_min if self._pause == 0.0 else min(self.pause_max, self._pause * 2)
        self.resume_at = now + self._pause
        self.queue_full_pauses += 1
        return self.resume_at

    def throttled(self, now: float) -> bool:
        """ESME_RTHROTTLED: halve rate and window; False when a cut within ``hold`` covers it."""
        if self._cut_at is not None and now - self._cut_at < self.hold:
            return False
        current = self.limits(now)
        if current.rate > 0:
            ceiling, rate = (self.rate if self.rate > 0 else self._ceiling_rate), current.rate
        else:  # uncapped: start a cap at what was actually sent in the last second
            while self._sent and self._sent[0] <= now - 1.0:
                self._sent.popleft()
            rate = max(self.learned_floor, float(len(self._sent)))
            ceiling = 2 * rate
        self._ceiling_rate = ceiling
        self._cut_rate = max(min(self.rate_floor, ceiling), rate / 2)
        self._cut_window = max(1, current.window // 2)
        self._cut_at = now
        self._throttle_until = now + self.throttle_pause
        self.throttle_cuts += 1
        return True

    def retune(self, rate: float, window: int) -> None:
        """A reload's new cap: the climb, if any, now goes towards it."""
        self.rate = float(rate)
        self.window = int(window)
        if self._cut_at is not None and rate > 0:
            self._ceiling_rate = float(rate)
            self._cut_rate = min(self._cut_rate, float(rate))

    # --- outputs ------------------------------------------------------------------------

    def limits(self, now: float) -> Limits:
        # While a queue-full streak is open, one submit probes whether the queue drained: a
        # full window sent after each pause would only come back refused (issue 14.3).
        probing = self._pause > 0.0
        resume = max(self.resume_at, self._throttle_until)
        if self._cut_at is None:
            return Limits(self.rate, 1 if probing else self.window, resume)
        since = now - self._cut_at - self.hold
        if since >= self.recovery:
            self._cut_at = None  # recovered: the configured limits again (uncapped: no cap)
            return Limits(self.rate, 1 if probing else self.window, resume)
        share = max(0.0, since) / self.recovery
        rate = self._cut_rate + (self._ceiling_rate - self._cut_rate) * share
        window = self._cut_window + int((self.window - self._cut_window) * share)
        return Limits(rate, 1 if probing else max(1, window), resume)

    def next_deadline(self, now: float) -> float | None:
        """When the limits change by themselves next: the pause ends, or the climb is done."""
        times = []
        resume = max(self.resume_at, self._throttle_until)
        if resume > now:
            times.append(resume)
        if self._cut_at is not None:
            times.append(self._cut_at + self.hold + self.recovery)
        return min(times) if times else None
