"""The fencing token: a node that lost a lease cannot write that route's or portal's state.

The lease keeper stops the work before the lease can be taken (``policy``), but a stop is
a request to a running task; a write already queued in the store's writer, or a node
paused for longer than its lease (a VM stall, a GC pause), would still land after another
node took over. So every write made on behalf of an owned route or portal runs, in its own
transaction, behind a check of the lease row: ``SELECT token ... FOR KEY SHARE`` that must
read the token the writer was given. A takeover locks the row ``FOR UPDATE`` before it
bumps the token, which waits for that transaction: a check that passed still holds at
COMMIT. (A renewal, a plain UPDATE of ``expires_at``, does not wait for the writer.)

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

from ..store.leases import lease_token

T = TypeVar("T")

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


def adopt(fence: Fence) -> None:
    """The current task (and every task it creates from now on) carries ``fence``: for a
    lease's start callback, which runs in a task of its own."""
    _current.set(fence)


@contextmanager
def owning(fence: Fence) -> Iterator[None]:
    """Tasks created inside carry ``fence`` (and so does everything they create)."""
    reset = _current.set(fence)
    try:
        yield
    finally:
        _current.reset(reset)


def check(conn: Any, fence: Fence) -> None:
    """Raise ``Fenced`` unless the lease row still carries ``fence.token``; lock it FOR KEY SHARE."""
    current = lease_token(conn, fence.name)
    if current != fence.token:
        raise Fenced(fence.name, fence.token, current)


class FencedWrites:
    """Put before ``Store`` in a class's bases (``class ClusterStore(FencedWrites, Store)``):
    every operation queued from owned work runs behind its fence. Reads too: a node that
    lost a route has no business loading its queue either."""

    def execute(self, op: Callable[[Any], T], policy: int = 0) -> Any:
        fence = _current.get()
        if fence is not None:
            op = fenced(op, fence)
        return super().execute(op, policy)  # type: ignore[misc]


def fenced(op: Callable[[Any], T], fence: Fence) -> Callable[[Any], T]:
    """``op`` behind the check, in the same transaction (the writer gives each op its own
    rollback when one raises, so a refused op writes nothing and spares its group)."""

    def run(conn: Any) -> T:
        check(conn, fence)
        return op(conn)

    return run
