"""structlog set-up: JSON lines for journald, readable lines on a terminal.

Every message costs the daemon two lines (``message_received``,
``message_final``) and the shim one per refusal.  The set-up is structlog's
documented fast one (its "Performance" page): a filtering bound logger, so a
line below the level costs one no-op call; loggers cached on first use; a
plain processor chain.  The JSON lines logged in the event loop within
``FLUSH_AFTER`` seconds leave in one ``write()`` (``BatchedLines``) instead of
one write and flush per line.
"""

from __future__ import annotations

import asyncio
import atexit
import json as json_mod
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

import orjson
import structlog


# Keys whose values are secrets wherever they appear.  Call sites never log
# them; this is the net under that rule, for the line someone adds in a hurry.
SECRET_KEYS = frozenset({
    "password", "client_secret", "access_token", "refresh_token", "application_token", "handler_key",
    "secret", "token", "key", "auth",
})


def redact_secrets(logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A processor: top-level values under ``SECRET_KEYS`` never reach a line."""
    for k in SECRET_KEYS.intersection(event):
        if event[k]:
            event[k] = "[redacted]"
    return event


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


class LimitRepeats:
    """The processor in front of every line: warning-or-worse lines of ours and every library
    line go through ``limit_repeats``; info and debug lines of ours pass untouched."""

    def __init__(self, limiter: RepeatLimiter) -> None:
        self.limiter = limiter

    def __call__(self, logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if method in _LIMITED_LEVELS or LIBRARY_KEY in event:
            return limit_repeats(self.limiter, event)
        return event


def _orjson_text(obj: Any, **kw: Any) -> str:
    """``orjson.dumps`` as structlog's JSONRenderer calls its serializer, as text (what
    ``BatchedLines`` and structlog's PrintLogger write).  What orjson refuses and
    ``json.dumps`` takes (a dict key that is not a string, an int beyond 64 bits) is
    ``json.dumps``' line, so no line is lost to its values."""
    try:
        return orjson.dumps(obj, **kw).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json_mod.dumps(obj, **kw)


class IsoUtcStamper:
    """A processor: ``timestamp`` in UTC as ``2026-12-02T15:38:35.898071Z``, the format of
    structlog's ``TimeStamper(fmt="iso", utc=True)`` (except that a time on the exact second
    keeps its ``.000000``: every stamp has the same width).

    Why not structlog's: it builds a ``datetime`` and formats all of it for every line
    (1.27 µs); the date and time of day change once a second, so they are formatted once a
    second here and only the microseconds per line (0.54 µs). Two lines per message.
    The cache is one tuple, swapped whole, so a line logged from the store's writer thread
    never pairs one second's prefix with another's fraction.
    """

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        cached, prefix = self._second
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        event["timestamp"] = f"{prefix}.{int((now - second) * 1e6):06d}Z"
        return event


def json_renderer() -> structlog.processors.JSONRenderer:
    """structlog's JSONRenderer with orjson as its serializer (structlog's "Performance"
    page): ~0.5 µs a line against json.dumps' ~3.7, two lines per message."""
    return structlog.processors.JSONRenderer(serializer=_orjson_text)


def processors(renderer: structlog.types.Processor, repeats: RepeatLimiter) -> list[Any]:
    """Every line's chain, in order: the repeat limit first (a dropped line costs nothing
    more), bound context variables, redaction, the level, a UTC ISO timestamp, a formatted
    traceback, the renderer."""
    return [
        LimitRepeats(repeats),
        structlog.contextvars.merge_contextvars,
        redact_secrets,
        structlog.processors.add_log_level,
        IsoUtcStamper(),
        structlog.processors.format_exc_info,
        renderer,
    ]


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
    renderer: structlog.types.Processor = (
        json_renderer() if json else structlog.dev.ConsoleRenderer(colors=False))
    if json:
        lines = BatchedLines(out)
        factory: Any = lambda *args: lines  # noqa: E731 -- one writer for every logger
    else:  # a person at a terminal: every line at once, no batching
        factory = structlog.PrintLoggerFactory(file=PipeSafe(out))  # type: ignore[arg-type]
    structlog.configure(
        processors=processors(renderer, RepeatLimiter()),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    route_library_loggers(level)
