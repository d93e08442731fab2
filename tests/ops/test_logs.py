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


def test_timestamp_is_utc_iso_as_structlog_timestamper_writes():
    import datetime

    [line] = capture_json(lambda log: log.info("x"))
    stamp = line["timestamp"]
    assert stamp.endswith("Z") and "T" in stamp
    parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert parsed.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - parsed).total_seconds()) < 60


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class _Custom:
    def __structlog__(self) -> str:
        return "custom!"


def test_json_lines_carry_what_structlog_jsonrenderer_writes():
    """orjson renders the lines (compact, no spaces); what they say is what json.dumps says."""
    reference = structlog.processors.JSONRenderer()
    events = [
        {"event": "message_received", "id": 7, "to": "+37529*****67", "level": "info"},
        {"event": "текст", "reason": "кириллица \"в кавычках\"\n\u2028", "n": 1.5, "ok": True, "none": None},
        {"event": "odd", "obj": _Opaque(), "custom": _Custom(), "nested": {"a": [1, (2, 3)]}},
        {"event": "keys", "counts": {200: 3, None: 1, 1.5: 2}, "big": 10**30},  # json.dumps turns keys into str
    ]
    for event in events:
        line = logs.json_renderer()(None, "info", dict(event))
        assert isinstance(line, str) and "\n" not in line
        assert json.loads(line) == json.loads(reference(None, "info", dict(event))), event
    assert json.loads(logs.json_renderer()(None, "info", {"obj": _Opaque(), "custom": _Custom()})) == \
        {"obj": "<opaque>", "custom": "custom!"}


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


def test_production_chain_is_structlogs_documented_set_up_and_console_keeps_its_renderer():
    logs.configure(json=True)
    try:
        assert structlog.get_config()["cache_logger_on_first_use"] is True
        chain = structlog.get_config()["processors"]
        assert isinstance(chain[0], logs.LimitRepeats)
        assert chain[1:4] == [structlog.contextvars.merge_contextvars, logs.redact_secrets,
                              structlog.processors.add_log_level]
        assert isinstance(chain[4], logs.IsoUtcStamper)
        assert chain[5] is structlog.processors.format_exc_info
        assert isinstance(chain[6], structlog.processors.JSONRenderer)
        logs.configure(json=False)
        assert isinstance(structlog.get_config()["processors"][-1], structlog.dev.ConsoleRenderer)
    finally:
        structlog.reset_defaults()


def test_context_variables_are_merged_and_redacted_and_gone_once_cleared():
    def log_in_context(log):
        with structlog.contextvars.bound_contextvars(request="r1", id="from context", key="k"):
            log.info("inside", id=3)
        log.info("after")

    inside, after = capture_json(log_in_context)
    assert inside["request"] == "r1" and inside["key"] == "[redacted]" and inside["id"] == 3  # the call's own wins
    assert "request" not in after and "key" not in after


def test_exceptions_are_formatted_and_secrets_in_every_level_redacted():
    def failing(log):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed", id=3)
        log.warn("w", token="t", password="", secret=None, auth="Basic x")
        log.critical("c", exc_info=False, nested={"token": "kept: only top-level keys are names"})

    failed, warned, critical = capture_json(failing)
    assert failed["level"] == "error" and "ValueError: boom" in failed["exception"] and "exc_info" not in failed
    assert warned["level"] == "warning" and warned["token"] == warned["auth"] == "[redacted]"
    assert warned["password"] == "" and warned["secret"] is None  # empty values are left as they are
    assert critical["nested"] == {"token": "kept: only top-level keys are names"} and "exception" not in critical


def test_json_renderer_refuses_what_jsonrenderer_refuses():
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
            logs.json_renderer()(None, "info", dict(bad))
        assert str(got.value) == str(expected.value)


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


def test_timestamps_are_structlogs_iso_utc_format_to_the_microsecond(monkeypatch):
    """IsoUtcStamper writes the instant TimeStamper(fmt="iso", utc=True) would, in its format,
    second after second, across a second, a day and a year boundary."""
    import datetime
    import re
    import time as time_mod

    iso_utc = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    reference = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    assert iso_utc.fullmatch(reference) or re.fullmatch(r"[^.]*Z", reference)  # the format we copy
    ours = logs.IsoUtcStamper()
    for now in (1_796_083_115.898071, 1_796_083_115.999999, 1_796_083_116.000001, 1_796_083_116.5,
                1_798_761_599.25, 1_798_761_600.75, 1_796_083_115.123456):
        monkeypatch.setattr(time_mod, "time", lambda now=now: now)
        stamp = ours(None, "info", {})["timestamp"]
        assert iso_utc.fullmatch(stamp)
        expected = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        assert abs(datetime.datetime.fromisoformat(stamp[:-1] + "+00:00") - expected) <= datetime.timedelta(microseconds=1)
