"""The asyncio lease against a real, throwaway PostgreSQL: contention, self-fence, fencing tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from smppd.cluster.fence import Fence, Fenced, fenced
from smppd.store.leases import LEASE_SCHEMA, TAKEOVER_LOCK
from smppd.cluster.lease import LeaseKeeper
from smppd.cluster.policy import LeaseTiming


pytestmark = pytest.mark.integration

FAST = LeaseTiming(ttl=1.5, renew=0.25, retry=0.25, margin=0.6)


@pytest.fixture
def url(postgresql: Any) -> Iterator[str]:
    """A schema of its own on the session's throwaway cluster (tests/conftest.py)."""
    schema = postgresql.new_schema()
    try:
        yield postgresql.url(schema=schema)
    finally:
        postgresql.drop_schema(schema)


class Node:
    """A keeper and a log of what it was told to start and stop, with local times."""

    def __init__(self, conninfo: str, name: str, timing: LeaseTiming = FAST) -> None:
        self.keeper = LeaseKeeper(conninfo, name, timing)
        self.events: list[tuple[str, str, float, int | None]] = []
        self.task: asyncio.Task[None] | None = None

    def want(self, lease: str) -> None:
        async def start(fence: Fence) -> None:
            self.events.append(("start", fence.name, time.monotonic(), fence.token))

        async def stop(name: str, reason: str) -> None:
            self.events.append(("stop", name, time.monotonic(), None))

        self.keeper.want(lease, start, stop)

    def run(self) -> None:
        self.task = asyncio.create_task(self.keeper.run())

    async def crash(self) -> None:
        """kill -9 as PostgreSQL sees it: the session ends, nothing is released."""
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.keeper._disconnect()

    async def close(self) -> None:
        await self.keeper.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def started(self, lease: str) -> list[tuple[str, str, float, int | None]]:
        return [e for e in self.events if e[0] == "start" and e[1] == lease]


async def until(cond: Any, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def test_two_nodes_contend_one_owns_and_the_other_takes_over_after_a_crash(url: str) -> None:
    a, b = Node(url, "a"), Node(url, "b")
    for n in (a, b):
        n.want("route:mts")
        n.want("portal:p1")
    a.run()
    await until(lambda: len(a.keeper.owned()) == 2)
    b.run()
    await asyncio.sleep(FAST.ttl * 2)  # b tries many times meanwhile, and never wins
    assert b.keeper.owned() == {} and b.events == []
    tokens = a.keeper.owned()
    rows = {r["name"]: r for r in await a.keeper.owners()}
    assert rows["route:mts"]["node"] == "a" and rows["route:mts"]["live"]

    crashed = time.monotonic()
    await a.crash()
    await until(lambda: len(b.keeper.owned()) == 2, timeout=FAST.ttl + 3)
    takeover = max(e[2] for e in b.events) - crashed
    assert takeover < FAST.ttl + FAST.retry + 0.5
    assert takeover > FAST.ttl - FAST.renew - 0.1  # not before a's lease could have expired
    for name, token in b.keeper.owned().items():
        assert token == tokens[name] + 1  # a takeover bumps the fencing token
    await b.close()


async def test_a_graceful_stop_hands_over_at_once(url: str) -> None:
    a, b = Node(url, "a"), Node(url, "b")
    a.want("route:x")
    b.want("route:x")
    a.run()
    await until(lambda: a.keeper.owned() != {})
    b.run()
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    await a.close()
    assert [e[0] for e in a.events] == ["start", "stop"]
    waited = await until(lambda: b.keeper.owned() != {}, timeout=3)
    assert waited < FAST.retry + 0.5  # no ttl to wait out: the row was released
    assert time.monotonic() - t0 < FAST.ttl
    await b.close()


async def test_a_node_that_loses_its_connection_stops_before_its_lease_can_be_taken(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(LEASE_SCHEMA)
        await admin.execute("DROP ROLE IF EXISTS node_a")
        await admin.execute("CREATE ROLE node_a LOGIN SUPERUSER")
        a = Node(url.replace("postgresql://smppd@", "postgresql://node_a@"), "a")
        b = Node(url, "b")
        a.want("route:life")
        b.want("route:life")
        a.run()
        await until(lambda: a.keeper.owned() != {})
        b.run()
        await asyncio.sleep(0.5)
        # The network goes away for a: its session ends and it cannot log in again.
        await admin.execute("ALTER ROLE node_a NOLOGIN")
        cut = time.monotonic()
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'node_a'")
        await until(lambda: b.started("route:life"), timeout=FAST.ttl + 3)
        a_stop = [e[2] for e in a.events if e[0] == "stop"]
        b_start = b.started("route:life")[0][2]
        assert a_stop, "a never fenced itself"
        assert a_stop[0] < b_start  # a stopped before b started
        assert b_start - a_stop[0] >= FAST.margin - 0.3  # with the margin to unbind in between
        assert a_stop[0] - cut < FAST.ttl  # a's own deadline, not b's takeover, stopped it
        assert a.keeper.figures.changes.get(("route:life", "fenced")) == 1
        await a.close()
        await b.close()
        await admin.execute("DROP OWNED BY node_a")
        await admin.execute("DROP ROLE node_a")


async def test_a_short_outage_of_the_lease_connection_keeps_the_owner(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        a, b = Node(url, "a"), Node(url, "b")
        a.want("route:blip")
        b.want("route:blip")
        a.run()
        await until(lambda: a.keeper.owned() != {})
        b.run()
        token = a.keeper.owned()["route:blip"]
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE application_name = 'smppd-lease-a'")
        await asyncio.sleep(FAST.ttl * 2)
        assert a.keeper.owned() == {"route:blip": token}  # reconnected and renewed the same row
        assert [e[0] for e in a.events] == ["start"] and b.events == []
        assert a.keeper.figures.connection_losses >= 1
        await a.close()
        await b.close()


class Qmark:
    """The store's SQL spelling ("?") on a bare psycopg connection, as the store's own does."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = None) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params)

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()


def test_the_fencing_token_refuses_a_stale_writer(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LEASE_SCHEMA)
        conn.execute("DROP TABLE IF EXISTS owned_state")
        conn.execute("CREATE TABLE owned_state (k TEXT PRIMARY KEY, v INT)")
        conn.execute("INSERT INTO owned_state VALUES ('x', 0)")
        conn.execute("INSERT INTO lease (name, node, token, expires_at) VALUES ('route:f', 'a', 4, now())"
                     " ON CONFLICT (name) DO UPDATE SET node = 'a', token = 4")

    def write(value: int) -> Any:
        def op(c: Any) -> int:
            return c.execute("UPDATE owned_state SET v = %s WHERE k = 'x'", (value,)).rowcount
        return op

    old = Fence("route:f", 4)
    with psycopg.connect(url) as raw_stale, psycopg.connect(url) as raw_newer:
        stale, newer = Qmark(raw_stale), Qmark(raw_newer)
        assert fenced(write(1), old)(stale) == 1
        # The check holds the lease row FOR KEY SHARE until COMMIT: the holder's renewal does
        # not wait for it, a takeover (FOR UPDATE first) does.
        newer.execute("SET lock_timeout = '200ms'")
        newer.execute("UPDATE lease SET expires_at = now() WHERE name = 'route:f'")
        newer.commit()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            newer.execute(TAKEOVER_LOCK.replace("%s", "'route:f'"))
        newer.rollback()
        stale.commit()
        newer.execute(TAKEOVER_LOCK.replace("%s", "'route:f'"))
        newer.execute("UPDATE lease SET node = 'b', token = token + 1 WHERE name = 'route:f'")
        newer.commit()
        with pytest.raises(Fenced) as e:
            fenced(write(2), old)(stale)
        assert e.value.current == 5
        stale.rollback()
        assert fenced(write(3), Fence("route:f", 5))(newer) == 1
        newer.commit()
        assert newer.execute("SELECT v FROM owned_state").fetchone() == (3,)


async def test_the_store_refuses_a_write_of_owned_work_whose_lease_moved_and_spares_the_rest(url: str) -> None:
    """ClusterStore: an operation queued from inside ``owning(fence)`` runs behind the fence
    check in the writer's transaction; a stale one fails alone, its group commits."""
    from smppd.cluster import ClusterStore, owning

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LEASE_SCHEMA)
        conn.execute("CREATE TABLE owned_state (k TEXT PRIMARY KEY, v INT)")
        conn.execute("INSERT INTO lease (name, node, token, expires_at) VALUES ('route:r', 'a', 2, now())")
    store = ClusterStore(url)
    await store.open()
    try:
        def put(k: str, v: int) -> Any:
            return lambda c: c.execute("INSERT INTO owned_state VALUES (?, ?)", (k, v)).rowcount

        with owning(Fence("route:r", 2)):
            assert await store.execute(put("current", 1)) == 1
        with psycopg.connect(url, autocommit=True) as conn:  # another node took the route over
            conn.execute("UPDATE lease SET node = 'b', token = 3 WHERE name = 'route:r'")
        with owning(Fence("route:r", 2)):
            stale = store.execute(put("stale", 2))
        unowned = store.execute(put("receipt", 3))  # a fact from outside: no fence, same group
        with pytest.raises(Fenced):
            await stale
        assert await unowned == 1
        with psycopg.connect(url) as conn:
            assert dict(conn.execute("SELECT k, v FROM owned_state").fetchall()) == {"current": 1, "receipt": 3}
    finally:
        await store.close()
