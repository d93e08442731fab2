"""What both simulated providers share: the server, fault injection, the delivery clock."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
from aiohttp import web


@dataclass
class Fault:
    """One injected failure for the next request to ``path`` ("" = any).

    ``http500``: answer 500 without doing anything; ``drop``: do the work,
    then cut the connection without an answer (the ambiguous case);
    ``json``: answer this object instead of doing the work; ``slow``: do the
    work, then answer only after ``body`` seconds (a client timeout).
    """

    kind: str
    path: str = ""
    body: Any = None


@dataclass
class SimBase:
    seed: int = 7
    deliver_after: float = 0.05  # seconds from accept to the final status
    callback_url: str | None = None
    callback_batch: float = 0.02  # SMS.ru sends several records per callback post
    _rng: random.Random = field(init=False)
    _faults: deque[Fault] = field(init=False, default_factory=deque)
    _runner: web.AppRunner | None = field(init=False, default=None)
    _tasks: set[asyncio.Task[Any]] = field(init=False, default_factory=set)
    port: int = field(init=False, default=0)
    requests: list[tuple[str, dict[str, str]]] = field(init=False, default_factory=list)
    callbacks_sent: int = field(init=False, default=0)
    callbacks_failed: int = field(init=False, default=0)
    url_params: list[set[str]] = field(init=False, default_factory=list)  # what clients put in URLs
    latency: float = 0.0  # seconds each request takes
    in_flight: int = field(init=False, default=0)
    max_in_flight: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def fail_next(self, kind: str, path: str = "", body: Any = None, times: int = 1) -> None:
        for _ in range(times):
            self._faults.append(Fault(kind, path, body))

    def heal(self) -> None:
        """Drop every fault still queued: the provider answers again from the next request."""
        self._faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        for f in list(self._faults):
            if not f.path or f.path == path:
                self._faults.remove(f)
                return f
        return None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[self.measure])
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[-1][1])  # documented: the sockets the runner listens on

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def later(self, delay: float, fn: Callable[[], Any]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            result = fn()
            if asyncio.iscoroutine(result):
                await result

        t = asyncio.create_task(run())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def post_callback(self, data: Any, expect: str) -> bool:
        """POST a callback like the provider does; retried a few times on a wrong answer."""
        if not self.callback_url:
            return False
        for attempt in range(5):
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.post(self.callback_url, data=data) as resp:
                        body = (await resp.text()).strip()
                        if resp.status == 200 and body == expect:
                            self.callbacks_sent += 1
                            return True
            except aiohttp.ClientError:
                pass
            self.callbacks_failed += 1
            await asyncio.sleep(0.05 * 2 ** attempt)
        return False

    async def form(self, request: web.Request) -> dict[str, str]:
        self.url_params.append(set(request.query))
        data = dict(request.query)
        if request.method == "POST":
            data.update({k: str(v) for k, v in (await request.post()).items()})
        return data

    @web.middleware
    async def measure(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Count concurrent requests (rate-limit tests) and add the configured latency."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def slow(self, seconds: float, response: web.StreamResponse) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return response

    async def drop(self, request: web.Request) -> web.StreamResponse:
        """Cut the connection with no answer (after the work is done)."""
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError()
