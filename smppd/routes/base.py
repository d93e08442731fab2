"""The one face every route kind shows the daemon, reload, admin and metrics.

Why a Protocol: the daemon used to hold routes as ``Any`` and probe them with
``hasattr`` (``route.queue``, ``route.connection``), which only SMPP routes
had.  Each probe was a silent fork: reload read ``new.queue`` and an SMS.ru
route never started after SIGHUP, ``smppd cancel`` failed with an internal
error, ``smppd status`` called every HTTP route DOWN.  With this interface a
kind that lacks a method fails at once, in the tests, not on a customer's
SIGHUP.  Nothing outside a route reads a kind-specific attribute.
"""

from __future__ import annotations

from typing import Any, Collection, Protocol, runtime_checkable

from ..config import RouteConfig
from ..model import OpenMessage


@runtime_checkable
class Route(Protocol):
    """A queue of messages for one operator or provider, and what comes back from it."""

    name: str
    kind: str  # "smpp", "smsru", "smsc": for humans (status, logs), never for branching
    stats: dict[str, int]  # monotonic counters, exported as smppd_route_* metrics

    @property
    def depth(self) -> int:
        """Messages (HTTP) or segments (SMPP) waiting in memory."""
        ...

    @property
    def inflight(self) -> int:
        """Requests or submit_sm on the wire, awaiting an answer."""
        ...

    @property
    def up(self) -> bool:
        """Can send now: an SMPP bind is up; an HTTP provider answered its last request."""
        ...

    @property
    def trouble(self) -> str | None:
        """Why the route is not up, in words an admin acts on; None while it is up."""
        ...

    @property
    def binds_made(self) -> int | None:
        """Successful binds since start; None for a kind without binds."""
        ...

    @property
    def window_size(self) -> int | None:
        """The configured window (requests in flight at most); None when the kind has none."""
        ...

    def enqueue(self, message: OpenMessage) -> None:
        """Take a message from intake, holds or `smppd retry`."""
        ...

    async def load_open(self) -> int:
        """At start: queue what the store says this route never finished; how many."""
        ...

    async def resume(self) -> int:
        """After a reload swapped this route in: like ``load_open``, but skipping what
        is already in memory (dispatched while the old route drained)."""
        ...

    async def run(self) -> None:
        """Send until ``stop``."""
        ...

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work, let what is on the wire finish (bounded); open work stays in the store."""
        ...

    def retune(self, cfg: RouteConfig) -> None:
        """A reload changed only the keys ``reload.LIVE_ROUTE_KEYS`` names: apply without reconnecting."""
        ...

    def status(self) -> dict[str, Any]:
        """What `smppd status` shows: at least ``kind``, ``up``, ``queue``, ``inflight``."""
        ...

    def busy_segments(self) -> set[tuple[int, int]]:
        """(row id, segment) held in memory: `smppd retry` must not add them twice."""
        ...

    def cancel(self, row_ids: Collection[int]) -> int:
        """Forget these messages (`smppd cancel`): out of memory, never sent; how many were held.
        A request already on the wire cannot be called back; its answer is recorded, not applied."""
        ...
