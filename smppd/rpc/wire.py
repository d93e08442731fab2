"""The daemon API's wire format: newline-delimited JSON, written down here once.

The server (``server.py``) and the client (``client.py``) both build and read
their lines with this module, so the two sides cannot drift apart.

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

Error codes produced by the package
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
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from .. import json_fast

__all__ = [
    "BATCHED",
    "BATCH_SUFFIX",
    "INT_LIMIT",
    "MAX_BATCH",
    "MAX_INFLIGHT",
    "MAX_LINE",
    "BadRequest",
    "LineWriter",
    "RpcError",
    "RpcUnavailable",
    "encode_json",
    "encode_line",
    "error_line",
    "parse_request",
    "request_lines",
    "valid_id",
]

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

INT_LIMIT = 2**63
"""Integers a request may carry: signed 64 bits, what SQLite and every id we keep can hold."""


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


# --- writing a line ---------------------------------------------------------------------

# json.dumps with arguments builds a new encoder per call; this one is built
# once and writes exactly the same bytes.
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_line(obj: Mapping[str, Any]) -> bytes:
    """``obj`` as one line of the wire format: the form every reply and request takes."""
    encoded = json_fast.dumps(obj)
    if encoded is None:
        encoded = encode_json(obj).encode()
    return encoded + b"\n"


def error_line(request_id: Any, error: RpcError) -> bytes:
    """The reply line refusing ``request_id`` (``None``: a connection-level refusal)."""
    return encode_line({"id": request_id, "error": error.to_wire()})


# The details of a crash stay in the daemon's log, never in the reply.
INTERNAL = RpcError("internal", "internal error")
NOT_AN_OBJECT = RpcError("bad_request", "params must be an object")
_BATCH_ENVELOPE = len(b'{"id":,"method":,"params":{"items":[]}}') + 20  # 20: the longest id we make


def request_lines(method: str, items: list[tuple[int, bytes]]) -> list[tuple[bytes, list[int]]]:
    """Lines carrying the requests ``items`` (id, encoded params) of ``method``,
    each with the ids it carries: a batch line per up to ``MAX_BATCH`` requests
    that fit in ``MAX_LINE``, a plain request line for a request alone.

    A request too long to share a line goes alone, as it would unbatched (and
    is refused by the server as too long, as it would be unbatched).
    """
    name = encode_json(method).encode()
    batch_name = encode_json(method + BATCH_SUFFIX).encode()
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


# --- reading a request line -------------------------------------------------------------


class _OutOfRange(ValueError):
    """A number the decoder must refuse: an integer past 64 bits, NaN or Infinity."""


def _bounded_int(text: str) -> int:
    value = int(text)
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise _OutOfRange
    return value


def _no_constant(name: str) -> Any:
    raise _OutOfRange


# Built once: json.loads with keyword arguments builds a decoder per call (~1 µs).
_decode_request = json.JSONDecoder(parse_int=_bounded_int, parse_constant=_no_constant).decode


def valid_id(value: Any) -> bool:
    """Whether ``value`` may be a request id: an integer or a string."""
    # bool is an int subclass; true/false as ids would be a client bug.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class BadRequest(Exception):
    """A line that is not a request; answered ``bad_request`` at once, the connection kept."""

    def __init__(self, request_id: Any, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.message = message


def decode_line(line: bytes) -> Any:
    """One line's JSON, with the refusals of the ``Error codes`` above: raises
    ``_OutOfRange``, ``RecursionError`` or ``ValueError``."""
    decoded = json_fast.loads(line)
    if decoded is None:
        decoded = _decode_request(line.decode("utf-8"))
    return decoded


def parse_request(line: bytes) -> tuple[str | int, str, dict[str, Any]]:
    """Split one request line into (id, method, params) or raise BadRequest."""
    try:
        request = decode_line(line)
    except _OutOfRange:
        raise BadRequest(None, "numbers must be integers of at most 64 bits or finite decimals") from None
    except RecursionError:
        raise BadRequest(None, "nested too deeply") from None
    except ValueError:  # includes UnicodeDecodeError
        raise BadRequest(None, "line is not valid UTF-8 JSON") from None
    if not isinstance(request, dict):
        raise BadRequest(None, "request must be a JSON object")
    request_id = request.get("id")
    if not valid_id(request_id):
        raise BadRequest(None, "id must be an integer or a string")
    method = request.get("method")
    if not isinstance(method, str) or not method:
        raise BadRequest(request_id, "method must be a non-empty string")
    params = request.get("params", {})
    if not isinstance(params, dict):
        raise BadRequest(request_id, "params must be an object")
    return request_id, method, params


# --- sending lines, both sides ----------------------------------------------------------


class LineWriter:
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
