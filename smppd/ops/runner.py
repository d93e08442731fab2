"""What the daemon runs for its operators: metrics, the status journal, the admin methods.

Kept out of ``daemon.py`` so the daemon's own start/stop order stays readable:
the daemon calls ``start_ops`` when it is otherwise ready and ``stop_ops``
first thing when it stops.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import REGISTRY

from . import metrics, scrape
from .journal import StoreWatcher

log = structlog.get_logger(__name__)


@dataclass
class Ops:
    watcher: StoreWatcher
    collectors: list[Any] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    server: web.AppRunner | None = None
    metrics_port: int | None = None


async def start_ops(daemon: metrics.LiveState) -> Ops:
    watcher = StoreWatcher(daemon.config.daemon.database, lambda: list(daemon.pushers))
    ops = Ops(watcher)
    for collector in (metrics.DaemonCollector(daemon), watcher.collector):
        REGISTRY.register(collector)
        ops.collectors.append(collector)
    await watcher.tail()  # position at the end of the event table before anything new happens
    await watcher.snapshot()
    ops.tasks.append(asyncio.create_task(watcher.run(), name="journal"))
    if daemon.config.daemon.metrics is not None:
        host, port = daemon.config.daemon.metrics
        try:
            ops.server = await scrape.serve(host, port)
        except OSError as e:
            await stop_ops(ops)
            raise OSError(e.errno, f"daemon.metrics: cannot listen on {host}:{port}: {e.strerror}") from None
        ops.metrics_port = scrape.bound_port(ops.server)
        log.info("metrics_listening", host=host, port=ops.metrics_port)
    return ops


async def stop_ops(ops: Ops | None) -> None:
    if ops is None:
        return
    if ops.server is not None:
        await ops.server.cleanup()
    for t in ops.tasks:
        t.cancel()
    await asyncio.gather(*ops.tasks, return_exceptions=True)
    try:
        await ops.watcher.tail()  # the statuses of the drain, logged before we go
    except Exception as e:
        log.warning("journal_final_read_failed", error=str(e))
    await ops.watcher.aclose()
    for collector in ops.collectors:
        REGISTRY.unregister(collector)
