"""Fire-and-forget tasks that are neither lost nor silent.

A route hands store writes and delayed requeues to the event loop so that
the protocol callbacks never wait; those tasks must stay referenced until
they end (asyncio keeps only weak references), must be awaitable at stop,
and must not fail without a log line.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

import structlog


class Background:
    def __init__(self, event: str, **context: Any) -> None:
        self.tasks: set[asyncio.Future[Any]] = set()
        self._event = event
        self._context = context
        self._log = structlog.get_logger(__name__)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.track(task)
        return task

    def track(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """A future someone else resolves (a store operation): kept, awaited at stop, logged if it fails."""
        self.tasks.add(fut)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, task: asyncio.Future[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error(self._event, error=repr(task.exception()), **self._context)
