"""The lease rules, without sockets: when a node may run a route or a pusher, and when it must stop.

Why a policy of its own: the one promise that matters (an operator capping binds never
sees two nodes bound for one route, a portal's REST budget is never spent twice) rests on
timing alone, and timing is only testable when ``now`` is an argument.

The rule: a renewal sent at local time ``sent`` sets the row's ``expires_at`` to the
database's ``now() + ttl``, and the database's clock reads ``sent`` or later when it runs
the statement, so no other node can take the lease before ``sent + ttl``. The holder stops
at ``sent + ttl - margin`` unless a later renewal moved that deadline: it has stopped (and
unbound, within ``margin``) before anyone may start. A lost connection changes nothing in
that arithmetic, so a short blip costs nothing and a long one fences the node in time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class LeaseTiming:
    """Seconds. ``ttl`` bounds the takeover after a crash (about ``ttl + retry``);
    ``margin`` must cover stopping a route (its unbind) and clock rate drift."""

    ttl: float = 6.0
    renew: float = 1.0  # a held lease is renewed this often
    retry: float = 0.5  # a lease held elsewhere (or lost) is tried this often
    margin: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew < self.ttl - self.margin:
            raise ValueError("lease timing: renew must be shorter than ttl - margin, or a held lease self-fences")
        if self.margin <= 0 or self.retry <= 0:
            raise ValueError("lease timing: margin and retry must be positive")


class State(enum.Enum):
    IDLE = "idle"  # not ours: try to acquire every ``retry``
    HELD = "held"  # ours: run, renew every ``renew``


class Step(NamedTuple):
    """What the shell does after an event: start or stop the work, and when to call again."""

    start: bool  # begin running the route or pusher (edge, once per acquisition)
    stop: bool  # stop it now (edge, once per loss)
    next_at: float  # the next renewal or attempt, or the fence deadline if that is sooner
    reason: str = ""  # why a stop happened: "fenced" (deadline), "lost" (the row says another owner)


class LeasePolicy:
    """One lease as one node sees it."""

    def __init__(self, timing: LeaseTiming) -> None:
        self.timing = timing
        self.state = State.IDLE
        self.token: int | None = None
        self.fence_at = 0.0  # local time by which the work must have stopped, unless renewed
        self.connected = True

    @property
    def held(self) -> bool:
        return self.state is State.HELD

    def _next(self, now: float) -> float:
        if self.state is State.HELD:
            return min(now + self.timing.renew, self.fence_at)
        return now + self.timing.retry

    def acquired(self, now: float, token: int, sent: float) -> Step:
        """The row is ours with ``token`` (the statement was sent at local time ``sent``)."""
        self.connected = True
        self.state, self.token = State.HELD, token
        self.fence_at = sent + self.timing.ttl - self.timing.margin
        if self.fence_at <= now:  # the answer came too late to be of use: never start
            self.state, self.token = State.IDLE, None
            return Step(False, False, now + self.timing.retry, "fenced")
        return Step(True, False, self._next(now))

    def renewed(self, now: float, sent: float) -> Step:
        self.connected = True
        if self.state is not State.HELD:
            return Step(False, False, self._next(now))
        self.fence_at = max(self.fence_at, sent + self.timing.ttl - self.timing.margin)
        return self.tick(now)

    def renew_failed(self, now: float) -> Step:
        """The renewal did not get through (an error, a timeout): keep running until the deadline."""
        return self.tick(now, retry_soon=True)

    def connection_lost(self, now: float) -> Step:
        """The lease connection is gone (its advisory locks with it): the deadline still decides."""
        self.connected = False
        return self.tick(now, retry_soon=True)

    def lost(self, now: float) -> Step:
        """The row says the lease is no longer ours (expired and taken, or released): stop now."""
        if self.state is not State.HELD:
            return Step(False, False, self._next(now))
        return self._lose(now, "lost")

    def released(self, now: float) -> Step:
        """We give the lease up (the daemon stops): stop, then the shell clears the row."""
        if self.state is not State.HELD:
            return Step(False, False, self._next(now))
        return self._lose(now, "released")

    def tick(self, now: float, *, retry_soon: bool = False) -> Step:
        if self.state is State.HELD and now >= self.fence_at:
            return self._lose(now, "fenced")
        nxt = self._next(now)
        if retry_soon and self.state is State.HELD:
            nxt = min(nxt, now + min(self.timing.retry, self.timing.renew))
        return Step(False, False, nxt)

    def _lose(self, now: float, reason: str) -> Step:
        self.state, self.token = State.IDLE, None
        return Step(False, True, now + self.timing.retry, reason)
