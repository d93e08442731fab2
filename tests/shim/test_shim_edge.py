"""Slow clients at the shim's socket (shim/edge.py, shim/body.py): a cap on connections, a
deadline for headers and one for the body, and genuine posts served all the while."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from shim import body as body_mod
from shim.app import make_app
from shim.dlr import dlr_keys
from shim.edge import Deadline, EdgeLimits, listen
from smppd.cli.demo import start_rig, stop_rig


def test_deadline_is_armed_by_a_first_byte_and_cleared_when_the_request_starts():
    d = Deadline(10.0)
    assert d.received(100.0) == 110.0
    assert d.received(105.0) is None  # already armed: a trickle does not push it back
    assert d.expired(110.0)
    d.request_started()
    assert d.received(111.0) is None and not d.expired(200.0)  # bytes while busy: nothing armed
    d.request_ended()
    assert d.received(300.0) == 310.0


@pytest.fixture
async def edge(tmp_path):
    rig = await start_rig(tmp_path, seed=6, portal_rate=None)
    app = make_app(handler_key=rig.config.shim.handler_key, codes=frozenset(rig.config.senders), rpc=rig.rpc,
                   dlr_keys=dlr_keys(rig.config))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = await listen(runner, EdgeLimits(max_connections=40, header_timeout=0.5), host="127.0.0.1", port=0)
    yield rig, listener
    await listener.close()
    await runner.cleanup()
    await stop_rig(rig)


@pytest.mark.integration
async def test_slow_clients_are_capped_and_timed_out_while_genuine_posts_are_served(edge):
    rig, listener = edge
    port = listener.port
    slow = []
    for _ in range(60):  # more than the cap: each new one takes the place of the oldest slow one
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /bitrix24/by_life?key=x HTTP/1.1\r\nHost: a\r\n")
        slow.append((reader, writer))
    await asyncio.sleep(0.05)
    assert listener.gate.live <= 40 and listener.gate.evicted >= 20 and listener.gate.refused == 0
    key = rig.config.shim.handler_key
    async with aiohttp.ClientSession() as http:  # the cap is full of slow clients: a genuine post still gets in
        _, fields = rig.portal.create_message("by_life", "+375291234569", "genuine at the cap")
        async with http.post(f"http://127.0.0.1:{port}/bitrix24/by_life?key={key}", data=fields) as resp:
            assert resp.status == 200

    # the slow ones are cut at their header deadline, freeing room for genuine posts
    started = time.monotonic()
    closed = await asyncio.gather(*(asyncio.wait_for(r.read(), 5) for r, _ in slow))
    assert all(data == b"" for data in closed) and time.monotonic() - started < 2.0
    assert listener.gate.expired >= 20
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            _, fields = rig.portal.create_message("by_life", f"+37529123456{i}", "genuine")
            t = time.monotonic()
            async with http.post(f"http://127.0.0.1:{port}/bitrix24/by_life?key={key}", data=fields) as resp:
                assert resp.status == 200
            assert time.monotonic() - t < 1.0
    for _, writer in slow:
        writer.close()


@pytest.mark.integration
async def test_a_keep_alive_connection_idle_between_requests_is_not_cut(edge):
    rig, listener = edge
    key = rig.config.shim.handler_key
    async with aiohttp.ClientSession() as http:  # one pooled connection, reused after a pause
        for i in range(2):
            _, fields = rig.portal.create_message("by_mts", f"+37529765432{i}", "kept alive")
            async with http.post(f"http://127.0.0.1:{listener.port}/bitrix24/by_mts?key={key}", data=fields) as r:
                assert r.status == 200
            await asyncio.sleep(0.8)  # longer than the header deadline, idle: aiohttp's keep-alive decides
    assert listener.gate.expired == 0


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """One request on a kept-alive connection; the answer's status line and headers."""
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    await reader.readexactly(length)
    return head


@pytest.mark.integration
async def test_a_404_and_a_405_end_their_request_so_the_kept_alive_connection_lives_on(edge):
    """No route takes these, so only the guard's own 404/405 routes (shim/body.py ``add_routes``)
    tell the edge the request started and ended; without that, the deadline armed by the 404's
    first byte would cut the connection while it is idle, or while its next post is served."""
    rig, listener = edge
    key = rig.config.shim.handler_key
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    assert (await _exchange(reader, writer, b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")).startswith(
        b"HTTP/1.1 404")
    assert (await _exchange(reader, writer, b"GET /bitrix24/by_life HTTP/1.1\r\nHost: a\r\n\r\n")).startswith(
        b"HTTP/1.1 405")
    await asyncio.sleep(0.8)  # idle past the header deadline: not owed, not cut
    _, fields = rig.portal.create_message("by_life", "+375291234562", "after a 404")
    data = urlencode(fields).encode()
    head = await _exchange(reader, writer, f"POST /bitrix24/by_life?key={key} HTTP/1.1\r\nHost: a\r\n"
                                           f"Content-Type: application/x-www-form-urlencoded\r\n"
                                           f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    assert head.startswith(b"HTTP/1.1 200") and listener.gate.expired == 0 and not listener.gate.pending
    writer.close()


@pytest.mark.integration
async def test_a_later_request_trickling_on_a_kept_alive_connection_is_cut_at_its_own_deadline(edge):
    """The connection's one timer is re-armed lazily (shim/edge.py ``_check``): after a request
    served in time, a next request that never finishes its headers must still be cut, not
    left open because the timer from the first request found nothing due."""
    rig, listener = edge
    key = rig.config.shim.handler_key
    _, fields = rig.portal.create_message("by_life", "+375291234561", "first, in time")
    data = urlencode(fields).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(f"POST /bitrix24/by_life?key={key} HTTP/1.1\r\nHost: a\r\n"
                 f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(data)}\r\n"
                 f"\r\n".encode() + data)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    await reader.readexactly(length)
    await asyncio.sleep(0.3)  # within the first request's deadline window: its timer is still set
    writer.write(b"POST /bitrix24/by_life?key=x HTTP/1.1\r\nHost: a\r\n")  # and never the rest
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.4 <= time.monotonic() - started < 2.0  # its own 0.5 s, not the first request's
    assert listener.gate.expired == 1
    writer.close()


@pytest.mark.integration
async def test_a_body_sent_too_slowly_is_408_naming_the_body(edge, monkeypatch):
    rig, listener = edge
    monkeypatch.setattr(body_mod, "BODY_TIMEOUT", 0.3)
    _, fields = rig.portal.create_message("by_life", "+375291234560", "slow body")
    data = urlencode(fields).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(f"POST /bitrix24/by_life?key={rig.config.shim.handler_key} HTTP/1.1\r\nHost: a\r\n"
                 f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(data)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + data[:10])
    answer = b""
    while b'"field"' not in answer:  # the answer comes at once; aiohttp then lingers for the rest of the body
        chunk = await asyncio.wait_for(reader.read(1000), 5)
        assert chunk, answer
        answer += chunk
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408") and b'"field": "body"' in answer
