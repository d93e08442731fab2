"""The fencing token: a node that lost a lease cannot write that route's or portal's state.

The lease keeper stops the work before the lease can be taken (``policy``), but a stop is
a request to a running task; a write already queued in the store's writer, or a node
paused for longer than its lease (a VM stall, a GC pause), would still land after another
node took over. So every write made on behalf of an owned route or portal runs, in its own
transaction, behind a check of the lease row: ``SELECT token ... FOR SHARE`` that must
read the token the writer was given. FOR SHARE makes a takeover's ``UPDATE lease`` wait
for that transaction, so a check that passed still holds at COMMIT.

Which writes are fenced is decided by *where they come from*, not by a list of store
methods: the daemon starts a route's or pusher's task inside ``owning(fence)``; asyncio
copies the context into every task that one starts (the binds, the background writes),
and the store wraps each operation queued from that context (``fenced``). A receipt
forwarded by any node's shim, or a post taken by any node, carries no fence: those are
facts from outside that every node records in the shared store.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

# Created by the keeper at start on every node (idempotent), not by the store's migrations:
# SQLite never has it, and it is the cluster's own table.
LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY,             -- 'route:<name>' or 'portal:<member_id>'
    node TEXT NOT NULL,                -- [daemon] node of the holder
    token BIGINT NOT NULL,             -- the fencing token: +1 at every acquisition
    expires_at TIMESTAMPTZ NOT NULL,   -- database clock; another node may take it after this
    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""

_CHECK = "SELECT token FROM lease WHERE name = %s FOR SHARE"


class Fenced(RuntimeError):
    """This node's lease on the name was taken over: the write was not made."""

    def __init__(self, name: str, token: int, current: int | None) -> None:
        super().__init__(f"{name}: lease token {token} is stale (now {current}); write refused")
        self.name = name
        self.token = token
        self.current = current


@dataclass(frozen=True)
class Fence:
    name: str  # the lease row's name
    token: int


def lease_name(kind: str, key: str) -> str:
    """One spelling of a lease name: ``route:<name>``, ``portal:<member_id>``."""
    return f"{kind}:{key}"


_current: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("smppd_fence", default=None)


def current_fence() -> Fence | None:
    """The fence of the task that queues a store operation, if it runs owned work."""
    return _current.get()


@contextmanager
def owning(fence: Fence) -> Iterator[None]:
    """Tasks created inside carry ``fence`` (and so does everything they create)."""
    reset = _current.set(fence)
    try:
        yield
    finally:
        _current.reset(reset)


def check(conn: Any, fence: Fence) -> None:
    """Raise ``Fenced`` unless the lease row still carries ``fence.token``; lock it FOR SHARE."""
    row = conn.execute(_CHECK, (fence.name,)).fetchone()
    current = None if row is None else int(row[0])
    if current != fence.token:
        raise Fenced(fence.name, fence.token, current)


def fenced(op: Callable[[Any], T], fence: Fence) -> Callable[[Any], T]:
    """``op`` behind the check, in the same transaction (the writer gives each op its own
    rollback when one raises, so a refused op writes nothing and spares its group)."""

    def run(conn: Any) -> T:
        check(conn, fence)
        return op(conn)

    return run
