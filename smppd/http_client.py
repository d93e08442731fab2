"""Outgoing HTTP: one thin layer over aiohttp that maps its errors once.

Every request the daemon makes (the HTTP providers of ``routes/``, Bitrix24's
REST and OAuth in ``bitrix24/rest/``) goes through ``post``. What matters to
every caller about a failed request is one question: could it have reached the
server? The answer decides whether a resend can cause a second SMS or burn a
rotated refresh token, and aiohttp's exception tree answers it in one place only:

* ``Unavailable``: no connection was made (refused, DNS, TLS handshake): the
  server never saw the request; sending it again is safe;
* ``Ambiguous``: the connection was made and then timed out or broke, or the
  answer was unreadable: the server may have acted on it.

What an HTTP status or a body means (SMS.ru's codes, Bitrix24's ``error``) is
each caller's protocol, read from ``Answer``; not this module's.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Mapping

import aiohttp

from . import json_fast


class Unavailable(Exception):
    """The request did not reach the server (or, where a caller says so, the server
    refused it before acting, e.g. HTTP 5xx from a provider): safe to send again.
    ``cause`` names what failed (the aiohttp exception's type, or the HTTP status)."""

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause or message


class Ambiguous(Exception):
    """The request may have reached the server; its answer did not reach us (or was unreadable)."""

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause or message


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server answered: its HTTP status and body, read in full."""

    status: int
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not.

        Read by orjson when it reads it as ``json`` would (``json_fast``); anything else
        (a number past 64 bits, NaN, bad UTF-8, not JSON at all) by ``json``, so a body
        gives the value or the error it always gave."""
        decoded = json_fast.loads(self.body)
        if decoded is not None:
            return decoded
        return json.loads(self.text())


async def post(http: aiohttp.ClientSession, url: str, data: Mapping[str, str] | str | bytes, *,
               timeout: float | aiohttp.ClientTimeout | None, headers: Mapping[str, str] | None = None) -> Answer:
    """POST ``data`` (a form: credentials in the body, never in the URL) and read the answer.

    ``timeout`` in seconds for the whole request, or None for the session's own.
    Raises ``Unavailable`` when no connection was made, ``Ambiguous`` when it broke or
    timed out after the request may have been sent. Any HTTP status is an ``Answer``.
    """
    if timeout is None:
        timeout = http.timeout
    elif not isinstance(timeout, aiohttp.ClientTimeout):
        timeout = aiohttp.ClientTimeout(total=timeout)
    body = dict(data) if isinstance(data, Mapping) else data
    try:
        async with http.post(url, data=body, headers=headers, timeout=timeout) as resp:
            return Answer(resp.status, await resp.read())
    except aiohttp.ClientConnectorError as e:
        raise Unavailable(f"cannot connect: {e.os_error}", cause=type(e).__name__) from e
    except (asyncio.TimeoutError, aiohttp.ClientError) as e:
        raise Ambiguous(type(e).__name__, cause=type(e).__name__) from e
