"""Log lines: JSON for journald, secrets never, ids on every message line."""

from __future__ import annotations

import io
import json
import logging

import structlog

from smppd import logs, phone


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
