"""The shim's listening socket: a cap on connections and a deadline for a request's headers.

aiohttp bounds the time between requests (``keepalive_timeout``) but not the time a client
takes to send one: 1,144 connections trickling a header byte now and then held all the file
handles of a shim once, and genuine posts timed out. aiohttp has no header-read timeout, so
its protocol factory (``AppRunner.server``, the documented ``web.Server``) is wrapped here
in a plain ``asyncio.Protocol`` that

* keeps at most ``max_connections`` open, so the process never runs out of file handles
  however many clients open sockets: at the cap a new connection replaces the one that has
  owed its request's headers longest (a slow client), and is refused only when none does;
* closes a connection whose request has not *started being handled* within
  ``header_timeout`` seconds of its opening or of the first byte after the previous request
  (``shim.body.guarded`` marks the start and the end of each request from inside the app,
  through ``request_started``; the body has its own deadline in ``shim.body``).

The policy is ``Deadline``, sans-I/O: it is told when bytes arrive and when a request
starts and ends, with ``now``, and answers with the deadline to arm.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from smppd.ops.logs import RepeatLimiter

__all__ = ["EdgeLimits", "Deadline", "listen", "request_started"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EdgeLimits:
    """How much of the shim one client, and all of them, may hold."""

    max_connections: int = 4096
    """Open connections at once; the unit's LimitNOFILE leaves room for these and the rest."""
    header_timeout: float = 10.0
    """Seconds from a request's first byte to its headers read (Bitrix24 sends a post at once)."""
    body_timeout: float = 10.0
    """Seconds for a request's whole body once its headers are read (``shim.body``)."""


class Deadline:
    """When a connection that is sending a request must have sent its headers by.

    Idle (between requests) a first byte arms the deadline; the app starting on the request
    disarms it; the request's end makes the connection idle again. Bytes arriving while a
    request is handled (a pipelined next request) arm nothing: once that request ends, the next
    byte does, and a request already complete in the buffer starts at once.
    """

    __slots__ = ("_busy", "due", "_timeout")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._busy = False
        self.due: float | None = None

    def received(self, now: float) -> float | None:
        if not self._busy and self.due is None:
            self.due = now + self._timeout
            return self.due
        return None

    def request_started(self) -> None:
        self._busy, self.due = True, None

    def request_ended(self) -> None:
        self._busy = False

    def expired(self, now: float) -> bool:
        return self.due is not None and now >= self.due


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the cap and the header deadline."""

    def __init__(self, gate: _Gate) -> None:
        self._gate = gate
        self._loop = gate.loop  # looked up once: asyncio.get_running_loop() per chunk was ~0.1 µs of every post
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self.deadline = Deadline(gate.limits.header_timeout)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._gate.admit():
            transport.abort()
            return
        self._inner = self._gate.factory()
        self._inner.connection_made(transport)
        self._arm()  # a new connection owes its first request's headers too, byte or no byte

    def _arm(self) -> None:
        due = self.deadline.received(self._loop.time())
        if due is not None:
            self._gate.pending[self] = None
            # One timer per connection, re-armed lazily by ``_check``: a timer already set fires
            # no later than this due (deadlines only move forward), so it is left as it is. A
            # call_at and a cancel per request were ~2 µs of every keep-alive post.
            if self._timer is None:
                self._timer = self._loop.call_at(due, self._check)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            return
        self._arm()
        inner.data_received(data)

    def _check(self) -> None:
        self._timer = None
        if self.deadline.expired(self._loop.time()):
            self._gate.timed_out()
            self.drop()
        elif self.deadline.due is not None and self._inner is not None:
            # the request this timer was set for started in time; a later one owes its headers now
            self._timer = self._loop.call_at(self.deadline.due, self._check)

    def drop(self) -> None:
        """Close now and give the connection's place back at once (``connection_lost`` comes later)."""
        self._gate.pending.pop(self, None)
        if self._inner is not None and self._transport is not None:
            inner, self._inner = self._inner, None
            self._gate.release()
            self._transport.abort()
            inner.connection_lost(None)

    def request_started(self) -> None:
        self.deadline.request_started()
        self._gate.pending.pop(self, None)  # the timer stays: it finds nothing due and stops (``_check``)

    def request_ended(self) -> None:
        self.deadline.request_ended()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._gate.pending.pop(self, None)
        if self._inner is not None:
            inner, self._inner = self._inner, None
            self._gate.release()
            inner.connection_lost(exc)


class _Gate:
    """The live-connection count and the factory of aiohttp's protocols.

    At the cap, a new connection takes the place of the one that has been owing its request's
    headers longest (``pending``, oldest first): a genuine client sends its headers within
    milliseconds of connecting, so it is never the oldest debtor, while slow clients push each
    other out. Only when no connection owes headers (every one is being served) is the new one
    refused.
    """

    def __init__(self, factory: Callable[[], asyncio.Protocol], limits: EdgeLimits,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.factory = factory
        self.limits = limits
        self.loop = loop
        self.live = 0
        self.refused = 0
        self.evicted = 0
        self.expired = 0
        self.pending: dict[_Guarded, None] = {}  # connections owing headers, oldest first
        # a flood of slow clients is one line a minute per kind, with the count, not a line each
        self._lines = RepeatLimiter(burst=1, window=60.0)

    def _line(self, kind: str, level: str, **fields: Any) -> None:
        write, left_out = self._lines.admit(kind, time.monotonic())
        if write:
            getattr(log, level)(kind, limit=self.limits.max_connections, since_last=left_out + 1, **fields)

    def admit(self) -> bool:
        if self.live >= self.limits.max_connections:
            oldest = next(iter(self.pending), None)
            if oldest is None:
                self.refused += 1
                self._line("http.connection_refused", "warning", reason="max_connections")
                return False
            self.evicted += 1
            self._line("http.slow_connection_evicted", "info")
            oldest.drop()
        self.live += 1
        return True

    def release(self) -> None:
        self.live -= 1

    def timed_out(self) -> None:
        self.expired += 1
        self._line("http.header_timeout", "info", header_timeout_s=self.limits.header_timeout)


def request_started(request: web.BaseRequest) -> _Guarded | None:
    """Tell the request's connection (when served through ``listen``) that its headers are in;
    the caller calls ``request_ended()`` on what this returns when the request is done.
    ``shim.body.guarded`` does, for every request (``shim.body.add_routes``)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, _Guarded):
        protocol.request_started()
        return protocol
    return None


class Listener:
    """The asyncio server ``listen`` started, with its gate's counts for tests and benches."""

    def __init__(self, server: asyncio.AbstractServer, gate: _Gate) -> None:
        self.server = server
        self.gate = gate

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        """No new connection from now on; the ones accepted are served (and then closed by
        ``runner.cleanup()``). A passed socket's backlog keeps new connections for the next shim."""
        self.server.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def listen(runner: web.AppRunner, limits: EdgeLimits, *, host: str | None = None, port: int | None = None,
                 sock: socket.socket | None = None, backlog: int = 1024) -> Listener:
    """Serve ``runner``'s app on ``host:port`` (or an already bound ``sock``) behind the limits.

    Used instead of ``web.TCPSite``: a site hands the loop aiohttp's factory itself; this
    hands it the guarded one. ``runner.cleanup()`` still closes the connections; close the
    returned ``Listener`` before it so no new one is accepted.
    """
    if runner.server is None:
        raise RuntimeError("call runner.setup() first")
    loop = asyncio.get_running_loop()
    gate = _Gate(runner.server, limits, loop)
    if sock is not None:
        server = await loop.create_server(lambda: _Guarded(gate), sock=sock, backlog=backlog)
    else:
        server = await loop.create_server(lambda: _Guarded(gate), host, port, backlog=backlog, reuse_address=True)
    return Listener(server, gate)
