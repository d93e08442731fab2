"""How the simulated portal's REST speaks: PHP-shaped JSON, the core's error bodies, forms.

Kept apart from the methods because every method module raises these errors and
answers through these encoders, and because the PHP quirks (``json_encode`` of
arrays, ``parse_str`` of bracket keys) are the part a client most often gets wrong.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable
from urllib.parse import urlencode

from aiohttp import web

BATCH_MAX_LENGTH = 50

# Exact cloud bodies (bitrix24.md §8, §10).
_QUERY_LIMIT_BODY = {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
_OVERLOAD_BODY = {"error": "OVERLOAD_LIMIT", "error_description": "REST API is blocked due to overload."}
_EXPIRED_BODY = {"error": "expired_token", "error_description": "The access token provided has expired."}
_NO_AUTH_BODY = {"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"}


class _ApiError(Exception):
    """A REST error as the core raises it: code, description, HTTP status (400 default)."""

    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


def _access_denied() -> _ApiError:
    return _ApiError("ACCESS_DENIED", "Access denied!", 403)



def _require_admin(token: _Token) -> None:
    if not token.is_admin:
        raise _access_denied()


@dataclass
class _Token:
    user_id: int
    expires_at: float  # wall clock
    is_admin: bool



@dataclass
class _Paged:
    """A list method's page: ``result`` plus ``total`` and ``next`` beside it in the answer."""

    rows: list[dict[str, Any]]
    total: int
    next: int | None



def _upper(params: dict[str, Any]) -> dict[str, Any]:
    """``array_change_key_case(..., CASE_UPPER)``: top-level keys only."""
    return {str(k).upper(): v for k, v in params.items()}


def _php_bool(value: Any) -> bool:
    """PHP ``(bool)``: "" and "0" are false, any other string is true."""
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def _php_parse(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``parse_str`` for bracket keys: ``a[b][]=1`` -> ``{"a": {"b": {"0": "1"}}}``."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        base, bracket, rest = key.partition("[")
        segments = re.findall(r"\[([^\]]*)\]", bracket + rest) if bracket else []
        if not segments:
            root[key] = value
            continue
        node = root
        path = [base, *segments]
        for depth, segment in enumerate(path):
            if segment == "":
                segment = str(sum(1 for k in node if k.isdigit()))
            if depth == len(path) - 1:
                node[segment] = value
            else:
                child = node.get(segment)
                if not isinstance(child, dict):
                    child = node[segment] = {}
                node = child
    return root


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string merged with the body (form or JSON), like PHP's ``$_REQUEST`` + JSON input."""
    params = _php_parse(request.query.items())
    if request.method != "POST" or not request.can_read_body:
        return params
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if isinstance(body, dict):
            params.update(body)
        return params
    form = await request.post()
    params.update(_php_parse((k, v) for k, v in form.items() if isinstance(v, str)))
    return params


def _phpify(value: Any) -> Any:
    """Encode maps as PHP's ``json_encode`` would: empty -> ``[]``, keys 0..n-1 -> list.

    Only containers are visited: a batch answer holds ~20 scalars per command, and a
    call per scalar made this the simulated portal's largest cost under a bench (the
    portal shares the cores with the gateway it measures).
    """
    if isinstance(value, dict):
        if not value:
            return []
        if next(iter(value)) == "0" and all(k == str(i) for i, k in enumerate(value)):
            return [_phpify(v) if isinstance(v, (dict, list)) else v for v in value.values()]
        return {k: _phpify(v) if isinstance(v, (dict, list)) else v for k, v in value.items()}
    if isinstance(value, list):
        return [_phpify(v) if isinstance(v, (dict, list)) else v for v in value]
    return value


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    text = json.dumps(_phpify(body), separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json")


def encode_form(form: list[tuple[str, str]]) -> bytes:
    """A HANDLER form as the queue server puts it on the wire (application/x-www-form-urlencoded)."""
    return urlencode(form).encode()


def _iso(ts: float) -> str:
    return _iso_second(int(ts))


@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str:
    """Two per command in every answer's ``time`` block: a bench's portal formatted the same
    second thousands of times (astimezone() looks the zone up on each call)."""
    return datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")
