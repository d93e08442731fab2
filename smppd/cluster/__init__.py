"""Several daemons on one PostgreSQL: who owns which route and which portal's outbox.

* ``policy``: the sans-I/O lease rules (when a node may submit, when it must stop),
  taking ``now`` and events, tested without sockets;
* ``fence``: the lease table, the fencing check every owned write runs in its own
  transaction, and the context that carries a route's or pusher's token to the store;
* ``lease``: the asyncio shell: one dedicated PostgreSQL connection per node holding
  advisory locks and renewing lease rows;
* ``ownership``: what the daemon hands the keeper (start this, stop that) and the
  wake-up of an owner when another node stored work for it.

SQLite means one machine: none of this runs, nothing changes.
"""

from __future__ import annotations

from .fence import Fence, Fenced, current_fence, fenced, lease_name
from .policy import LeasePolicy, LeaseTiming, Step

__all__ = ["Fence", "Fenced", "LeasePolicy", "LeaseTiming", "Step", "current_fence", "fenced", "lease_name"]
