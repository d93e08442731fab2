"""The asyncio shell of the lease policy: one dedicated PostgreSQL connection per node.

Per lease name the node holds a session-level advisory lock while it owns the name (a
contender takes it only for the moment of an attempt) and a row in ``lease`` whose
``expires_at`` it pushes forward every ``renew`` seconds. A takeover needs the row to
have expired by the database's clock, and bumps the fencing token. The policy decides;
this module only sends statements, measures when they were sent, and runs the start and
stop callbacks in order (a stop never overtakes the start it undoes).

A watchdog task applies the deadlines on its own: a statement stuck on a dead network
cannot keep a node submitting past its fence deadline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import structlog

from ..store.leases import LEASE_ERRORS, LOCK_CLASS, LeaseConnection
from .fence import Fence
from .policy import LeasePolicy, LeaseTiming, Step

log = structlog.get_logger(__name__)

WATCH_INTERVAL = 0.1

Start = Callable[[Fence], Awaitable[None]]
Stop = Callable[[str, str], Awaitable[None]]  # (name, reason)

@dataclass
class _Lease:
    name: str
    policy: LeasePolicy
    start: Start
    stop: Stop
    next_at: float = 0.0
    locked_on: int = -1  # the connection generation holding our advisory lock
    running: bool = False  # the start callback was called and no stop since
    chain: asyncio.Task[None] | None = None  # the last start/stop callback, awaited by the next
    wanted: bool = True


@dataclass
class LeaseFigures:
    """Counters for metrics and ``smppd status``: lease churn is an alert (ops/metrics)."""

    # (lease, change) -> count; change: gained, or why it ended: fenced (our own deadline),
    # lost (the row said another owner), released (we stopped)
    changes: dict[tuple[str, str], int] = field(default_factory=dict)
    connection_losses: int = 0

    def count(self, lease: str, change: str) -> None:
        self.changes[(lease, change)] = self.changes.get((lease, change), 0) + 1

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, change), n in self.changes.items():
            out[change] = out.get(change, 0) + n
        return out


class LeaseKeeper:
    """Keeps the leases this node wants: acquires, renews, self-fences, releases."""

    def __init__(self, conninfo: str, node: str, timing: LeaseTiming | None = None, *,
                 clock: Callable[[], float] = time.monotonic, statement_timeout: float | None = None) -> None:
        self.conninfo = conninfo
        self.node = node
        self.timing = timing or LeaseTiming()
        self.clock = clock
        # Longer than a renewal interval: an event loop busy for a moment (a route loading its
        # queue) must not read as a lost connection. The fence deadline decides safety anyway.
        self.statement_timeout = statement_timeout or max(self.timing.renew, self.timing.ttl - self.timing.margin - self.timing.renew)
        self.figures = LeaseFigures()
        self._leases: dict[str, _Lease] = {}
        self._conn: LeaseConnection | None = None
        self._generation = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._round_lock = asyncio.Lock()  # close() waits for a round in flight: it may acquire

    # --- what the daemon asks -------------------------------------------------------

    def want(self, name: str, start: Start, stop: Stop) -> None:
        """Contend for ``name``: ``start(fence)`` when won, ``stop(name, reason)`` when lost."""
        if name in self._leases and self._leases[name].wanted:
            return
        self._leases[name] = _Lease(name, LeasePolicy(self.timing), start, stop)
        self._wake.set()

    async def unwant(self, name: str) -> None:
        """Stop contending for ``name``: stop its work if it runs, then release the row."""
        lease = self._leases.pop(name, None)
        if lease is None:
            return
        await self._release(lease)

    async def _release(self, lease: _Lease) -> None:
        token = lease.policy.token
        if lease.policy.held:
            self._apply(lease, lease.policy.released(self.clock()))
        if lease.chain is not None:
            await asyncio.gather(lease.chain, return_exceptions=True)
        conn = self._conn
        if token is not None and conn is not None and not conn.closed:
            try:
                await conn.release(lease.name, self.node, token)
                if lease.locked_on == self._generation:
                    await conn.unlock(LOCK_CLASS, lease.name)
            except LEASE_ERRORS:
                pass  # the row expires by itself

    def contended(self) -> dict[str, bool]:
        """Every lease this node wants: held here or not (the metrics' smppd_lease_held)."""
        return {n: l.policy.held for n, l in self._leases.items()}

    def owned(self) -> dict[str, int]:
        """The names this node holds now, with their tokens."""
        return {n: l.policy.token for n, l in self._leases.items() if l.policy.held and l.policy.token is not None}

    def running(self, name: str) -> bool:
        lease = self._leases.get(name)
        return lease is not None and lease.running

    async def owners(self) -> list[dict[str, Any]]:
        """Every lease row (every node's), for ``smppd status``; [] when the database is unreachable."""
        conn = self._conn
        if conn is None or conn.closed:
            return []
        try:
            rows = await conn.owners()
        except LEASE_ERRORS:
            return []
        return [{"name": r[0], "node": r[1], "token": r[2], "live": r[3], "expires_in": round(r[4], 1),
                 "held_for": round(r[5], 1)} for r in rows]

    # --- the loop -----------------------------------------------------------------

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._watch(), name="lease-watchdog")
        try:
            while not self._closing:
                async with self._round_lock:
                    if self._closing:
                        break
                    await self._round()
                now = self.clock()
                due = min((l.next_at for l in self._leases.values()), default=now + self.timing.retry)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, due - now))
                except TimeoutError:
                    pass
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    async def close(self) -> None:
        """Stop every owned work first, then clear our rows so another node takes over at once."""
        self._closing = True
        self._wake.set()
        async with self._round_lock:
            pass
        await asyncio.gather(*(self._release(lease) for lease in list(self._leases.values())))
        await self._disconnect()

    async def _round(self) -> None:
        conn = await self._connection()
        now = self.clock()
        if conn is None:
            for lease in self._leases.values():
                self._apply(lease, lease.policy.connection_lost(now))
            return
        for lease in list(self._leases.values()):
            if self._closing or lease.next_at > self.clock():
                continue
            try:
                if lease.policy.held:
                    await self._renew(lease)
                else:
                    await self._acquire(lease)
            except LEASE_ERRORS as e:
                log.warning("lease_connection_lost", node=self.node, error=type(e).__name__)
                self.figures.connection_losses += 1
                await self._disconnect()
                now = self.clock()
                for other in self._leases.values():
                    self._apply(other, other.policy.connection_lost(now))
                return

    async def _acquire(self, lease: _Lease) -> None:
        conn = self._live()
        sent = self.clock()
        if not await self._lock(lease):
            self._apply(lease, lease.policy.tick(self.clock()))
            return
        token = await conn.take_over(lease.name, self.node, self.timing.ttl)
        if token is None:  # held elsewhere and not expired: let go of the lock until the next try
            await conn.unlock(LOCK_CLASS, lease.name)
            lease.locked_on = -1
            self._apply(lease, lease.policy.tick(self.clock()))
            return
        self._apply(lease, lease.policy.acquired(self.clock(), token, sent))

    async def _renew(self, lease: _Lease) -> None:
        conn = self._live()
        token = lease.policy.token
        assert token is not None
        sent = self.clock()
        await self._lock(lease)  # after a reconnect: take our lock back if nobody is mid-attempt
        renewed = await conn.renew(lease.name, self.node, token, self.timing.ttl)
        now = self.clock()
        self._apply(lease, lease.policy.renewed(now, sent) if renewed else lease.policy.lost(now))

    async def _lock(self, lease: _Lease) -> bool:
        if lease.locked_on == self._generation:
            return True
        if await self._live().try_lock(LOCK_CLASS, lease.name):
            lease.locked_on = self._generation
            return True
        return False

    async def _watch(self) -> None:
        """Deadlines on their own clock: a hung statement must not delay a self-fence."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = self.clock()
            for lease in list(self._leases.values()):
                if lease.policy.held:
                    step = lease.policy.tick(now)
                    if step.stop:
                        self._apply(lease, step)

    def _apply(self, lease: _Lease, step: Step) -> None:
        lease.next_at = step.next_at
        if step.start:
            token = lease.policy.token
            assert token is not None
            fence = Fence(lease.name, token)
            self.figures.count(lease.name, "gained")
            log.info("lease_gained", lease=lease.name, node=self.node, fencing_token=token)
            lease.running = True
            self._chain(lease, lease.start(fence))
        if step.stop:
            self.figures.count(lease.name, step.reason or "lost")
            log.warning("lease_lost", lease=lease.name, node=self.node, reason=step.reason)
            lease.running = False
            self._chain(lease, lease.stop(lease.name, step.reason or "lost"))

    def _chain(self, lease: _Lease, work: Awaitable[None]) -> None:
        before = lease.chain

        async def after() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            try:
                await work
            except Exception as e:  # a route that fails to start or stop must not stop the keeper
                log.error("lease_callback_failed", lease=lease.name, error=repr(e))

        lease.chain = asyncio.create_task(after(), name=f"lease-{lease.name}")

    # --- the connection ---------------------------------------------------------------

    async def _connection(self) -> LeaseConnection | None:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = await LeaseConnection.open(self.conninfo, f"smppd-lease-{self.node}", self.statement_timeout)
        except LEASE_ERRORS as e:
            log.warning("lease_connect_failed", node=self.node, error=type(e).__name__)
            return None
        self._conn = conn
        self._generation += 1
        return conn

    def _live(self) -> LeaseConnection:
        if self._conn is None:
            raise ConnectionError("no lease connection")
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
