"""The daemon's only API: newline-delimited JSON over a Unix socket.

Everything that talks to the daemon -- the HTTP shim, the admin commands --
goes through this module, so the wire format is written down here once.

Framing
    Each line is one UTF-8 JSON object terminated by ``\\n``; a line may be
    at most ``MAX_LINE`` bytes (without the newline).  Blank lines are ignored.

Request
    ``{"id": <int|str>, "method": "<name>", "params": {...}}``
    ``params`` may be omitted (it then means ``{}``).  ``id`` is chosen by the
    client and echoed in the reply; it must not be a bool, float or null.

Reply
    ``{"id": ..., "result": <any JSON>}``, or
    ``{"id": ..., "error": {"code": "<machine code>", "message": "<human>"}}``
    with an optional ``"field"`` in the error object naming the offending
    request parameter.

Batches
    ``{"id": ..., "method": "<name>.batch", "params": {"items": [{...}, ...]}}``
    carries several requests of method ``<name>`` in one line; the reply's
    ``result`` is a list with one item per request, in order, each
    ``{"result": ...}`` or ``{"error": {...}}`` exactly as that request alone
    would have been answered, so one refused item never fails the others.
    An item that is not an object gets its own ``bad_request``; a batch of
    more than ``MAX_INFLIGHT`` items is refused whole.  A server
    accepts a batch for every method it serves; a handler that can do the
    work of many requests at once (one store commit-wait for many intakes)
    registers a ``BatchHandler``, the others run the items concurrently.
    Batches exist because the per-request cost (a task, a reply line, a
    future in the store) is most of the daemon's CPU for a small request.

Pipelining
    A client may send many requests without waiting.  The server runs them
    concurrently and replies as each one completes, so replies come back out
    of order and are matched by ``id``.  Replies finished in the same event
    loop iteration are written with one ``write()``.

Error codes produced by this module
    ``bad_request``     the line is not JSON, not an object, or has a missing
                        or invalid ``id``/``method``/``params`` (``id`` is
                        echoed when it could be read, else ``null``); the
                        connection stays open.  Also: an integer outside
                        a signed 64-bit range, ``NaN``/``Infinity``, nesting
                        deeper than the decoder allows, or a parameter whose
                        JSON type is not the one the method declares
                        (``RpcServer(params=...)``, see ``ListOf``/``MapOf``);
                        these never reach a handler, and the error names
                        the parameter in ``field``.
    ``unknown_method``  no handler of that name.
    ``internal``        the handler crashed; the details are in the daemon's
                        log, never in the reply.
    ``line_too_long``   a line exceeded ``MAX_LINE``; sent with id ``null``,
                        then the connection is closed (we cannot find the
                        next line boundary cheaply, nor trust the peer).
    ``forbidden``       the peer failed the credentials check; sent with id
                        ``null`` before the connection is closed.
Handlers add their own codes by raising ``RpcError(code, message)``.

Authentication
    The socket file is mode 0660 (optionally group-owned by a configured
    group).  In addition each accepted connection is checked with
    ``SO_PEERCRED``: root, the daemon's own uid, and members of the socket
    file's group are let in (see ``peer_allowed``).  The file mode alone would
    do on Linux, but the explicit check also covers the moment between
    ``bind()`` and ``chmod()`` and platforms that ignore socket file modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import grp
import itertools
import json
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from typing import Any, NamedTuple

import structlog

__all__ = [
    "BATCHED",
    "INT_LIMIT",
    "ListOf",
    "MapOf",
    "ParamTypes",
    "MAX_LINE",
    "BatchHandler",
    "Handler",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "RpcUnavailable",
    "is_allowed",
    "peer_allowed",
]

log = structlog.get_logger(__name__)

MAX_LINE = 1024 * 1024
"""Longest line either side accepts, in bytes, newline excluded."""

MAX_INFLIGHT = 1024
"""Requests one connection may have running at once, each item of a batch
counted as a request; the server stops reading that connection while it is
at the limit, so a client that pipelines without bound cannot make the
daemon buffer without bound."""

BATCH_SUFFIX = ".batch"
"""``<method>.batch`` is the batch of ``<method>`` (see Batches above)."""

BATCHED = frozenset({"intake"})
"""Methods an ``RpcClient`` batches by default: the one called per Bitrix24
post, many at once under load."""

MAX_BATCH = 256
"""Most requests a client puts in one batch line; well under MAX_INFLIGHT so
one batch never fills a connection's allowance alone."""

SOCKET_MODE = 0o660

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

BatchHandler = Callable[[list[dict[str, Any]]], Awaitable[list[Any]]]
"""Does the work of several requests of one method at once: given their
params, returns one outcome per request, in order, either its result or the
exception it ends with (an ``RpcError`` is that request's error reply)."""

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class RpcError(Exception):
    """An error reply: the request reached a handler and was refused.

    Raised by handlers on the server side and by ``RpcClient.call`` on the
    client side, so a refusal travels end to end with its machine code.
    ``field`` optionally names the request parameter at fault, so a front
    end can tell its own caller which input was wrong.
    """

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_wire(self) -> dict[str, str]:
        error = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return error


class RpcUnavailable(Exception):
    """The daemon could not be asked: no socket, connection lost, or timeout.

    Distinct from ``RpcError`` because the outcome is unknown, not negative:
    a request that timed out may still have been carried out.
    """


# --------------------------------------------------------------------------
# wire helpers


# json.dumps with arguments builds a new encoder per call; this one is built
# once and writes exactly the same bytes.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _encode(obj: Mapping[str, Any]) -> bytes:
    return _encode_json(obj).encode() + b"\n"


def _error_line(request_id: Any, error: RpcError) -> bytes:
    return _encode({"id": request_id, "error": error.to_wire()})


_INTERNAL = RpcError("internal", "internal error")
_NOT_AN_OBJECT = RpcError("bad_request", "params must be an object")
_BATCH_ENVELOPE = len(b'{"id":,"method":,"params":{"items":[]}}') + 20  # 20: the longest id we make


def _request_lines(method: str, items: list[tuple[int, bytes]]) -> list[tuple[bytes, list[int]]]:
    """Lines carrying the requests ``items`` (id, encoded params) of ``method``,
    each with the ids it carries: a batch line per up to ``MAX_BATCH`` requests
    that fit in ``MAX_LINE``, a plain request line for a request alone.

    A request too long to share a line goes alone, as it would unbatched (and
    is refused by the server as too long, as it would be unbatched).
    """
    name = _encode_json(method).encode()
    batch_name = _encode_json(method + BATCH_SUFFIX).encode()
    room = MAX_LINE - _BATCH_ENVELOPE - len(batch_name)
    lines: list[tuple[bytes, list[int]]] = []
    group: list[tuple[int, bytes]] = []
    size = 0

    def close_group() -> None:
        ids = [request_id for request_id, _ in group]
        if len(group) == 1:
            line = b'{"id":%d,"method":%b,"params":%b}\n' % (ids[0], name, group[0][1])
        else:
            items_json = b",".join(params for _, params in group)
            line = b'{"id":%d,"method":%b,"params":{"items":[%b]}}\n' % (ids[0], batch_name, items_json)
        lines.append((line, ids))

    for request_id, params in items:
        if group and (len(group) >= MAX_BATCH or size + 1 + len(params) > room):
            close_group()
            group, size = [], 0
        size += len(params) + (1 if group else 0)
        group.append((request_id, params))
    if group:
        close_group()
    return lines


# --------------------------------------------------------------------------
# what a request may hold, checked before any handler runs

INT_LIMIT = 2**63
"""Integers a request may carry: signed 64 bits, what SQLite and every id we keep can hold."""


class ListOf(NamedTuple):
    """A JSON array of ``item`` values, at most ``max_len`` of them."""

    item: Any
    max_len: int = MAX_INFLIGHT


class MapOf(NamedTuple):
    """A JSON object with ``value`` values, at most ``max_len`` keys."""

    value: Any
    max_len: int = 256


Spec = Any
"""A parameter's type: ``str``, ``int``, ``bool``, ``float``, ``None``, a ``ListOf``/``MapOf``,
or a tuple of these (any of them). ``int`` never admits a bool, as JSON tells them apart."""

ParamTypes = Mapping[str, Spec]
"""A method's parameters by name and type; a parameter not named is not checked, and one
that is named may be absent (whether it is required is the handler's business)."""


def conforms(spec: Spec, value: Any) -> bool:
    """Whether ``value`` (decoded JSON) has the type ``spec`` declares."""
    if isinstance(spec, tuple) and not isinstance(spec, (ListOf, MapOf)):  # both are tuples too
        return any(conforms(s, value) for s in spec)
    if spec is None:
        return value is None
    if spec is int:
        return type(value) is int
    if spec is float:
        return type(value) in (int, float)
    if isinstance(spec, ListOf):
        return (type(value) is list and len(value) <= spec.max_len
                and all(conforms(spec.item, v) for v in value))
    if isinstance(spec, MapOf):
        return (type(value) is dict and len(value) <= spec.max_len
                and all(conforms(spec.value, v) for v in value.values()))
    return type(value) is spec


def _type_name(spec: Spec) -> str:
    if isinstance(spec, tuple) and not isinstance(spec, (ListOf, MapOf)):
        return " or ".join(_type_name(s) for s in spec)
    if spec is None:
        return "null"
    if isinstance(spec, ListOf):
        return f"a list of {_type_name(spec.item)} (at most {spec.max_len})"
    if isinstance(spec, MapOf):
        return f"an object of {_type_name(spec.value)} (at most {spec.max_len} keys)"
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number"}.get(spec, spec.__name__)


def check_params(types: ParamTypes, params: Mapping[str, Any]) -> RpcError | None:
    """The error for the first parameter whose type is not the declared one, else None."""
    for name, spec in types.items():
        if name in params and not conforms(spec, params[name]):
            return RpcError("bad_request", f"{name}: must be {_type_name(spec)}", field=name)
    return None


_TYPE_SETS = {str: (str,), int: (int,), bool: (bool,), float: (int, float), None: (type(None),)}


def compile_spec(spec: Spec) -> Callable[[Any], bool]:
    """``conforms(spec, ·)`` as a closure built once: the intake's ~12 parameters are checked
    per post, and the generic walk cost ~9 µs of it where this costs ~2. Lists and objects
    get a plain loop each (a lambda per item through ``all(map(...))`` cost ~2.7 µs on a
    post's bindings and document_id, the loop ~1)."""
    alternatives = spec if isinstance(spec, tuple) and not isinstance(spec, (ListOf, MapOf)) else (spec,)
    simple = frozenset(t for a in alternatives if not isinstance(a, (ListOf, MapOf)) for t in _TYPE_SETS[a])
    nested = [_compile_container(a) for a in alternatives if isinstance(a, (ListOf, MapOf))]
    if not nested:
        return lambda value: type(value) in simple
    if len(nested) == 1:
        only = nested[0]
        if not simple:
            return only
        return lambda value: type(value) in simple or only(value)
    return lambda value: type(value) in simple or any(check(value) for check in nested)


def _compile_container(spec: ListOf | MapOf) -> Callable[[Any], bool]:
    """A ``ListOf``/``MapOf`` check: its container type and length, then each item or value."""
    inner_spec = spec.item if isinstance(spec, ListOf) else spec.value
    container, max_len = (list, spec.max_len) if isinstance(spec, ListOf) else (dict, spec.max_len)
    inner_alternatives = (inner_spec if isinstance(inner_spec, tuple) and not isinstance(inner_spec, (ListOf, MapOf))
                          else (inner_spec,))
    if not any(isinstance(a, (ListOf, MapOf)) for a in inner_alternatives):
        types = frozenset(t for a in inner_alternatives for t in _TYPE_SETS[a])

        def flat(value: Any) -> bool:
            if type(value) is not container or len(value) > max_len:
                return False
            for item in (value if container is list else value.values()):
                if type(item) not in types:
                    return False
            return True

        return flat
    inner = compile_spec(inner_spec)

    def deep(value: Any) -> bool:
        if type(value) is not container or len(value) > max_len:
            return False
        for item in (value if container is list else value.values()):
            if not inner(item):
                return False
        return True

    return deep


class _ParamChecks:
    """One method's declared parameter types, compiled (see ``compile_spec``)."""

    __slots__ = ("_checks", "_types")

    def __init__(self, types: ParamTypes) -> None:
        self._types = types
        self._checks = {name: compile_spec(spec) for name, spec in types.items()}

    def __call__(self, params: Mapping[str, Any]) -> RpcError | None:
        checks = self._checks
        for name, value in params.items():
            check = checks.get(name)
            if check is not None and not check(value):
                spec = self._types[name]
                return RpcError("bad_request", f"{name}: must be {_type_name(spec)}", field=name)
        return None


class _OutOfRange(ValueError):
    pass


def _bounded_int(text: str) -> int:
    value = int(text)
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise _OutOfRange
    return value


def _no_constant(name: str) -> Any:
    raise _OutOfRange


# Built once: json.loads with keyword arguments builds a decoder per call (~1 µs).
_decode_request = json.JSONDecoder(parse_int=_bounded_int, parse_constant=_no_constant).decode


def _valid_id(value: Any) -> bool:
    # bool is an int subclass; true/false as ids would be a client bug.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class _LineWriter:
    """Queues outgoing lines and writes all lines queued in one loop
    iteration with a single ``transport.write``.

    Many replies (or, on the client, many requests) become ready in the same
    iteration under load; one syscall for all of them is most of what a fast
    Unix-socket protocol can save.  Backpressure is left to ``drain()``.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lines: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def send(self, line: bytes) -> None:
        if not self._lines:
            self._loop.call_soon(self.flush)
        self._lines.append(line)

    def flush(self) -> None:
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines = []
        if not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is above its high-water mark."""
        await self._writer.drain()

    def idle(self) -> bool:
        """True when ``drain()`` has nothing to wait for: the transport is
        open and its buffer empty (a paused transport never is)."""
        transport = self._writer.transport
        return not transport.is_closing() and transport.get_write_buffer_size() == 0

    async def close(self, timeout: float = 1.0) -> None:
        """Flush and close; a peer that will not take the rest of our
        buffer within ``timeout`` seconds is cut off rather than waited for."""
        self.flush()
        self._writer.close()
        try:
            async with asyncio.timeout(timeout):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
        except OSError:
            pass


# --------------------------------------------------------------------------
# peer authentication


def is_allowed(
    uid: int,
    gid: int,
    socket_gid: int,
    *,
    own_uid: int,
    groups: Collection[int] = (),
) -> bool:
    """The access rule, on plain values so that it can be tested for any uid.

    root and the daemon's own user may always connect; anyone else must be
    in the socket file's group, as primary or supplementary group, which is
    the same set of users the file mode 0660 lets through.
    """
    if uid == 0 or uid == own_uid:
        return True
    return gid == socket_gid or socket_gid in groups


def _peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def _supplementary_groups(pid: int) -> frozenset[int]:
    """The peer's supplementary groups from /proc.

    SO_PEERCRED carries only the primary gid.  /proc is read after the fact,
    so a peer that exited and whose pid was reused could be judged by another
    process's groups; that needs a peer already able to connect, so we accept
    it.  Any failure reads as "no groups" and the peer is refused.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def peer_allowed(sock: socket.socket, socket_gid: int) -> bool:
    """Decide whether the process at the other end of ``sock`` may use the API.

    Fails closed: if the credentials cannot be read the peer is refused.
    Refusals are logged with the peer's pid and uid, since they mean either
    a misconfigured group or someone probing the socket.
    """
    try:
        pid, uid, gid = _peer_credentials(sock)
    except (OSError, AttributeError, struct.error):
        log.warning("rpc.peer_credentials_unreadable", exc_info=True)
        return False
    own_uid = os.getuid()
    if is_allowed(uid, gid, socket_gid, own_uid=own_uid):
        return True
    groups = _supplementary_groups(pid)
    if is_allowed(uid, gid, socket_gid, own_uid=own_uid, groups=groups):
        return True
    log.warning("rpc.peer_refused", pid=pid, uid=uid, gid=gid, socket_gid=socket_gid)
    return False


# --------------------------------------------------------------------------
# server


class _BadRequest(Exception):
    def __init__(self, request_id: Any, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.message = message


def _parse_request(line: bytes) -> tuple[str | int, str, dict[str, Any]]:
    """Split one request line into (id, method, params) or raise _BadRequest."""
    try:
        request = _decode_request(line.decode("utf-8"))
    except _OutOfRange:
        raise _BadRequest(None, "numbers must be integers of at most 64 bits or finite decimals") from None
    except RecursionError:
        raise _BadRequest(None, "nested too deeply") from None
    except ValueError:  # includes UnicodeDecodeError
        raise _BadRequest(None, "line is not valid UTF-8 JSON") from None
    if not isinstance(request, dict):
        raise _BadRequest(None, "request must be a JSON object")
    request_id = request.get("id")
    if not _valid_id(request_id):
        raise _BadRequest(None, "id must be an integer or a string")
    method = request.get("method")
    if not isinstance(method, str) or not method:
        raise _BadRequest(request_id, "method must be a non-empty string")
    params = request.get("params", {})
    if not isinstance(params, dict):
        raise _BadRequest(request_id, "params must be an object")
    return request_id, method, params


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
        self._params = {m: _ParamChecks(t) for m, t in (params or {}).items()}
        self._reader = reader
        self._out = _LineWriter(writer)
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
            while self._inflight >= MAX_INFLIGHT:
                self._room.clear()
                await self._room.wait()
            try:
                line = await self._reader.readline()
            except ValueError:  # the line exceeded MAX_LINE
                log.warning("rpc.line_too_long", limit=MAX_LINE)
                self._out.send(
                    _error_line(None, RpcError("line_too_long", f"line exceeds {MAX_LINE} bytes"))
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
            request_id, method, params = _parse_request(line)
        except _BadRequest as exc:
            self._out.send(_error_line(exc.request_id, RpcError("bad_request", exc.message)))
            return
        handler = self._handlers.get(method)
        if handler is not None:
            checks = self._params.get(method)
            wrong = checks(params) if checks is not None else None
            if wrong is not None:
                self._out.send(_error_line(request_id, wrong))
                return
            self._start(self._call(handler, request_id, method, params), 1)
            return
        name = method.removesuffix(BATCH_SUFFIX)
        if name != method and (name in self._handlers or name in self._batch_handlers):
            items = params.get("items")
            if not isinstance(items, list) or not items:
                self._out.send(
                    _error_line(request_id, RpcError("bad_request", "items must be a non-empty list"))
                )
                return
            if len(items) > MAX_INFLIGHT:  # else one line could start any number of requests
                self._out.send(_error_line(
                    request_id, RpcError("bad_request", f"a batch carries at most {MAX_INFLIGHT} items")
                ))
                return
            self._start(self._call_batch(name, request_id, items), len(items))
            return
        # A batch of an unknown method names the method, as each of its calls would.
        self._out.send(
            _error_line(request_id, RpcError("unknown_method", f"unknown method {name!r}"))
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
        if self._inflight < MAX_INFLIGHT:
            self._room.set()

    async def _call(
        self, handler: Handler, request_id: str | int, method: str, params: dict[str, Any]
    ) -> None:
        try:
            result = await handler(params)
            line = _encode({"id": request_id, "result": result})
        except RpcError as exc:
            line = _error_line(request_id, exc)
        except Exception:
            # Params are not logged: they carry phone numbers and tokens.
            log.exception("rpc.handler_failed", method=method, request_id=request_id)
            line = _error_line(request_id, _INTERNAL)
        self._out.send(line)

    async def _call_batch(self, method: str, request_id: str | int, items: list[Any]) -> None:
        """Run a batch as one task and answer it with one line, one outcome per item."""
        try:
            outcomes = await self._run_batch(method, items)
            line = _encode({"id": request_id, "result": [
                self._outcome(method, request_id, outcome) for outcome in outcomes
            ]})
        except RpcError as exc:
            line = _error_line(request_id, exc)
        except Exception:
            log.exception("rpc.handler_failed", method=method, request_id=request_id, items=len(items))
            line = _error_line(request_id, _INTERNAL)
        self._out.send(line)

    async def _run_batch(self, method: str, items: list[Any]) -> list[Any]:
        outcomes: list[Any] = [_NOT_AN_OBJECT] * len(items)
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
            return {"error": _INTERNAL.to_wire()}
        return {"result": outcome}


class RpcServer:
    """Serves ``handlers`` on a Unix socket at ``path``.

    ``group``, when given, is the group name that owns the socket file; its
    members (and root and our own user) may connect.  ``batch_handlers``
    serve ``<method>.batch`` for the methods that gain from doing many
    requests at once (see Batches above).

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
            self._serve, path=self._path, limit=MAX_LINE
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
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
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
                await _LineWriter(writer).close()
                return
            if not peer_allowed(writer.get_extra_info("socket"), self._socket_gid):
                out = _LineWriter(writer)
                out.send(_error_line(None, RpcError("forbidden", "peer not allowed")))
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


# --------------------------------------------------------------------------
# client


class _ClientConnection:
    """One live connection of an RpcClient and the calls waiting on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.out = _LineWriter(writer)
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
            log.warning("rpc.client_line_too_long", limit=MAX_LINE)
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
            for line, ids in _request_lines(method, items):
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
            reply = json.loads(line)
            request_id = reply["id"]
        except (ValueError, TypeError, KeyError):
            request_id = reply = None
        if not isinstance(reply, dict) or not (request_id is None or _valid_id(request_id)):
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
    out as batch lines (see Batches above); each call still gets its own
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
        encoded = params if isinstance(params, bytes) else _encode_json(params or {}).encode()
        if batched:
            line = encoded
        else:
            line = b'{"id":%d,"method":%b,"params":%b}\n' % (request_id, _encode_json(method).encode(), encoded)
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
                reader, writer = await asyncio.open_unix_connection(self._path, limit=MAX_LINE)
            except OSError as exc:
                raise RpcUnavailable(f"cannot connect to {self._path}: {exc}") from None
            self._conn = _ClientConnection(reader, writer)
            return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close("client closed")
