"""``GET /metrics``: what Prometheus scrapes, one loopback port per process.

The metrics themselves are defined in ``metrics``; this only serves the registry
(``[daemon] metrics`` and ``[shim] metrics`` in config.toml; nginx never exposes it).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


async def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> web.AppRunner:
    """Serve ``GET /metrics`` on host:port in this event loop; the caller cleans the runner up."""

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a runner listens on (tests ask for port 0), from aiohttp's documented
    ``AppRunner.addresses``."""
    return int(runner.addresses[0][1])
