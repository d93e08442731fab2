"""The one back-off every retry in smppd waits: doubling, capped, with jitter.

Five retry loops (SMPP reconnects, the Bitrix24 REST client and its token refresh,
the status pusher, the app-event queue, the HTTP providers and their resend policy)
each had their own formula, with three different jitters.  They now share this one,
each with its own bounds:

    delay(n) = min(cap, first * 2 ** (n - 1)) * uniform(0.8, 1.0)

Why this jitter: the cap is a promise (``reconnect_max``, ``retry_max``: "at most
one try a minute"), so the delay never exceeds it, unlike the old ±20 %; and a
fifth of the delay is enough spread for the handful of daemons and routes that
could retry in step, while a wait never drops to half of what the operator or
Bitrix24 asked us to leave them alone for (the old "half to all").

Pure: the random source is a parameter, so a test passes a seeded ``random.Random``
or any object with ``random()``.
"""

from __future__ import annotations

import random
from typing import Final, Protocol

JITTER_LOW: Final[float] = 0.8  # the shortest delay, as a fraction of the un-jittered one
_MAX_DOUBLINGS: Final[int] = 62  # 2 ** 62 * any sane ``first`` is far above any cap; no overflow


class RandomSource(Protocol):
    def random(self) -> float:
        """A float in [0, 1), as ``random.Random.random``."""
        ...


_SYSTEM: Final[RandomSource] = random.Random()


def backoff(attempt: int, first: float, cap: float, rng: RandomSource = _SYSTEM) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    ``first`` is the un-jittered delay of the first retry, ``cap`` the longest any
    delay may be; an ``attempt`` below 1 counts as 1.
    """
    doublings = min(max(attempt, 1) - 1, _MAX_DOUBLINGS)
    ceiling = min(cap, first * 2.0 ** doublings)
    return ceiling * (JITTER_LOW + (1.0 - JITTER_LOW) * rng.random())
