"""The store as a node of a cluster sees it: every operation of owned work is fenced."""

from __future__ import annotations

from ..store import Store
from .fence import FencedWrites


class ClusterStore(FencedWrites, Store):
    """``Store`` on PostgreSQL with several nodes: see ``fence`` for which writes check a token."""
