"""When an HTTP route may send a message again: never what the provider took.

Sans-I/O (h11 style): the route tells the policy what happened to a request
and when (``now``), and the policy answers with a decision and its time; it
never sleeps or sends.  The route (``routes/http.py``) is the shell
that carries the decisions out.

Why it exists: an SMSC.ru send whose answer was lost, while ``status.php`` was
failing, was resent; the resend got error 9 ("duplicate request": SMSC has
the first one) and was queued again for a minute later, when SMSC took it as
new.  Two SMS, one of them after the callback had said "delivered".  The
rules, per message:

* no answer and the request never reached the provider (connection refused,
  HTTP 5xx): send again after a back-off;
* no answer and the request may have reached it (timeout, cut connection):
  where the provider can be asked (SMSC's ``status.php`` with our own request
  id), ask, and keep asking, with back-off, until it answers; send again only
  when it says it does not have the message.  Where it cannot be asked
  (SMS.ru), send again: at-least-once, as DESIGN.md decides, and counted;
* "duplicate request" (SMSC error 9): the provider has it; never send, learn
  its state by asking, as above.  Error 9 is also SMSC's answer to too many
  concurrent requests (reference/providers.md §2.3), so a definite "no such
  message" afterwards does allow one more send, after the duplicate window;
* a message whose final status came (callback or poll), or that an admin
  cancelled, is settled: no decision about it is ever "send" again.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping

from ...backoff import backoff


@dataclass(frozen=True)
class Resend:
    """Send these messages again at ``at``."""

    ids: tuple[int, ...]
    at: float


@dataclass(frozen=True)
class Ask:
    """Ask the provider at ``at`` whether it has these messages; send nothing."""

    ids: tuple[int, ...]
    at: float


@dataclass(frozen=True)
class Keep:
    """The provider has these messages: record them as accepted, never send them again."""

    ids: tuple[int, ...]


Decision = Resend | Ask | Keep


@dataclass
class _Doubt:
    """A message the provider may have: how often we asked, and whether error 9 said it has it."""

    asks: int = 0
    duplicate: bool = False


@dataclass
class ResendPolicy:
    """Per message id: may it go (again), or must we ask first?

    ``can_ask``: the provider can say whether it has a request (SMSC: yes;
    SMS.ru: no).  ``retry_min``/``retry_max``: the back-off of resends and
    asks.  ``duplicate_window``: how long the provider calls an identical
    request a duplicate (SMSC: a minute).
    """

    can_ask: bool
    retry_min: float = 1.0
    retry_max: float = 300.0
    duplicate_window: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    _doubt: dict[int, _Doubt] = field(default_factory=dict)
    # Settled ids are remembered for the messages a route may still hold in a timer; the
    # oldest are forgotten past this many, so a daemon that runs for months stays small.
    settled_memory: int = 100_000
    _settled: OrderedDict[int, None] = field(default_factory=OrderedDict)
    _attempts: dict[int, int] = field(default_factory=dict)

    # --- what the route asks ------------------------------------------------------

    def sendable(self, ids: Iterable[int]) -> tuple[int, ...]:
        """The ids of a request about to go out that may go: not settled, not in doubt."""
        return tuple(i for i in ids if i not in self._settled and i not in self._doubt)

    def settled(self, row_id: int) -> bool:
        return row_id in self._settled

    def in_doubt(self, row_id: int) -> bool:
        return row_id in self._doubt

    # --- what happened --------------------------------------------------------------

    def answered(self, ids: Iterable[int]) -> None:
        """A definite answer per message (accepted, refused, retry later): the store has it now."""
        for i in ids:
            self._doubt.pop(i, None)
            self._attempts.pop(i, None)

    def settle(self, ids: Iterable[int]) -> None:
        """Final status (callback, poll) or cancelled: never sent again by this route."""
        for i in ids:
            self._settled[i] = None
            self._doubt.pop(i, None)
            self._attempts.pop(i, None)
        while len(self._settled) > self.settled_memory:
            self._settled.popitem(last=False)

    def unavailable(self, ids: Collection[int], now: float) -> Resend:
        """The request did not reach the provider: safe to send again, after a back-off."""
        return Resend(tuple(ids), now + self._backoff(self._bump(ids)))

    def lost(self, ids: Collection[int], now: float) -> Resend | Ask:
        """The request may have reached the provider; its answer did not reach us."""
        if not self.can_ask:
            return Resend(tuple(ids), now + self._backoff(self._bump(ids)))  # at-least-once: counted by the route
        for i in ids:
            self._doubt.setdefault(i, _Doubt())
        return Ask(tuple(ids), now)

    def duplicate(self, ids: Collection[int], now: float) -> Ask | Keep:
        """"Duplicate request": the provider has an identical request. Never send; ask."""
        if not self.can_ask:
            self.answered(ids)
            return Keep(tuple(ids))
        for i in ids:
            self._doubt.setdefault(i, _Doubt()).duplicate = True
        return Ask(tuple(ids), now)

    def ask_failed(self, ids: Collection[int], now: float) -> Ask:
        """Asking got no answer either: ask again later, for as long as it takes. Never resend blind."""
        asks = 0
        for i in ids:
            d = self._doubt.setdefault(i, _Doubt())
            d.asks += 1
            asks = max(asks, d.asks)
        return Ask(tuple(ids), now + self._backoff(asks - 1))

    def asked(self, found: Mapping[int, bool], now: float) -> list[Decision]:
        """The provider's answer: ``found[id]`` says whether it has the message."""
        keep, resend, resend_late = [], [], []
        for i, has in found.items():
            if i in self._settled:
                continue
            d = self._doubt.pop(i, _Doubt())
            if has:
                keep.append(i)
            elif d.duplicate:  # error 9 was the "too many at once" kind: one more try, past the window
                resend_late.append(i)
            else:
                resend.append(i)
        out: list[Decision] = []
        if keep:
            self.answered(keep)
            out.append(Keep(tuple(keep)))
        if resend:
            out.append(Resend(tuple(resend), now))
        if resend_late:
            out.append(Resend(tuple(resend_late), now + min(self.duplicate_window, self.retry_max)))
        return out

    # --- helpers ---------------------------------------------------------------------

    def _bump(self, ids: Iterable[int]) -> int:
        attempt = 0
        for i in ids:
            attempt = max(attempt, self._attempts.get(i, 0))
            self._attempts[i] = self._attempts.get(i, 0) + 1
        return attempt

    def _backoff(self, attempt: int) -> float:
        """``attempt`` counts from 0 here: the first resend waits ``retry_min``."""
        return backoff(attempt + 1, self.retry_min, self.retry_max, self.rng)
