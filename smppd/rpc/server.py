"""The daemon's side of the API: a Unix-socket server that runs each request as a task.

The wire format is ``wire.py``'s; the peer check is ``peercred.py``'s; the parameter
type checks are ``params.py``'s. This module accepts, reads, dispatches (batches
included) and answers, and owns the socket file's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import grp
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import structlog

from . import peercred, wire
from .params import ParamChecks, ParamTypes
from .wire import (
    BATCH_SUFFIX,
    INTERNAL,
    NOT_AN_OBJECT,
    BadRequest,
    LineWriter,
    RpcError,
    encode_line,
    error_line,
    parse_request,
)

__all__ = ["BatchHandler", "Handler", "RpcServer", "SOCKET_MODE"]

log = structlog.get_logger(__name__)

# The limits (wire.MAX_LINE, wire.MAX_INFLIGHT) are read from wire where they are used, so
# there is one value of each for the server, the client and the line builder.

SOCKET_MODE = 0o660

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

BatchHandler = Callable[[list[dict[str, Any]]], Awaitable[list[Any]]]
"""Does the work of several requests of one method at once: given their
params, returns one outcome per request, in order, either its result or the
exception it ends with (an ``RpcError`` is that request's error reply)."""


class _Connection:
    """One accepted client: reads requests, runs each as a task, replies.

    Reading and the handlers are separate tasks so that the server can stop
    the one and still let the others finish and answer: an intake that is
    committing should reply rather than leave the shim guessing.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        batch_handlers: Mapping[str, BatchHandler] | None = None,
        params: Mapping[str, ParamTypes] | None = None,
    ) -> None:
        self._handlers = handlers
        self._batch_handlers = batch_handlers or {}
        self._params = {m: ParamChecks(t) for m, t in (params or {}).items()}
        self._reader = reader
        self._out = LineWriter(writer)
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = 0  # requests running, a batch counting as its items
        self._room = asyncio.Event()  # set when _inflight drops below MAX_INFLIGHT
        self._reading: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Serve until EOF, an oversized line or ``stop_reading()``, then
        wait for the requests still running and close."""
        self._reading = asyncio.get_running_loop().create_task(self._read_loop())
        try:
            await asyncio.wait([self._reading])
            if not self._reading.cancelled() and self._reading.exception() is not None:
                log.error("rpc.read_loop_failed", exc_info=self._reading.exception())
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            self._reading.cancel()
            self.abandon()
            await self._out.close()

    def stop_reading(self) -> None:
        if self._reading is not None:
            self._reading.cancel()

    def abandon(self) -> None:
        """Cancel the requests still running; their callers get no reply."""
        if self._tasks:
            log.warning("rpc.requests_abandoned", count=len(self._tasks))
        for task in self._tasks:
            task.cancel()

    async def _read_loop(self) -> None:
        while True:
            await self._out.drain()
            while self._inflight >= wire.MAX_INFLIGHT:
                self._room.clear()
                await self._room.wait()
            try:
                line = await self._reader.readline()
            except ValueError:  # the line exceeded MAX_LINE
                log.warning("rpc.line_too_long", limit=wire.MAX_LINE)
                self._out.send(
                    error_line(None, RpcError("line_too_long", f"line exceeds {wire.MAX_LINE} bytes"))
                )
                return
            except OSError:
                return
            if not line:
                return
            self._dispatch(line)

    def _dispatch(self, line: bytes) -> None:
        """Answer a malformed line at once; run a well-formed one as a task."""
        if not line.strip():
            return
        try:
            request_id, method, params = parse_request(line)
        except BadRequest as exc:
            self._out.send(error_line(exc.request_id, RpcError("bad_request", exc.message)))
            return
        handler = self._handlers.get(method)
        if handler is not None:
            checks = self._params.get(method)
            wrong = checks(params) if checks is not None else None
            if wrong is not None:
                self._out.send(error_line(request_id, wrong))
                return
            self._start(self._call(handler, request_id, method, params), 1)
            return
        name = method.removesuffix(BATCH_SUFFIX)
        if name != method and (name in self._handlers or name in self._batch_handlers):
            items = params.get("items")
            if not isinstance(items, list) or not items:
                self._out.send(
                    error_line(request_id, RpcError("bad_request", "items must be a non-empty list"))
                )
                return
            if len(items) > wire.MAX_INFLIGHT:  # else one line could start any number of requests
                self._out.send(error_line(
                    request_id, RpcError("bad_request", f"a batch carries at most {wire.MAX_INFLIGHT} items")
                ))
                return
            self._start(self._call_batch(name, request_id, items), len(items))
            return
        # A batch of an unknown method names the method, as each of its calls would.
        self._out.send(
            error_line(request_id, RpcError("unknown_method", f"unknown method {name!r}"))
        )

    def _start(self, work: Coroutine[Any, Any, None], requests: int) -> None:
        """Run ``work`` as a task that holds ``requests`` of the connection's
        allowance until it is done.  A batch may take the count past
        MAX_INFLIGHT (to under twice it); reading then waits until it is
        back below."""
        self._inflight += requests
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, requests))

    def _task_done(self, requests: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight -= requests
        if self._inflight < wire.MAX_INFLIGHT:
            self._room.set()

    async def _call(
        self, handler: Handler, request_id: str | int, method: str, params: dict[str, Any]
    ) -> None:
        try:
            result = await handler(params)
            line = encode_line({"id": request_id, "result": result})
        except RpcError as exc:
            line = error_line(request_id, exc)
        except Exception:
            # Params are not logged: they carry phone numbers and tokens.
            log.exception("rpc.handler_failed", method=method, request_id=request_id)
            line = error_line(request_id, INTERNAL)
        self._out.send(line)

    async def _call_batch(self, method: str, request_id: str | int, items: list[Any]) -> None:
        """Run a batch as one task and answer it with one line, one outcome per item."""
        try:
            outcomes = await self._run_batch(method, items)
            line = encode_line({"id": request_id, "result": [
                self._outcome(method, request_id, outcome) for outcome in outcomes
            ]})
        except RpcError as exc:
            line = error_line(request_id, exc)
        except Exception:
            log.exception("rpc.handler_failed", method=method, request_id=request_id, items=len(items))
            line = error_line(request_id, INTERNAL)
        self._out.send(line)

    async def _run_batch(self, method: str, items: list[Any]) -> list[Any]:
        outcomes: list[Any] = [NOT_AN_OBJECT] * len(items)
        checks = self._params.get(method)
        at = []
        for i, params in enumerate(items):
            if isinstance(params, dict):
                wrong = checks(params) if checks is not None else None
                if wrong is None:
                    at.append(i)
                else:
                    outcomes[i] = wrong
        if not at:
            return outcomes
        params = [items[i] for i in at]
        batch = self._batch_handlers.get(method)
        if batch is not None:
            results = await batch(params)
            if len(results) != len(params):
                raise RuntimeError(f"{method} batch handler gave {len(results)} outcomes for {len(params)}")
        else:
            handler = self._handlers[method]
            results = await asyncio.gather(*(handler(p) for p in params), return_exceptions=True)
        for i, result in zip(at, results):
            outcomes[i] = result
        return outcomes

    @staticmethod
    def _outcome(method: str, request_id: str | int, outcome: Any) -> dict[str, Any]:
        if isinstance(outcome, RpcError):
            return {"error": outcome.to_wire()}
        if isinstance(outcome, BaseException):
            log.error("rpc.handler_failed", method=method, request_id=request_id, exc_info=outcome)
            return {"error": INTERNAL.to_wire()}
        return {"result": outcome}


class RpcServer:
    """Serves ``handlers`` on a Unix socket at ``path``.

    ``group``, when given, is the group name that owns the socket file; its
    members (and root and our own user) may connect.  ``batch_handlers``
    serve ``<method>.batch`` for the methods that gain from doing many
    requests at once (see Batches in ``wire``).

    ``sock``, when given, is a listening socket someone else owns (systemd's
    ``smppd.socket``, see ``smppd.ops.listenfds``): it is served as it is, its
    mode and group are the owner's, and its file is never removed, so
    callers keep connecting (and wait in its backlog) while we restart.
    """

    def __init__(
        self,
        path: str,
        handlers: Mapping[str, Handler],
        *,
        group: str | None = None,
        batch_handlers: Mapping[str, BatchHandler] | None = None,
        sock: socket.socket | None = None,
        params: Mapping[str, ParamTypes] | None = None,
    ) -> None:
        self._path = path
        self._sock = sock
        self._handlers = handlers
        self._batch_handlers = batch_handlers or {}
        self._params = params or {}
        self._group = group
        self._server: asyncio.AbstractServer | None = None
        self._socket_gid = -1
        self._socket_ino: int | None = None
        self._serving: set[asyncio.Task[Any]] = set()
        self._connections: set[_Connection] = set()

    @property
    def path(self) -> str:
        return self._path

    async def start(self) -> None:
        if self._sock is not None:
            await self._start_passed(self._sock)
            return
        gid = _group_id(self._group) if self._group is not None else None
        await _prepare_path(self._path)
        self._server = await asyncio.start_unix_server(
            self._serve, path=self._path, limit=wire.MAX_LINE
        )
        os.chmod(self._path, SOCKET_MODE)
        if gid is not None:
            os.chown(self._path, -1, gid)
        st = os.stat(self._path)
        self._socket_gid = st.st_gid
        self._socket_ino = st.st_ino
        log.info("rpc.listening", path=self._path, gid=self._socket_gid)

    async def _start_passed(self, sock: socket.socket) -> None:
        name = sock.getsockname()
        if isinstance(name, str) and name and not name.startswith("\0"):
            self._path = name
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=wire.MAX_LINE)
        try:
            self._socket_gid = os.stat(self._path).st_gid
        except OSError:  # an abstract or already removed path: root and our uid only
            self._socket_gid = -1
        self._socket_ino = None  # not ours to remove
        log.info("rpc.listening", path=self._path, gid=self._socket_gid, passed=True)

    async def close(self, *, grace: float = 5.0) -> None:
        """Stop accepting and reading, give running requests up to ``grace``
        seconds to answer, then close every connection and remove the socket
        file."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._remove_socket_file()
        for conn in self._connections:
            conn.stop_reading()
        serving = set(self._serving)
        if serving:
            _, late = await asyncio.wait(serving, timeout=grace)
            if late:
                for conn in self._connections:
                    conn.abandon()
                await asyncio.wait(late)
        await server.wait_closed()
        log.info("rpc.closed", path=self._path)

    def _remove_socket_file(self) -> None:
        # Only our own file: a successor may already have bound the path,
        # and a passed socket's file belongs to whoever passed it.
        if self._socket_ino is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self._path).st_ino == self._socket_ino:
                os.unlink(self._path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            if self._server is None:  # accepted just before close()
                await LineWriter(writer).close()
                return
            if not peercred.peer_allowed(writer.get_extra_info("socket"), self._socket_gid):
                out = LineWriter(writer)
                out.send(error_line(None, RpcError("forbidden", "peer not allowed")))
                await out.close()
                return
            conn = _Connection(self._handlers, reader, writer, self._batch_handlers, self._params)
            self._connections.add(conn)
            try:
                await conn.run()
            finally:
                self._connections.discard(conn)
        finally:
            self._serving.discard(task)


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"rpc socket group {name!r} does not exist") from None


async def _prepare_path(path: str) -> None:
    """Create the run directory and clear a stale socket left by a crash.

    A file that is not a socket is never removed, and neither is a socket
    someone still answers on: that is a second daemon, and stealing its path
    would leave it running unreachable.
    """
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_unix_connection(path)
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("rpc.stale_socket_removed", path=path)
        return
    except TimeoutError:
        pass  # a full backlog: someone is there
    else:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    raise OSError(errno.EADDRINUSE, "another process is serving this socket", path)
