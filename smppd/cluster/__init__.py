"""Several daemons on one PostgreSQL: who owns which route and which portal's outbox.

* ``policy``: the sans-I/O lease rules (when a node may submit, when it must stop),
  taking ``now`` and events, tested without sockets;
* ``fence``: the lease table, the fencing check every owned write runs in its own
  transaction, and the context that carries a route's or pusher's token to the store;
* ``lease``: the asyncio shell: one dedicated PostgreSQL connection per node holding
  advisory locks and renewing lease rows;
* ``bell``: LISTEN/NOTIFY, so a route's owner hears of posts another node stored;
* ``ownership``: what the daemon hands the keeper (start this, stop that) and the
  feeding of an owned route;
* ``store``: ``ClusterStore``, the store whose owned operations are fenced.

SQLite means one machine: none of this runs, nothing changes.
"""

from __future__ import annotations

from .fence import Fence, Fenced, current_fence, fenced, lease_name, owning
from .ownership import Ownership, default_node
from .policy import LeasePolicy, LeaseTiming, Step
from .store import ClusterStore

__all__ = ["ClusterStore", "Fence", "Fenced", "LeasePolicy", "LeaseTiming", "Ownership", "Step", "current_fence",
           "default_node", "fenced", "lease_name", "owning"]
