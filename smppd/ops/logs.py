"""structlog set-up: JSON lines for journald, readable lines on a terminal.

Every message costs the daemon two lines (``message_received``,
``message_final``) and the shim one per refusal, so the production set-up is
built for cost per line: loggers are cached on first use, the JSON encoder
and the timestamp's date part are built once, and the JSON lines logged in
the event loop within ``FLUSH_AFTER`` seconds leave in one ``write()``
(``BatchedLines``) instead of one write and flush per line.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import json as json_mod
import json.encoder as json_encoder
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

import structlog


# Keys whose values are secrets wherever they appear.  Call sites never log
# them; this is the net under that rule, for the line someone adds in a hurry.
SECRET_KEYS = frozenset({
    "password", "client_secret", "access_token", "refresh_token", "application_token", "handler_key",
    "secret", "token", "key", "auth",
})


def redact_secrets(logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
    for k in SECRET_KEYS.intersection(event):
        if event[k]:
            event[k] = "[redacted]"
    return event


def _json_fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer does with values JSON has no type for."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


# json.dumps(..., default=f) builds a new JSONEncoder on every call; this is
# the same encoder (same separators, same escaping), built once.
_json_encoder = json_mod.JSONEncoder(default=_json_fallback)
_encode_json = _json_encoder.encode


def _c_encoder_without_markers() -> Callable[[Any, int], Sequence[str]] | None:
    """The C encoder that ``_json_encoder.encode`` builds on every call, built once.

    ``encode`` makes a new one per call because it carries a fresh dict of the
    containers being encoded (to refuse a circular one); that and the Python calls
    around it were a third of the rendering.  Without that dict the encoder keeps no state,
    so one serves every thread; a circular event then overflows the stack instead,
    and ``render_json`` hands it to ``encode`` for the same ValueError as before.
    """
    if json_encoder.c_make_encoder is None:
        return None
    e = _json_encoder
    strings = json_encoder.encode_basestring_ascii if e.ensure_ascii else json_encoder.encode_basestring
    return json_encoder.c_make_encoder(None, e.default, strings, e.indent,
                                       e.key_separator, e.item_separator, e.sort_keys, e.skipkeys, e.allow_nan)


_encode_json_once = _c_encoder_without_markers()


def render_json(logger: object, method: str, event: dict[str, Any]) -> str:
    """The line, exactly as ``structlog.processors.JSONRenderer()`` renders it."""
    if _encode_json_once is None:
        return _encode_json(event)
    try:
        return "".join(_encode_json_once(event, 0))
    except RecursionError:  # circular (or absurdly deep): encode raises what it always raised
        return _encode_json(event)


class _UtcStamper:
    """``timestamp`` as ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-11-22T05:56:09.123456Z``; no fraction when it is zero, as
    ``datetime.isoformat`` does), formatting the date and time of day once
    per second instead of building a datetime per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
        event["timestamp"] = self.format(time.time_ns())
        return event

    def format(self, ns: int) -> str:
        second, rest = divmod(ns, 1_000_000_000)
        if second != self._second:
            stamp = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
            self._prefix = stamp.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        micro = rest // 1000
        return f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"


# structlog keeps one ContextVar per name ever bound with ``bind_contextvars`` in
# this dict (never emptied: ``clear_contextvars`` only unsets the values). Empty,
# no context can be bound, so ``merge_contextvars`` would add nothing. A structlog
# without it gets ``merge_contextvars`` on every line.
_BOUND_CONTEXT_VARS: dict[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)


class ProductionLine:
    """The processors every line runs through, folded into one call:
    ``merge_contextvars``, ``redact_secrets``, ``add_log_level``, the UTC
    timestamp, ``format_exc_info`` and the renderer, in that order.

    Every message costs two lines, and the five processors before the renderer
    were a fifth of a line's cost; folded, the two that nearly never have work to do are
    skipped when they have none (no context var was ever bound; no
    ``exc_info`` key), with exactly the same line as the six in a row.
    One processor, so ``structlog.testing.capture_logs`` still replaces it.
    """

    def __init__(self, renderer: structlog.types.Processor, repeats: RepeatLimiter | None = None) -> None:
        self._stamper = _UtcStamper()
        self._render = renderer
        self._repeats = repeats

    def __call__(self, logger: object, method: str, event: dict[str, Any]) -> Any:
        if self._repeats is not None and (method in _LIMITED_LEVELS or LIBRARY_KEY in event):
            limit_repeats(self._repeats, event)
        if _BOUND_CONTEXT_VARS is None or _BOUND_CONTEXT_VARS:
            event = structlog.contextvars.merge_contextvars(logger, method, event)
        event = redact_secrets(logger, method, event)
        event = structlog.processors.add_log_level(logger, method, event)
        event["timestamp"] = self._stamper.format(time.time_ns())
        if "exc_info" in event:  # format_exc_info leaves an event without one untouched
            event = structlog.processors.format_exc_info(logger, method, event)
        return self._render(logger, method, event)


class LinePacer:
    """At most one line per key every ``every`` seconds, with how many occurrences it stands for.

    Sans-I/O (``now`` is given). Every "say it once per portal, CODE or route per period" of
    ours goes through this: a busy portal or a hostile caller must not turn one warning into a
    line per post. ``note`` counts one occurrence; it returns the occurrences since the last
    line, this one included, when a line is due, else None. Keys are bounded (``max_keys``):
    made-up route names or CODEs cannot grow it.
    """

    def __init__(self, every: float, max_keys: int = 10_000) -> None:
        self.every = every
        self._max_keys = max_keys
        self._due: dict[Any, float] = {}
        self._count: dict[Any, int] = {}

    def note(self, key: Any, now: float) -> int | None:
        if key not in self._due and len(self._due) >= self._max_keys:
            self._due.clear()
            self._count.clear()
        self._count[key] = self._count.get(key, 0) + 1
        if now < self._due.get(key, float("-inf")):
            return None
        self._due[key] = now + self.every
        return self._count.pop(key)


class RepeatLimiter:
    """Which lines of a kind to write: the first ``burst`` per ``window`` seconds, then none
    until the window ends; the next line written says how many were left out.

    Sans-I/O (``now`` is given), one dict lookup per line. A kind is the event name (our lines)
    or the logger and message template (a library's), so a flood of one refusal or one
    library traceback costs a few lines per window instead of a line per request (the shim
    once wrote 328 MB of ``accept()`` tracebacks in 90 s). ``max_kinds`` bounds the memory: a
    limiter that meets more kinds forgets the old ones and starts again.
    """

    def __init__(self, *, burst: int = 10, window: float = 60.0, max_kinds: int = 4096) -> None:
        self.burst, self.window, self.max_kinds = burst, window, max_kinds
        self._kinds: dict[object, list[float | int]] = {}  # kind -> [window start, written, left out]

    def admit(self, kind: object, now: float) -> tuple[bool, int]:
        """(write this line?, how many lines of its kind were left out before it)."""
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.window:
            left_out = int(state[2]) if state is not None else 0
            if state is None and len(self._kinds) >= self.max_kinds:
                self._kinds.clear()
            self._kinds[kind] = [now, 1, 0]
            return True, left_out
        if state[1] < self.burst:
            state[1] += 1
            return True, 0
        state[2] += 1
        return False, 0


LIBRARY_KEY = "logger"
"""The key a line from a standard-library logger (aiohttp, asyncio, ...) carries: its logger's name."""

_LIMITED_LEVELS = frozenset({"warning", "warn", "error", "exception", "critical", "fatal"})
"""Levels whose repeats are limited; info and debug lines of our own (one or two per message,
the audit trail) are never dropped."""


def limit_repeats(limiter: RepeatLimiter, event: dict[str, Any]) -> dict[str, Any]:
    """Drop the line (``structlog.DropEvent``) when its kind is over its limit; count the
    left-out lines on the next one written."""
    kind = (event.get(LIBRARY_KEY), event.get("event"))
    write, left_out = limiter.admit(kind, time.monotonic())
    if not write:
        raise structlog.DropEvent
    if left_out:
        event["repeated"] = left_out
    return event


# structlog's level methods and the level each one logs at; "msg", "warn" and
# "fatal" are its aliases of the first three (processors see the level's name).
_LEVEL_METHODS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "critical": logging.CRITICAL}
_ALIASES = {"msg": "info", "warn": "warning", "fatal": "critical"}


def _interpolate(event: Any, args: tuple[Any, ...]) -> Any:
    """``log.info("%s sent", n)`` as structlog formats it (a single non-empty mapping by name)."""
    if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        return event % args[0]
    return event % args


def _lean_method(name: str) -> Callable[..., Any]:
    """One enabled level method of ``lean_bound_logger``: what structlog's
    ``meth`` → ``_proxy_to_logger`` → ``_process_event`` do, in one call."""

    def method(self: Any, event: Any, *args: Any, **kw: Any) -> Any:
        if args:
            event = _interpolate(event, args)
        event_dict: Any = self._context.copy()
        event_dict.update(kw)
        if event is not None:
            event_dict["event"] = event
        try:
            for proc in self._processors:
                event_dict = proc(self._logger, name, event_dict)
            if isinstance(event_dict, str):  # what a renderer returns: the usual case
                return getattr(self._logger, name)(event_dict)
            if isinstance(event_dict, (bytes, bytearray)):
                return getattr(self._logger, name)(event_dict)
            if isinstance(event_dict, tuple):
                return getattr(self._logger, name)(*event_dict[0], **event_dict[1])
            if isinstance(event_dict, dict):
                return getattr(self._logger, name)(**event_dict)
        except structlog.DropEvent:
            return None
        raise ValueError("Last processor didn't return an appropriate value.  "
                         "Valid return values are a dict, a tuple of (args, kwargs), bytes, or a str.")

    method.__name__ = name
    return method


def _has_lean_attributes(bound_logger: type) -> bool:
    """Whether a bound logger keeps what the lean methods read (``_logger``, ``_processors``,
    ``_context``), as every structlog since 15 does. These are private: should a release
    move them, logging falls back to structlog's own methods instead of failing on the
    first line."""
    probe = bound_logger(structlog.PrintLogger(), [], {})
    return all(hasattr(probe, name) for name in ("_logger", "_processors", "_context"))


def lean_bound_logger(level: int) -> type:
    """``structlog.make_filtering_bound_logger(level)`` with its enabled level
    methods doing their work in one call instead of three.

    structlog hands a line's keywords through three calls (the level method,
    ``_proxy_to_logger``, ``_process_event``), packing them into a new dict at
    each; that shell cost nearly as much as the processors.  Everything else (bind,
    the disabled levels, ``exception``, ``log``, the async methods) is
    structlog's own; the lines are the same, and ``capture_logs`` still sees them.
    """
    base = structlog.make_filtering_bound_logger(level)
    if not _has_lean_attributes(base):  # a structlog that keeps its state elsewhere: its own methods
        return base
    methods = {name: _lean_method(name) for name, at in _LEVEL_METHODS.items() if at >= level}
    methods.update({alias: methods[name] for alias, name in _ALIASES.items() if name in methods})
    return type(base.__name__, (base,), methods)


def _client_faults() -> tuple[type[BaseException], ...]:
    """Exceptions a client (or the network) causes: a bad request line, a body that does not
    decode, a connection reset. A library logging one is telling of the client, not of us."""
    faults: list[type[BaseException]] = [ConnectionError, TimeoutError, asyncio.IncompleteReadError]
    try:
        from aiohttp import http_exceptions, web_protocol

        faults += [http_exceptions.HttpProcessingError, web_protocol.RequestPayloadError]
    except ImportError:  # pragma: no cover -- aiohttp is a dependency
        pass
    return tuple(faults)


_CLIENT_FAULTS = _client_faults()
_STD_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
               logging.ERROR: "error", logging.CRITICAL: "critical"}


def library_line(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """(level, fields) of our line for a standard-library record (aiohttp, asyncio, ...).

    A library's message and its exception may carry whatever it was handed: aiohttp's parser
    errors quote the request bytes (tokens, the URL key, numbers, texts), asyncio's reprs
    quote objects. So the line keeps the message *template* only (its first line, arguments
    never filled in), the exception's type and where it was raised, never its text or its
    traceback's values; an exception a client caused is logged at info.
    """
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    fields: dict[str, Any] = {LIBRARY_KEY: record.name, "event": template.split("\n", 1)[0][:120]}
    level = _STD_LEVELS.get(record.levelno, "error" if record.levelno > logging.ERROR else "debug")
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None:
        fields["error"] = type(exc).__qualname__
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            fields["where"] = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
        if isinstance(exc, _CLIENT_FAULTS) and record.levelno > logging.INFO:
            level, fields["client_fault"] = "info", True
    return level, fields


class LibraryLogs(logging.Handler):
    """The root logger's only handler: every library's record becomes one of our lines, through
    the same redaction, repeat limit and output as our own (see ``library_line``)."""

    def __init__(self) -> None:
        super().__init__()
        self._log = structlog.get_logger("library")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level, fields = library_line(record)
            getattr(self._log, level)(**fields)
        except Exception:  # logging must never take the process down, nor print the record
            pass


def route_library_loggers(level: int = logging.INFO) -> LibraryLogs:
    """Send every standard-library logger (aiohttp.access/server/web/client, asyncio, the root)
    through ``LibraryLogs``, replacing whatever handlers the root had."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    bridge = LibraryLogs()
    root.addHandler(bridge)
    root.setLevel(level)
    for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.client", "asyncio"):
        lib = logging.getLogger(name)
        lib.propagate, lib.disabled = True, False
        for handler in list(lib.handlers):
            lib.removeHandler(handler)
    logging.captureWarnings(True)
    return bridge


FLUSH_AFTER = 0.01
"""Seconds a line logged in the event loop may wait for the lines after it.
Short enough that journald's arrival time stays right to the eye; long
enough that under load one write carries a dozen lines, not one or two."""


class BatchedLines:
    """A structlog logger that writes the lines logged in the event loop
    within ``delay`` seconds with one ``write()`` and one ``flush()``.

    Under load the daemon logs a line or two per loop iteration; a write and
    a flush per line was a syscall per line.  The first line queued arms a
    ``delay`` timer on the running loop that writes everything queued by
    then.  A line logged where no loop runs in the thread (start-up,
    shutdown, the store's writer thread) is written at once, together with
    anything queued before it, so lines stay in order.  Lines a stopped loop
    never flushed go out with the next line or at interpreter exit
    (``atexit``), so a normal exit or an exception loses nothing; only a
    ``kill -9`` can lose the last ``delay`` seconds of lines.
    """

    def __init__(self, file: TextIO, *, delay: float = FLUSH_AFTER) -> None:
        self._file = file
        self._delay = delay
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._flush_on: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._lines.append(message)
            if loop is not None:
                if self._flush_on is loop:
                    return  # its flush is already due on this loop
                if self._flush_on is None:
                    self._flush_on = loop
                    loop.call_later(self._delay, self.flush)
                    return
        # No loop here, or the flush is due on another (perhaps stopped) loop.
        self.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def flush(self) -> None:
        """Write every queued line now (one ``write`` and one ``flush``)."""
        with self._lock:
            lines, self._lines = self._lines, []
            self._flush_on = None
            if not lines:
                return
            lines.append("")
            try:
                self._file.write("\n".join(lines))
                self._file.flush()
            except (OSError, ValueError):  # stdout gone (closed pipe, closed file): nothing to tell
                pass


class PipeSafe:
    """A console stream whose reader may go away (`smppd demo | head`, issue 14 item 14).

    structlog's PrintLogger writes and flushes each line; into a closed pipe that raises
    BrokenPipeError inside whatever logged (an SMPP callback, a route), which asyncio then
    prints as a traceback per line.  The first EPIPE points the descriptor at /dev/null,
    so this and every later write (ours, print's, the interpreter's final flush) is quiet.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def write(self, text: str) -> int:
        try:
            return self._file.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._file.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._file.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # not a real descriptor (a test's StringIO): nothing to point
            pass


def configure(*, json: bool | None = None, level: int = logging.INFO, cache: bool = True,
              file: TextIO | None = None) -> None:
    """Configure structlog once per process.

    ``json=None`` picks JSON when stdout is not a terminal (systemd/journald),
    console output otherwise.  ``cache`` keeps each logger bound after its
    first line (a logger then ignores a later ``structlog.configure`` of the
    level or the output; ``structlog.testing.capture_logs`` still works, as it
    edits the processor list in place).

    Every standard-library logger is routed here too (``route_library_loggers``),
    and warning-or-worse lines (and all library lines) of one kind are limited
    to a burst per minute (``RepeatLimiter``). ``file`` is stdout unless given.
    """
    out = sys.stdout if file is None else file
    if json is None:
        json = not out.isatty()
    renderer: structlog.types.Processor = render_json if json else structlog.dev.ConsoleRenderer(colors=False)
    if json:
        lines = BatchedLines(out)
        factory: Any = lambda *args: lines  # noqa: E731 -- one writer for every logger
    else:  # a person at a terminal: every line at once, no batching
        factory = structlog.PrintLoggerFactory(file=PipeSafe(out))  # type: ignore[arg-type]
    structlog.configure(
        processors=[ProductionLine(renderer, RepeatLimiter())],
        wrapper_class=lean_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    route_library_loggers(level)
