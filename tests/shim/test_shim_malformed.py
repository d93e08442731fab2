"""Malformed requests at every door of the real shim in front of the real daemon: 400/413/415
with a JSON error naming the field, never a 500, never the bytes sent or an exception's text."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging

import pytest
from structlog.testing import capture_logs

from smppd.cli.demo import start_rig, stop_rig

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

SENTINEL = "Zq9SecretTextZq9"


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path, seed=4, portal_rate=None, http=True)
    yield r
    await stop_rig(r)


def doors(rig) -> list[str]:
    key = rig.config.shim.handler_key
    dlr_key = rig.config.routes["smsru"].callback_key  # the callback door opens with the route's own key
    return [f"/bitrix24/by_life?key={key}", f"/bitrix24-app?key={key}", f"/dlr/smsru?key={dlr_key}"]


async def raw(rig, request: bytes, *, close_early: bool = False) -> tuple[int, bytes]:
    """One request on its own connection, as bytes; the status and the body of the answer."""
    port = int(rig.shim_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if close_early:
            await asyncio.sleep(0.05)
            return 0, b""
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def post(path: str, body: bytes, *headers: str, length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             f"Content-Length: {len(body) if length is None else length}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def form(rig, text: str = SENTINEL) -> bytes:
    from urllib.parse import urlencode

    _, fields = rig.portal.create_message("by_life", "+375291234567", text)
    return urlencode(fields).encode()


def multipart_with_file(field: str) -> tuple[bytes, str]:
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"event\"\r\n\r\nONAPPINSTALL\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n{SENTINEL}\r\n--{boundary}--\r\n").encode()
    return body, f"Content-Type: multipart/form-data; boundary={boundary}"


def assert_clean_answer(status: int, body: bytes, expect: int, field: str) -> None:
    assert status == expect, body
    answer = json.loads(body)
    assert answer["field"] == field and answer["error"] in ("bad_request", "too_large", "unsupported_media_type")
    assert set(answer) <= {"error", "field", "message", "limit"}
    assert SENTINEL.encode() not in body and b"Error" not in body and b"codec" not in body


@pytest.mark.parametrize("door", [0, 1, 2])
async def test_every_door_refuses_malformed_bodies_with_the_field_named(rig, door):
    path = doors(rig)[door]
    data = form(rig)
    urlenc = "Content-Type: application/x-www-form-urlencoded"
    cases = [
        (post(path, data, "Content-Type: application/x-www-form-urlencoded; charset=bogus"), 415, "charset"),
        (post(path, b"\x1f\x8b" + SENTINEL.encode() * 3, urlenc, "Content-Encoding: gzip"), 400, "Content-Encoding"),
        (post(path, data, urlenc, "Content-Encoding: br, bogus"), 415, "Content-Encoding"),
        (post(path, data, "Content-Type: application/json"), 415, "Content-Type"),
        (post(path, b"a=" + b"x" * 600_000, urlenc), 413, "body"),
        (post(path, *multipart_with_file("auth[domain]")), 400, "auth[domain]"),
        (post(path, b"--zz\r\nnot a multipart\r\n", "Content-Type: multipart/form-data; boundary=b0undary"),
         400, "body"),
    ]
    for request, expect, field in cases:
        status, body = await raw(rig, request)
        assert_clean_answer(status, body, expect, field)


async def test_a_gzip_body_that_inflates_is_a_genuine_post(rig):
    status, body = await raw(rig, post(doors(rig)[0], gzip.compress(form(rig, "gzip ok")),
                                       "Content-Type: application/x-www-form-urlencoded", "Content-Encoding: gzip"))
    assert status == 200, body


async def test_a_client_hanging_up_mid_body_is_one_quiet_line_and_the_shim_serves_on(rig, caplog):
    caplog.set_level(logging.DEBUG)
    with capture_logs() as lines:
        for path in doors(rig):
            await raw(rig, post(path, form(rig)[:50], "Content-Type: application/x-www-form-urlencoded",
                                length=5000), close_early=True)
        await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    assert not [line for line in lines if line["log_level"] in ("error", "critical") or "exc_info" in line], lines
    status, body = await raw(rig, post(doors(rig)[0], form(rig, "after"),
                                       "Content-Type: application/x-www-form-urlencoded"))
    assert status == 200, body
