"""Log lines: JSON for journald, secrets never, ids on every message line."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from smppd import phone
from smppd.ops import logs


def capture_json(fn) -> list[dict]:
    buf = io.StringIO()
    logs.configure(json=True, level=logging.INFO)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buf))
    try:
        fn(structlog.get_logger("t"))
    finally:
        structlog.reset_defaults()
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_with_level_and_time():
    [line] = capture_json(lambda log: log.info("message_received", id=7, b24_id="ab" * 16, route="life",
                                              to=phone.mask("+375291234567")))
    assert line["event"] == "message_received" and line["level"] == "info" and line["timestamp"].endswith("Z")
    assert line["to"] == "+37529*****67" and line["route"] == "life" and line["id"] == 7


def test_secrets_are_redacted_even_if_someone_logs_them():
    [line] = capture_json(lambda log: log.warning("oops", password="s3cr3t", access_token="tok", key="k",
                                                 application_token="a", route="life"))
    assert not {"s3cr3t", "tok", "k", "a"} & set(line.values())
    assert line["password"] == line["access_token"] == line["key"] == "[redacted]" and line["route"] == "life"


def test_console_output_on_a_terminal_is_not_json(capsys):
    logs.configure(json=False)
    try:
        structlog.get_logger("t").info("smpp_bound", route="life")
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "smpp_bound" in out and "route=life" in out and not out.lstrip().startswith("{")


# --- the production set-up is cheap per line, and still the same lines ---------------------------

class _Writes:
    """A stdout that records each write() (and counts flushes)."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, data: str) -> int:
        self.writes.append(data)
        return len(data)

    def flush(self) -> None:
        self.flushes += 1

    def lines(self) -> list[str]:
        return "".join(self.writes).splitlines()


def test_timestamp_is_exactly_what_structlog_timestamper_writes():
    import datetime

    stamper = logs._UtcStamper()
    second = 1_795_000_000 * 10**9
    samples = [0, 1, 999, 1000, 999_999_999, 10**9, 10**9 + 1000, 59 * 10**9 + 123_456_789]
    samples += [(i * 7_777_777_777_777) % (10**9 * 86_400 * 400) for i in range(2000)]
    for ns in (second + s for s in samples):
        expected = datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc).replace(
            microsecond=ns // 1000 % 10**6).isoformat().replace("+00:00", "Z")
        assert stamper.format(ns) == expected, ns
    assert stamper.format(second) == "2026-11-18T11:06:40Z"  # no fraction when it is zero, as isoformat
    line = stamper(None, "info", {})["timestamp"]
    assert structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"][:16] == line[:16]


def test_json_lines_are_byte_for_byte_what_structlog_jsonrenderer_writes():
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    class Custom:
        def __structlog__(self) -> str:
            return "custom!"

    reference = structlog.processors.JSONRenderer()
    events = [
        {"event": "message_received", "id": 7, "to": "+37529*****67", "level": "info"},
        {"event": "текст", "reason": "кириллица \"в кавычках\"\n", "n": 1.5, "ok": True, "none": None},
        {"event": "odd", "obj": Opaque(), "custom": Custom(), "nested": {"a": [1, (2, 3)]}, "inf": float("inf")},
    ]
    for event in events:
        assert logs.render_json(None, "info", dict(event)) == reference(None, "info", dict(event))


async def test_lines_logged_in_the_loop_within_the_delay_leave_in_one_write():
    import asyncio

    out = _Writes()
    lines = logs.BatchedLines(out, delay=0.05)
    for i in range(3):
        lines.info(f"line {i}")
    await asyncio.sleep(0)  # next iteration: still within the delay
    lines.warning("line 3")
    await asyncio.sleep(0.01)
    lines.info("line 4")
    assert out.writes == []  # queued, not lost
    await asyncio.sleep(0.1)
    assert out.writes == ["line 0\nline 1\nline 2\nline 3\nline 4\n"] and out.flushes == 1
    lines.info("next")
    await asyncio.sleep(0.1)
    assert out.lines() == [f"line {i}" for i in range(5)] + ["next"] and len(out.writes) == 2
    assert logs.BatchedLines(out)._delay == logs.FLUSH_AFTER <= 0.05  # short: journald's clock stays right


def test_without_a_loop_each_line_is_written_at_once_and_in_order():
    import asyncio
    import threading

    out = _Writes()
    lines = logs.BatchedLines(out)
    lines.info("before the loop")
    assert out.lines() == ["before the loop"]

    async def in_loop() -> None:
        lines.info("in the loop")
        # another thread (the store's writer) logs while the loop's line is queued
        worker = threading.Thread(target=lines.warning, args=("from a thread",))
        worker.start()
        worker.join()

    asyncio.run(in_loop())
    assert out.lines() == ["before the loop", "in the loop", "from a thread"]


def test_a_line_left_by_a_stopped_loop_goes_out_with_the_next_line_or_at_exit(monkeypatch):
    import asyncio
    import atexit

    at_exit = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    out = _Writes()
    lines = logs.BatchedLines(out)
    assert at_exit == [lines.flush]

    def stopped_loop_leaves_a_line() -> None:
        loop = asyncio.new_event_loop()

        def last_words() -> None:
            lines.error("last words")
            loop.stop()  # the loop stops before the iteration that would flush

        loop.call_soon(last_words)
        loop.run_forever()
        loop.close()

    stopped_loop_leaves_a_line()
    assert out.writes == []
    lines.info("after")  # no loop now: written at once, the queued line first
    assert out.lines() == ["last words", "after"]

    stopped_loop_leaves_a_line()

    async def other_loop() -> None:
        lines.info("in another loop")

    asyncio.run(other_loop())  # a new loop does not wait for the dead one's flush
    assert out.lines() == ["last words", "after", "last words", "in another loop"]

    stopped_loop_leaves_a_line()
    at_exit[0]()  # as the interpreter does at exit
    assert out.lines()[-1] == "last words" and len(out.lines()) == 5


def test_a_closed_stdout_does_not_raise_into_the_caller():
    out = io.StringIO()
    lines = logs.BatchedLines(out)
    out.close()
    lines.info("nobody listens")  # no exception


def test_production_configure_caches_loggers_and_capture_logs_still_works(capsys):
    import asyncio

    logs.configure(json=True, level=logging.INFO)
    try:
        log = structlog.get_logger("cached")
        log.info("first", route="life")  # binds (and caches) the logger
        log.debug("filtered")
        with structlog.testing.capture_logs() as captured:
            log.info("captured", password="s3cr3t")
        assert captured == [{"event": "captured", "log_level": "info", "password": "s3cr3t"}]

        async def two_lines() -> None:
            log.info("message_received", id=1, key="k")
            log.warning("message_final", id=1)

        asyncio.run(two_lines())  # the loop closed before the timer: queued until exit
        structlog.get_config()["logger_factory"]().flush()  # what atexit does
    finally:
        structlog.reset_defaults()
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [g["event"] for g in got] == ["first", "message_received", "message_final"]
    assert got[1]["key"] == "[redacted]" and got[2]["level"] == "warning" and got[0]["timestamp"].endswith("Z")


def _six_processors(method: str, event: dict) -> str:
    """The chain ``logs.ProductionLine`` folds, one processor after another."""
    for proc in (structlog.contextvars.merge_contextvars, logs.redact_secrets, structlog.processors.add_log_level,
                 logs._UtcStamper(), structlog.processors.format_exc_info, logs.render_json):
        event = proc(None, method, event)
    return event


def _events_to_log() -> list[tuple[str, dict]]:
    try:
        raise ValueError("boom")
    except ValueError as e:
        error = e
        events = [("exception", {"event": "failed", "exc_info": True, "id": 3})]  # exc_info read in the except
    events += [
        ("info", {"id": 7, "to": "+37529*****67", "event": "message_received"}),
        ("warn", {"event": "w", "token": "t", "password": "", "secret": None, "auth": "Basic x"}),
        ("error", {"event": "e", "exc_info": error, "level": "mine"}),
        ("critical", {"event": "c", "exc_info": False, "timestamp": "mine"}),
        ("debug", {"event": "d", "exc_info": None, "nested": {"token": "kept: only top-level keys are names"}}),
    ]
    return events


def test_the_folded_production_line_is_the_six_processors_in_a_row(monkeypatch):
    monkeypatch.setattr(logs.time, "time_ns", lambda: 1_795_000_000_123_456_000)
    line = logs.ProductionLine(logs.render_json)
    monkeypatch.setattr(logs, "_BOUND_CONTEXT_VARS", {})  # nothing ever bound: the merge is skipped
    for method, event in _events_to_log():
        assert line(None, method, dict(event)) == _six_processors(method, dict(event)), event
    monkeypatch.undo()
    monkeypatch.setattr(logs.time, "time_ns", lambda: 1_795_000_000_000_000_000)
    with structlog.contextvars.bound_contextvars(request="r1", id="from context", key="k"):
        assert logs._BOUND_CONTEXT_VARS  # the name is now known: every line merges
        for method, event in _events_to_log():
            folded = line(None, method, dict(event))
            assert folded == _six_processors(method, dict(event)), event
            assert '"request": "r1"' in folded and '"key": "[redacted]"' in folded
    for method, event in _events_to_log():  # bound once, cleared: merged, and nothing added
        folded = line(None, method, dict(event))
        assert folded == _six_processors(method, dict(event)) and "r1" not in folded


def test_production_configure_runs_the_folded_line_and_console_keeps_its_renderer():
    logs.configure(json=True)
    try:
        [proc] = structlog.get_config()["processors"]
        assert isinstance(proc, logs.ProductionLine) and proc._render is logs.render_json
        logs.configure(json=False)
        [proc] = structlog.get_config()["processors"]
        assert isinstance(proc._render, structlog.dev.ConsoleRenderer)
    finally:
        structlog.reset_defaults()


def test_render_json_refuses_what_jsonrenderer_refuses_and_works_without_the_c_encoder(monkeypatch):
    reference = structlog.processors.JSONRenderer()
    circular: dict = {"event": "loop"}
    circular["self"] = circular
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for bad in ({"event": "circular", "x": circular}, {"event": "deep", "x": deep}, {1.5j: "key"}):
        with pytest.raises(Exception) as expected:
            reference(None, "info", dict(bad))
        with pytest.raises(type(expected.value)) as got:
            logs.render_json(None, "info", dict(bad))
        assert str(got.value) == str(expected.value)
    event = {"event": "текст", "n": 1.5, "nested": {"a": [1, (2, 3)]}, "none": None, "obj": object}
    fast = logs.render_json(None, "info", dict(event))
    monkeypatch.setattr(logs, "_encode_json_once", None)  # a Python without the _json module
    assert logs.render_json(None, "info", dict(event)) == fast == reference(None, "info", dict(event))


def _calls_through(wrapper_class: type, processors: list) -> list:
    """What the logger receives (method, args, kwargs) for a set of calls through ``wrapper_class``."""
    received: list = []

    class Recorder:
        def __getattr__(self, method):
            return lambda *args, **kw: received.append((method, args, kw)) or "returned"

    def run(log):
        returned = [
            log.info("plain", id=1, to="+37529*****67"),
            log.info("%s of %d", "three", 3, route="life"),
            log.warning("%(n)s left", {"n": 5}),
            log.info("%s mapping as one arg", {}),
            log.warn("alias of warning"), log.msg("alias of info"), log.fatal("alias of critical"),
            log.error("error", reason=None), log.critical("critical", key="k"),
            log.debug("below the level: dropped", id=2),
            log.log(logging.WARNING, "by level %s", "number"),
            log.bind(request="r1", id=0).info("bound", id=3),
            log.info(None, only="kw"),
        ]
        try:
            raise ValueError("boom")
        except ValueError:
            returned.append(log.exception("failed", id=4))
        return returned

    structlog.configure(processors=processors, wrapper_class=wrapper_class, logger_factory=lambda *a: Recorder(),
                        cache_logger_on_first_use=False)
    try:
        returned = run(structlog.get_logger("t"))
    finally:
        structlog.reset_defaults()
    return [returned, received]


def test_lean_bound_logger_delivers_exactly_what_structlog_delivers(monkeypatch):
    monkeypatch.setattr(logs.time, "time_ns", lambda: 1_795_000_000_000_000_000)

    def drop_debugging(logger, method, event):
        if event.get("id") == 3:
            raise structlog.DropEvent
        return event

    chains = [
        [logs.ProductionLine(logs.render_json)],  # the production chain: a str
        [drop_debugging, logs.ProductionLine(logs.render_json)],
        [lambda logger, method, event: (("positional",), {"method": method, **event})],  # a tuple
        [lambda logger, method, event: event],  # a dict: its items become keywords
        [lambda logger, method, event: repr(sorted(event)).encode()],  # bytes
    ]
    for level in (logging.DEBUG, logging.INFO, logging.WARNING):
        for chain in chains:
            assert _calls_through(logs.lean_bound_logger(level), chain) == \
                _calls_through(structlog.make_filtering_bound_logger(level), chain), (level, chain)
    with pytest.raises(ValueError, match="Last processor"):
        _calls_through(logs.lean_bound_logger(logging.INFO), [lambda logger, method, event: 42])
    lean = logs.lean_bound_logger(logging.WARNING)
    assert lean.info is structlog.make_filtering_bound_logger(logging.WARNING).info  # disabled: structlog's no-op
    assert issubclass(lean, structlog.make_filtering_bound_logger(logging.WARNING))


def test_lean_bound_logger_falls_back_when_structlog_keeps_its_state_elsewhere(monkeypatch):
    """The lean methods read structlog's private attributes; a release without them gets
    structlog's own bound logger, which still logs, not one that fails on the first line."""
    real = structlog.make_filtering_bound_logger

    def moved(level):
        base = real(level)

        class Moved(base):  # type: ignore[misc, valid-type]
            def __init__(self, logger, processors, context):
                super().__init__(logger, processors, context)
                self.state = (self._logger, self._processors, self._context)
                del self._context

        return Moved

    monkeypatch.setattr(structlog, "make_filtering_bound_logger", moved)
    fallback = logs.lean_bound_logger(logging.INFO)
    assert fallback.__name__ == "Moved"
    assert "info" not in vars(fallback)  # no lean method was put on it
    monkeypatch.undo()
    lean = logs.lean_bound_logger(logging.INFO)
    assert "info" in vars(lean)


# --- repeated lines and the libraries' loggers (issue 19 §2, §6) -------------------------------

def test_repeat_limiter_writes_a_burst_per_window_then_counts_what_it_left_out():
    limiter = logs.RepeatLimiter(burst=3, window=10.0)
    seen = [limiter.admit("accept_failed", t * 0.01) for t in range(100)]
    assert [w for w, _ in seen].count(True) == 3
    assert limiter.admit("accept_failed", 10.5) == (True, 97)  # the next window says how many were dropped
    assert limiter.admit("other", 10.5) == (True, 0)  # kinds are counted apart


def test_repeat_limiter_memory_is_bounded_by_kinds():
    limiter = logs.RepeatLimiter(burst=1, window=60.0, max_kinds=100)
    for n in range(10_000):
        limiter.admit(n, 0.0)
    assert len(limiter._kinds) <= 100


def test_a_flood_of_one_warning_is_a_few_lines_and_info_lines_are_never_dropped():
    def flood(log):
        for _ in range(500):
            log.warning("bitrix24.post", outcome="unauthorized", http_status=401)
        for n in range(500):
            log.info("message_received", id=n)

    lines = capture_json(flood)
    assert sum(1 for line in lines if line["event"] == "bitrix24.post") == 10
    assert sum(1 for line in lines if line["event"] == "message_received") == 500


def test_library_records_keep_the_template_and_the_exception_type_never_the_bytes():
    buf = io.StringIO()
    logs.configure(json=True, level=logging.INFO, file=buf, cache=False)
    try:
        from aiohttp.http_exceptions import BadHttpMessage

        secret = "key=SeCrEt123&message_to=%2B375291234567&message_body=Hello+there"
        try:
            raise BadHttpMessage(f"Invalid header value: {secret!r}")
        except BadHttpMessage:
            logging.getLogger("aiohttp.server").exception("Error handling request from %s: %r", "1.2.3.4", secret)
        logging.getLogger("asyncio").error("Task exception was never retrieved\nfuture: %r", secret)
        try:
            raise RuntimeError(secret)
        except RuntimeError:
            logging.getLogger().error("boom %s", secret, exc_info=True)
        structlog.get_logger("t").info("flush")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    text = buf.getvalue()
    assert "SeCrEt123" not in text and "375291234567" not in text and "Hello" not in text and "1.2.3.4" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    server = next(line for line in lines if line.get("logger") == "aiohttp.server")
    assert server["error"] == "BadHttpMessage" and server["level"] == "info" and server["client_fault"]
    assert next(line for line in lines if line.get("logger") == "asyncio")["event"] == "Task exception was never retrieved"
    root = next(line for line in lines if line.get("logger") == "root")
    assert root["level"] == "error" and root["error"] == "RuntimeError" and root["where"].startswith("test_logs.py:")
