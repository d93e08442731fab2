"""smppd.http_client and routes.provider_client against real loopback servers.

The one question every caller of outgoing HTTP asks about a failure, "could it have
reached the server?", is answered here once: a resend after ``Unavailable`` is safe,
after ``Ambiguous`` it may be a second SMS. Each case below is a server that fails one
way, and the exception (or answer) the layer must give for it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from smppd import http_client
from smppd.config import SmsRuRouteConfig
from smppd.http_client import Ambiguous, Answer, Unavailable
from smppd.routes.provider_client import ProviderClient

pytestmark = pytest.mark.integration  # opens loopback sockets


def closed_port() -> int:
    """A port nothing listens on: bound, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def raw_server(handler) -> tuple[asyncio.base_events.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/"


@pytest.fixture
async def web_server() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        form = await request.post()
        if request.path == "/json":
            return web.json_response({"got": dict(form)})
        if request.path == "/busy":
            return web.Response(status=503, text="busy")
        return web.Response(text="not json")

    app = web.Application()
    app.router.add_post("/{what}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def test_no_connection_is_unavailable_never_reached():
    async with aiohttp.ClientSession() as http:
        with pytest.raises(Unavailable) as info:
            await http_client.post(http, f"http://127.0.0.1:{closed_port()}/x", {"a": "1"}, timeout=2.0)
    assert info.value.cause == "ClientConnectorError" and "cannot connect" in str(info.value)


async def test_a_server_that_takes_the_request_and_never_answers_is_ambiguous():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        await asyncio.sleep(5)
        writer.close()

    server, url = await raw_server(silent)
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(Ambiguous) as info:
                await http_client.post(http, url, {"a": "1"}, timeout=0.3)
    finally:
        server.close()
    assert info.value.cause in ("TimeoutError", "ServerTimeoutError")


async def test_a_connection_cut_after_the_request_is_ambiguous():
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)  # the request arrived: the server may act on it
        writer.close()

    server, url = await raw_server(cut)
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(Ambiguous) as info:
                await http_client.post(http, url, "a=1", timeout=2.0)
    finally:
        server.close()
    assert info.value.cause == "ServerDisconnectedError"


async def test_any_http_status_is_an_answer_whose_meaning_is_the_callers(web_server):
    async with aiohttp.ClientSession() as http:
        busy = await http_client.post(http, web_server + "busy", {"a": "1"}, timeout=2.0)
        ok = await http_client.post(http, web_server + "json", {"a": "1"}, timeout=None)
        text = await http_client.post(http, web_server + "text", b"a=1", timeout=2.0,
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert busy == Answer(503, b"busy")
    assert ok.status == 200 and ok.json() == {"got": {"a": "1"}}
    with pytest.raises(ValueError):
        text.json()


async def test_provider_client_reads_5xx_as_not_taken_and_a_non_json_200_as_ambiguous(web_server):
    client = ProviderClient(SmsRuRouteConfig(name="smsru", api_id="k", base_url=web_server, timeout=2.0))
    try:
        assert await client.post(client.url("json"), {"api_id": "k"}) == {"got": {"api_id": "k"}}
        with pytest.raises(Unavailable, match="HTTP 503"):
            await client.post(client.url("busy"), {})
        with pytest.raises(Ambiguous, match="not JSON"):
            await client.post(client.url("text"), {})
        with pytest.raises(Unavailable):
            await client.post(f"http://127.0.0.1:{closed_port()}/", {})
    finally:
        await client.close()  # the session it opened itself


async def test_provider_client_leaves_a_shared_session_to_its_owner(web_server):
    cfg = SmsRuRouteConfig(name="smsru", api_id="k", base_url=web_server, timeout=2.0)
    async with aiohttp.ClientSession() as shared:
        client = ProviderClient(cfg, shared)
        assert await client.post(client.url("json"), {}) == {"got": {}}
        await client.close()
        assert not shared.closed, "the daemon's one session serves every route"
        assert await ProviderClient(cfg, shared).post(client.url("json"), {"b": "2"}) == {"got": {"b": "2"}}
