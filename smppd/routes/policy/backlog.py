"""Which open messages of a route wait in memory and which stay in the store (spill).

Why: a day-long operator outage is a million queued messages; held in memory they
would grow the daemon's RSS with the backlog. At most ``memory`` segments wait in
the route's queue; newer messages stay in the store (they are committed there
before the route ever sees them) and are read back a page at a time, oldest first,
as the queue drains. Sans-I/O: the route reports its queue depth and what it read,
and ``Backlog`` answers whether to keep a message and when to read the next page.

Order is kept: while anything is left in the store, every newer message waits
there too. Older ids (a hold released, `smppd retry`) are always queued, since a
page only reads ids above the highest ever queued.
"""

from __future__ import annotations

from dataclasses import dataclass

MEMORY_QUEUE = 20_000
REFILL_PAGE = 5_000


@dataclass(frozen=True, slots=True)
class Refill:
    """Read the store's open messages of the route with ids above ``after_id``, ``limit`` of them."""

    after_id: int
    limit: int
    spilled_before: int  # how many were left to the store when the read began


class Backlog:
    def __init__(self, memory: int | None = None, page: int | None = None) -> None:
        self.memory = MEMORY_QUEUE if memory is None else memory  # read at construction: tests shrink them
        self.page = REFILL_PAGE if page is None else page
        self.spilled = False  # open messages of the route are in the store but not in memory
        self.loaded_max = 0  # highest row id ever queued in memory
        self.left_in_store = 0  # messages left to the store while spilled, since start
        self._refilling = False

    def admit(self, row_id: int, depth: int) -> bool:
        """A message arrives with ``depth`` segments queued: True to queue it, False to leave it to the store."""
        if row_id > self.loaded_max:
            if self.spilled or depth >= self.memory:
                self.spilled = True
                self.left_in_store += 1
                return False
            self.loaded_max = row_id
        return True

    def loaded(self, count: int) -> None:
        """At start the route read ``count`` messages, at most ``memory``: a full read means more wait."""
        if count >= self.memory:
            self.spilled = True

    def refill(self, depth: int) -> Refill | None:
        """The page to read now, or None (nothing waits in the store, a read is running, the queue is full)."""
        if not self.spilled or self._refilling or depth >= self.memory // 2:
            return None
        self._refilling = True
        return Refill(self.loaded_max, self.page, self.left_in_store)

    def refilled(self, request: Refill, ids: list[int]) -> None:
        """The page came back: the ids the route queued from it (``failed`` when the read raised)."""
        if ids:
            self.loaded_max = max(self.loaded_max, max(ids))
        # Caught up only if the page was short and nothing was left to the store meanwhile
        # (a message committed after the SELECT has a higher id: the next page gets it).
        if len(ids) < request.limit and self.left_in_store == request.spilled_before:
            self.spilled = False
        self._refilling = False

    def failed(self) -> None:
        """The read failed: the next drain tries again."""
        self._refilling = False
