"""The callers' side of the API: one shared connection, pipelined, with batching and timeouts.

The shim calls ``intake`` once per Bitrix24 post through one ``RpcClient``; the admin
commands make a call or two. The wire format is ``wire.py``'s.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Collection
from typing import Any

import structlog

from .. import json_fast
from . import wire
from .wire import (
    BATCHED,
    LineWriter,
    RpcError,
    RpcUnavailable,
    encode_json,
    request_lines,
    valid_id,
)

__all__ = ["RpcClient"]

log = structlog.get_logger(__name__)

class _ClientConnection:
    """One live connection of an RpcClient and the calls waiting on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.out = LineWriter(writer)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self._batches: dict[int, list[int]] = {}  # batch line id -> the ids of its requests
        self._queued: list[tuple[str, int, bytes]] = []  # (method, id, params) for the next batch
        self._loop = asyncio.get_running_loop()
        self._refusal: str | None = None
        # (deadline, id, method) of calls in deadline order, and the one
        # timer that fails those still pending when their deadline comes.
        self._deadlines: deque[tuple[float, int, str]] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self._reader = reader
        self._reader_task = asyncio.get_running_loop().create_task(self._read_replies())

    async def _read_replies(self) -> None:
        reason = "connection closed by the daemon"
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                self._deliver(line)
        except ValueError:
            reason = "reply line too long"
            log.warning("rpc.client_line_too_long", limit=wire.MAX_LINE)
        except OSError as exc:
            reason = f"connection lost: {exc}"
        finally:
            # The daemon's own word on why it hangs up beats the errno
            # the hang-up itself produces.
            await self.close(self._refusal or reason)

    def expire_at(self, deadline: float, request_id: int, method: str) -> asyncio.TimerHandle | None:
        """Fail the call ``request_id`` with ``RpcUnavailable`` if it is
        still pending at ``deadline`` (loop time).

        A timer per call cost ~1.6 µs (arming and cancelling it, the heap
        of cancelled timers); calls come in deadline order when they share
        a timeout, so they wait in a queue watched by one timer, and an
        answered call leaves the queue when it reaches the front.  A call
        due before the last queued one (a shorter timeout) gets a timer of
        its own, which is returned for the caller to cancel.
        """
        queue = self._deadlines
        while queue and queue[0][1] not in self.pending:  # answered, timed out or cancelled
            queue.popleft()
        if queue and deadline < queue[-1][0]:
            return self._loop.call_at(deadline, self._expire_one, request_id, method)
        queue.append((deadline, request_id, method))
        expiry = self._expiry
        if expiry is None or expiry.when() > deadline:  # none, or armed for calls no longer queued
            if expiry is not None:
                expiry.cancel()
            self._expiry = self._loop.call_at(queue[0][0], self._expire)
        return None

    def _expire(self) -> None:
        """The queue's timer: fail the calls due, forget the answered ones
        at the front, and wait for the next call due."""
        assert self._expiry is not None
        # asyncio runs a timer up to a clock tick early; its deadline is now.
        now = max(self._loop.time(), self._expiry.when())
        self._expiry = None
        queue = self._deadlines
        while queue:
            deadline, request_id, method = queue[0]
            if request_id in self.pending:
                if deadline > now:
                    self._expiry = self._loop.call_at(deadline, self._expire)
                    return
                self._expire_one(request_id, method)
            queue.popleft()

    def _expire_one(self, request_id: int, method: str) -> None:
        future = self.pending.get(request_id)
        if future is not None and not future.done():
            future.set_exception(RpcUnavailable(f"no reply to {method!r} in time"))

    def enqueue(self, method: str, request_id: int, params: bytes) -> None:
        """Send a request with the others of its method queued in this loop
        iteration, as one batch line (``params`` is already JSON)."""
        if not self._queued:
            self._loop.call_soon(self._send_queued)
        self._queued.append((method, request_id, params))

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        if self.closed:
            return  # close() has failed their futures
        by_method: dict[str, list[tuple[int, bytes]]] = {}
        for method, request_id, params in queued:
            future = self.pending.get(request_id)
            if future is not None and not future.done():  # else timed out or cancelled meanwhile
                by_method.setdefault(method, []).append((request_id, params))
        for method, items in by_method.items():
            for line, ids in request_lines(method, items):
                if len(ids) > 1:
                    self._batches[ids[0]] = ids
                self.out.send(line)
        self.out.flush()

    def _deliver(self, line: bytes) -> None:
        """Resolve the call a reply line belongs to.

        A reply with id null is a connection-level error which the server
        sends just before it hangs up on us; it is kept as the reason.
        """
        try:
            reply = json_fast.loads(line)
            if reply is None:
                reply = json.loads(line)
            request_id = reply["id"]
        except (ValueError, TypeError, KeyError):
            request_id = reply = None
        if not isinstance(reply, dict) or not (request_id is None or valid_id(request_id)):
            log.warning("rpc.client_bad_reply")
            return
        if request_id is None:
            error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
            log.warning("rpc.refused_by_server", code=error.get("code"), message=error.get("message"))
            self._refusal = f"refused by the daemon: {error.get('code')}"
            return
        batch = self._batches.pop(request_id, None)
        if batch is not None:
            self._deliver_batch(batch, reply)
            return
        self._settle(request_id, reply)

    def _deliver_batch(self, ids: list[int], reply: dict[str, Any]) -> None:
        """Resolve each call of a batch from its own item of the reply; an
        error for the whole batch is every call's error."""
        if "error" in reply:
            for request_id in ids:
                self._settle(request_id, reply)
            return
        items = reply.get("result")
        if not isinstance(items, list) or len(items) != len(ids) or not all(isinstance(i, dict) for i in items):
            log.warning("rpc.client_bad_reply", batch=len(ids))
            for request_id in ids:
                future = self.pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_exception(RpcUnavailable("malformed batch reply from the daemon"))
            return
        for request_id, item in zip(ids, items):
            self._settle(request_id, item)

    def _settle(self, request_id: int, reply: dict[str, Any]) -> None:
        """Resolve a call with its result or error (a reply or a batch item)."""
        future = self.pending.pop(request_id, None)
        if future is None or future.done():
            return  # the call timed out or was cancelled meanwhile
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            future.set_exception(
                RpcError(
                    str(error.get("code", "internal")),
                    str(error.get("message", "")),
                    field=error.get("field"),
                )
            )
        else:
            future.set_result(reply.get("result"))

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(RpcUnavailable(reason))
        self.pending.clear()
        self._batches.clear()
        self._deadlines.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        await self.out.close()


class RpcClient:
    """Calls the daemon over one shared, lazily opened connection.

    Concurrent calls are multiplexed on that connection (each waits on a
    future keyed by its id), so the shim pays for one socket, not one per
    HTTP request.  When the connection breaks, every pending call fails with
    ``RpcUnavailable`` and the next call reconnects.

    Calls of the ``batched`` methods issued in one event-loop iteration go
    out as batch lines (see Batches in ``wire``); each call still gets its own
    result, error and timeout.
    """

    def __init__(
        self, path: str, *, timeout: float = 10.0, batched: Collection[str] = BATCHED
    ) -> None:
        self._path = path
        self._timeout = timeout
        self._batched = batched
        self._ids = itertools.count(1)
        self._conn: _ClientConnection | None = None
        self._connecting = asyncio.Lock()

    async def call(
        self,
        method: str,
        params: dict[str, Any] | bytes | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and wait for its reply.

        ``params`` may be given already encoded, as the bytes of one JSON
        object (UTF-8, no newline): a caller that calls often with params
        of a fixed shape can write them faster than ``json`` does.

        Raises ``RpcError`` for an error reply and ``RpcUnavailable`` when
        there is no answer (no daemon, lost connection, ``timeout`` seconds
        without a reply; the default is the client's timeout).
        """
        request_id = next(self._ids)
        batched = method in self._batched
        encoded = params if isinstance(params, bytes) else encode_json(params or {}).encode()
        if batched:
            line = encoded
        else:
            line = b'{"id":%d,"method":%b,"params":%b}\n' % (request_id, encode_json(method).encode(), encoded)
        limit = self._timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        conn = self._conn
        if conn is None or conn.closed or not conn.out.idle():
            conn = await self._ready_connection(method, limit)
        # No await between here and send(): the connection cannot close
        # behind our back and leave the future unanswered.  The connection's
        # deadline queue, not asyncio.timeout(), bounds the wait: a call per
        # post under load, and failing the future is all a timeout has to
        # do here.
        future: asyncio.Future[Any] = loop.create_future()
        conn.pending[request_id] = future
        if batched:
            conn.enqueue(method, request_id, line)
        else:
            conn.out.send(line)
        timer = conn.expire_at(deadline, request_id, method)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            conn.pending.pop(request_id, None)

    async def _ready_connection(self, method: str, limit: float) -> _ClientConnection:
        """The connection, opened if need be, once its buffer is below the
        high-water mark; ``RpcUnavailable`` if that takes over ``limit`` s."""
        try:
            async with asyncio.timeout(limit):
                conn = await self._connection()
                await conn.out.drain()
        except TimeoutError:
            raise RpcUnavailable(f"no reply to {method!r} in time") from None
        except OSError as exc:  # drain() on a dying connection
            raise RpcUnavailable(f"connection lost: {exc}") from None
        if conn.closed:
            raise RpcUnavailable("connection lost")
        return conn

    async def _connection(self) -> _ClientConnection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connecting:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            try:
                reader, writer = await asyncio.open_unix_connection(self._path, limit=wire.MAX_LINE)
            except OSError as exc:
                raise RpcUnavailable(f"cannot connect to {self._path}: {exc}") from None
            self._conn = _ClientConnection(reader, writer)
            return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close("client closed")
