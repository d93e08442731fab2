"""A route's rate cap over any sliding window, counted as operators count it (segments, requests)."""

from __future__ import annotations

from collections import deque


class SlidingWindowLimiter:
    """At most ``cap`` events in any window of ``period`` seconds.

    A token bucket with burst = cap can let through twice the cap across a
    window boundary; operators that "penalise bursts" count a sliding second,
    so we keep the times of the last ``cap`` sends instead (cap is small:
    tens to hundreds per route). Sans-I/O: the caller passes ``now`` (its
    monotonic clock), so a test walks time by hand and the route reads its
    clock once per submit, not once here and once there.
    """

    def __init__(self, cap: float, period: float = 1.0) -> None:
        self.cap = int(cap)
        self.period = period
        self._sent: deque[float] = deque(maxlen=max(self.cap, 1))

    @property
    def unlimited(self) -> bool:
        return self.cap <= 0

    def delay(self, now: float) -> float:
        """Seconds to wait before the next send may go; 0 when it may go now."""
        if self.cap <= 0 or len(self._sent) < self.cap:
            return 0.0
        return max(0.0, self._sent[0] + self.period - now)

    def record(self, now: float) -> None:
        """One send went at ``now``."""
        if self.cap > 0:
            self._sent.append(now)

    def set_cap(self, cap: int) -> None:
        """Change the cap on the fly (a throttle cut, its recovery); the recent sends still count."""
        cap = int(cap)
        if cap == self.cap:
            return
        self.cap = cap
        self._sent = deque(self._sent, maxlen=max(cap, 1))
