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
