"""Rate caps counted in segments, as operators count them."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable


class SlidingWindowLimiter:
    """At most ``cap`` events in any window of ``period`` seconds.

    A token bucket with burst = cap can let through twice the cap across a
    window boundary; operators that "penalise bursts" count a sliding second,
    so we keep the timestamps of the last ``cap`` sends instead (cap is small:
    tens to hundreds per route).
    """

    def __init__(self, cap: float, period: float = 1.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = int(cap)
        self.period = period
        self.clock = clock
        self._sent: deque[float] = deque(maxlen=max(self.cap, 1))

    @property
    def unlimited(self) -> bool:
        return self.cap <= 0

    def delay(self) -> float:
        """Seconds to wait before the next send may go; 0 when it may go now."""
        if self.unlimited or len(self._sent) < self.cap:
            return 0.0
        return max(0.0, self._sent[0] + self.period - self.clock())

    def record(self) -> None:
        if not self.unlimited:
            self._sent.append(self.clock())

    def set_cap(self, cap: int) -> None:
        """Change the cap on the fly (AIMD); the recent sends still count against it."""
        cap = int(cap)
        if cap == self.cap:
            return
        self.cap = cap
        self._sent = deque(self._sent, maxlen=max(cap, 1))


class Aimd:
    """Additive increase, multiplicative decrease of one limit (a window or a rate).

    On ESME_RTHROTTLED / ESME_RMSGQFUL the limit is halved, at most once per
    ``hold`` seconds, because every submit already in flight when the SMSC
    started refusing comes back refused too and is one congestion event, not
    many.  Each success then adds ``1 / value``, so the limit grows back by
    about one per window of successes (TCP's congestion avoidance), up to the
    configured ceiling.  A fixed "pause 1 s and retry" (Kannel) yields as many
    refusals as successes against an SMSC that counts a sliding second.
    """

    def __init__(self, ceiling: float, *, floor: float = 1.0, factor: float = 0.5, hold: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = float(ceiling)
        self.floor = min(float(floor), self.ceiling)
        self.factor = factor
        self.hold = hold
        self.clock = clock
        self.value = self.ceiling
        self.cuts = 0
        self._last_cut: float | None = None

    def congestion(self) -> bool:
        """Cut the limit; False when a cut within ``hold`` already covered this event."""
        now = self.clock()
        if self._last_cut is not None and now - self._last_cut < self.hold:
            return False
        self._last_cut = now
        self.value = max(self.floor, self.value * self.factor)
        self.cuts += 1
        return True

    def success(self) -> None:
        if self.value < self.ceiling:
            self.value = min(self.ceiling, self.value + 1.0 / self.value)
