"""What the daemon hands the cluster: work that runs only where its lease is held.

The daemon names each piece of owned work (a route, a portal's pusher, the holds
worker) with a start and a stop; this module contends for the lease, starts the work
inside the lease's fence (``fence.owning``: every store write the work makes checks the
token), stops it when the lease is lost, and routes the wake-ups of the work bell to
the owner of a route. It never imports the daemon: the daemon passes callables in.

Messages a route's owner never heard about (a ring lost to a reconnect) are found by a
slow safety read: a message seen open, and held by no route in memory, in two reads
``SAFETY_READ`` apart is queued. One read alone could race a local post or a resp in
flight; a message that is still open and idle ten seconds later has neither excuse.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Protocol, TypeVar

import structlog

from .bell import WorkBell
from .fence import Fence, adopt
from .lease import LeaseKeeper
from .policy import LeaseTiming

log = structlog.get_logger(__name__)

H = TypeVar("H")
SAFETY_READ = 10.0
# Rings heard for a route this node does not run are kept this long: a node that wins the
# route moments later feeds them (posts committed after its first read of the queue).
RING_MEMORY = 30.0
RING_MEMORY_MAX = 100_000


def default_node() -> str:
    """``[daemon] node`` when unset: the host name, which differs per machine."""
    return socket.gethostname()


class Fed(Protocol):
    """A running route as the feeding sees it (a subset of ``routes.base.Route``)."""

    def enqueue(self, message: Any) -> None: ...
    def busy_segments(self) -> set[tuple[int, int]]: ...


class OpenReader(Protocol):
    """The store's read of a route's open messages (``Store.open_messages``)."""

    async def open_messages(self, route: str, *, after_id: int = 0, limit: int | None = None) -> list[Any]: ...


@dataclass
class Work(Generic[H]):
    start: Callable[[], Awaitable[H]]
    stop: Callable[[H, str], Awaitable[None]]
    handle: H | None = None


class Ownership:
    """Leases for the daemon's owned work, and the feeding of owned routes."""

    def __init__(self, conninfo: str, node: str, store: OpenReader, timing: LeaseTiming | None = None) -> None:
        self.node = node
        self.store = store
        self.keeper = LeaseKeeper(conninfo, node, timing)
        self.bell = WorkBell(conninfo, node, self._heard)
        self._work: dict[str, Work[Any]] = {}
        self._routes: dict[str, Fed] = {}  # route name -> the running route, on its owner only
        self._locks: dict[str, asyncio.Lock] = {}
        self._idle_open: dict[str, set[int]] = {}  # the safety read's previous sighting per route
        self._tasks: list[asyncio.Task[Any]] = []
        self._unowned_rings: dict[str, deque[tuple[float, int]]] = {}
        self.fed = 0  # messages queued from rings
        self.rescued = 0  # messages queued by the safety read (a lost ring)

    # --- owned work -------------------------------------------------------------------

    def own(self, name: str, start: Callable[[], Awaitable[H]], stop: Callable[[H, str], Awaitable[None]]) -> None:
        """Run ``start()`` (inside the lease's fence) while this node holds ``name``."""
        work: Work[H] = Work(start, stop)
        self._work[name] = work

        async def won(fence: Fence) -> None:
            adopt(fence)  # this callback runs in a task of its own: the fence stays in it
            work.handle = await work.start()

        async def lost(lease: str, reason: str) -> None:
            handle, work.handle = work.handle, None
            if handle is not None:
                await work.stop(handle, reason)

        self.keeper.want(name, won, lost)

    async def disown(self, name: str) -> None:
        """Stop contending (a portal uninstalled): stop the work if it runs, release the row."""
        await self.keeper.unwant(name)
        self._work.pop(name, None)

    def running(self, name: str) -> bool:
        work = self._work.get(name)
        return work is not None and work.handle is not None

    def wants(self, name: str) -> bool:
        return name in self._work

    def fence_of(self, name: str) -> Fence | None:
        """The fence of a lease this node holds now, for work it starts anew under it (a reload)."""
        token = self.keeper.owned().get(name)
        return None if token is None else Fence(name, token)

    def replace(self, name: str, handle: Any) -> None:
        """The running work of ``name`` is now ``handle`` (a reload swapped the route): the
        lease's stop gets this one."""
        work = self._work.get(name)
        if work is not None and work.handle is not None:
            work.handle = handle

    # --- routes -------------------------------------------------------------------------

    def route_started(self, name: str, route: Fed) -> None:
        self._routes[name] = route
        kept = self._unowned_rings.pop(name, None)
        if kept:
            since = time.monotonic() - RING_MEMORY
            self._spawn_feed(name, [i for at, i in kept if at >= since])

    def route_stopped(self, name: str) -> None:
        self._routes.pop(name, None)
        self._idle_open.pop(name, None)

    def route_running(self, name: str) -> bool:
        return name in self._routes

    def ring(self, route: str, row_id: int) -> None:
        """A message for a route this node does not run: wake its owner."""
        self.bell.ring(route, row_id)

    def _heard(self, route: str, ids: list[int]) -> None:
        if route in self._routes:
            self._spawn_feed(route, ids)
            return
        kept = self._unowned_rings.setdefault(route, deque(maxlen=RING_MEMORY_MAX))
        now = time.monotonic()
        kept.extend((now, i) for i in ids)
        while kept and kept[0][0] < now - RING_MEMORY:
            kept.popleft()

    def _spawn_feed(self, route: str, ids: list[int]) -> None:
        if ids:
            self._tasks.append(asyncio.create_task(self._feed(route, ids)))
            self._tasks = [t for t in self._tasks if not t.done()]

    async def _feed(self, route: str, ids: list[int]) -> None:
        """Queue the rung messages that are still open and that the route does not hold.

        "Does not hold" is asked before the read and after it: a submit in flight when the
        read was queued may have its resp (and its write, queued behind the read) by the
        time the read answers "open".
        """
        async with self._locks.setdefault(route, asyncio.Lock()):
            target = self._routes.get(route)
            if target is None:
                return
            before = {mid for mid, _ in target.busy_segments()}
            found = await asyncio.gather(*(self.store.open_messages(route, after_id=i - 1, limit=1) for i in ids))
            if self._routes.get(route) is not target:
                return
            busy = before | {mid for mid, _ in target.busy_segments()}
            for i, page in zip(ids, found):
                if page and page[0].id == i and i not in busy:
                    target.enqueue(page[0])
                    self.fed += 1

    async def _safety_reads(self) -> None:
        while True:
            await asyncio.sleep(SAFETY_READ)
            for route, target in list(self._routes.items()):
                async with self._locks.setdefault(route, asyncio.Lock()):
                    before = {mid for mid, _ in target.busy_segments()}
                    page = await self.store.open_messages(route, limit=10_000)
                    if self._routes.get(route) is not target:
                        continue
                    after = {mid for mid, _ in target.busy_segments()}
                    idle = {m.id for m in page} - before - after
                    seen = self._idle_open.get(route, set())
                    for m in page:
                        if m.id in idle and m.id in seen:
                            target.enqueue(m)
                            self.rescued += 1
                    self._idle_open[route] = idle - seen
                    if idle & seen:
                        log.warning("cluster_work_rescued", route=route, messages=len(idle & seen))

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.gather(self.keeper.run(), self.bell.run(), self._safety_reads())

    async def close(self) -> None:
        await self.keeper.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- what a scrape reads (ops.metrics.ClusterGauges) ------------------------------------

    def leases(self) -> dict[str, bool]:
        return self.keeper.contended()

    def lease_changes(self) -> dict[tuple[str, str], int]:
        return dict(self.keeper.figures.changes)

    @property
    def connection_losses(self) -> int:
        return self.keeper.figures.connection_losses

    async def status(self) -> dict[str, Any]:
        """What ``smppd status`` shows: this node, and who holds every lease."""
        return {"node": self.node, "owned": sorted(self.keeper.owned()), "leases": await self.keeper.owners(),
                "lease_changes": self.keeper.figures.totals(),
                "connection_losses": self.keeper.figures.connection_losses,
                "fed": self.fed, "rescued": self.rescued, "rung": self.bell.rung}
