"""structlog set-up: JSON lines for journald, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

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


def configure(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog once per process.

    ``json=None`` picks JSON when stdout is not a terminal (systemd/journald),
    console output otherwise.
    """
    if json is None:
        json = not sys.stdout.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
