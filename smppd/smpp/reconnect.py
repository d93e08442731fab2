"""How long one bind waits before it connects again, from how the last attempt ended.

Sans-I/O like the session: the connection (``connection.py``) tells it how an
attempt ended and sleeps what it answers. Why the outcomes differ: a refused bind
(``ESME_RALYBND`` from a stale session, ``RBINDFAIL``) must not be retried fast,
since some SMSCs lock an account after a burst of failed binds; a bind that was up
and working earns a prompt rebind (maintenance unbinds must not lengthen the
outage each time). Route-wide pacing (cap, throttling, queue-full) is route policy:
``routes/policy/``.
"""

from __future__ import annotations

import random
from enum import Enum

from ..backoff import backoff


class Outcome(Enum):
    CONNECT_FAILED = "connect failed"  # no TCP connection, or it died before the bind_resp
    BIND_REFUSED = "bind refused"  # bind_resp with an error (RALYBND, RBINDFAIL, ...)
    CREDENTIALS = "credentials refused"  # RINVPASWD / RINVSYSID
    WAS_BOUND = "was bound"  # the bind was up; the SMSC or the network ended it


class ReconnectBackoff:
    """How long to wait before the next connection attempt, from how the last one ended.

    Connect failures double from ``minimum`` (an operator that is down); a bind that
    was up restarts at ``minimum`` (a maintenance unbind costs about a second);
    refused binds double from ``bind_refused_min``, since each one counts towards an
    account lock at some SMSCs; wrong credentials wait ``maximum``. The jitter of
    ``smppd.backoff`` keeps the binds of several daemons apart.
    """

    def __init__(self, minimum: float, maximum: float, bind_refused_min: float, *,
                 rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.bind_refused_min = bind_refused_min
        self._rng = rng or random.Random()
        self._connect_failures = 0
        self._bind_refusals = 0

    def next_delay(self, outcome: Outcome) -> float:
        if outcome is Outcome.WAS_BOUND:
            self._connect_failures = self._bind_refusals = 0
            return backoff(1, self.minimum, self.maximum, self._rng)
        if outcome is Outcome.CREDENTIALS:
            self._bind_refusals += 1
            return backoff(1, self.maximum, self.maximum, self._rng)
        if outcome is Outcome.BIND_REFUSED:
            self._bind_refusals += 1
            return backoff(self._bind_refusals, self.bind_refused_min, self.maximum, self._rng)
        self._connect_failures += 1
        if self._bind_refusals:
            # a bind refused before keeps the longer clock: the SMSC still knows the account,
            # and each connect failure doubles it further
            attempt = self._bind_refusals + self._connect_failures - 1
            return backoff(attempt, self.bind_refused_min, self.maximum, self._rng)
        return backoff(self._connect_failures, self.minimum, self.maximum, self._rng)
