"""The shim with its spool: what is spooled, what is not, client disconnects, replays at the real daemon."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from aiohttp import web

from shim.app import HANDLER, _intake_json, make_app
from shim.spool import spooled_params
from shim.bitrix_form import decode_form, parse_handler_post
from shim.spool import Spool, encode_record
from smppd.cli.demo import start_rig, stop_rig
from smppd.rpc import RpcClient, RpcError

from tests.rigs.shim_rig import CODE, FORM_CT, KEY, URL, FakeDaemon, body, daemon, rpc, rpc_server, sock_path  # noqa: F401

pytestmark = pytest.mark.integration
MID = "72dd742c8270db0ddbbab92f98877537"  # as the daemon gets it (parse_handler_post lowercases it)


async def serve(rpc: RpcClient, spool_dir: str, *, spool_after: float = 0.3,
                max_bytes: int = 1 << 20) -> tuple[web.AppRunner, str, Spool]:
    """The shim app with a spool, as smppd-shim runs it, but with aiohttp's
    handler cancellation on: the worst case for a client that goes away."""
    spool = Spool(spool_dir, max_bytes=max_bytes)
    app = make_app(handler_key=KEY, codes={CODE}, rpc=rpc, spool=spool, spool_after=spool_after)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", spool


async def http_post(base: str, data: bytes) -> tuple[int, dict[str, Any]]:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(base + URL, data=data, headers=FORM_CT) as resp:
            return resp.status, await resp.json()


async def until(check, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("code", ["unavailable", "storage_full", "internal"])
async def test_a_daemon_that_cannot_keep_the_post_gets_it_again_from_the_spool(
        tmp_path, rpc_server, rpc, daemon: FakeDaemon, code: str):
    runner, base, spool = await serve(rpc, str(tmp_path / "spool"))
    try:
        daemon.error = RpcError(code, "disk full")
        status, reply = await http_post(base, body())
        assert status == 200 and reply["status"] == "spooled" and spool.records == 1
        daemon.error = None  # the daemon is well again: the replay brings the post
        await until(lambda: daemon.intakes and spool.bytes == 0)
        assert [p["b24_id"] for p in daemon.intakes] == [MID]
    finally:
        await runner.cleanup()


async def test_a_post_the_daemon_refuses_as_invalid_is_not_spooled(tmp_path, rpc_server, rpc, daemon: FakeDaemon):
    runner, base, spool = await serve(rpc, str(tmp_path / "spool"))
    try:
        daemon.error = RpcError("bad_request", "to: not a phone number", field="to")
        status, reply = await http_post(base, body())
        assert status == 400 and reply["field"] == "message_to"
        assert spool.records == 0 and spool.bytes == 0
    finally:
        await runner.cleanup()


async def test_a_slow_daemon_is_not_waited_for_and_the_late_commit_is_not_a_second_message(
        tmp_path, rpc_server, rpc, daemon: FakeDaemon):
    runner, base, spool = await serve(rpc, str(tmp_path / "spool"), spool_after=0.1)
    try:
        daemon.delay = 0.5
        status, reply = await http_post(base, body())
        assert status == 200 and reply["status"] == "spooled"
        daemon.delay = 0.0
        await until(lambda: len(daemon.intakes) == 2 and spool.bytes == 0)
        # the late commit and the replay: one message id, the second answered as a duplicate
        assert {p["b24_id"] for p in daemon.intakes} == {MID}
    finally:
        await runner.cleanup()


async def test_a_full_spool_answers_503_and_keeps_nothing_half_written(tmp_path, rpc):
    runner, base, spool = await serve(rpc, str(tmp_path / "spool"))  # no daemon at all
    try:
        status, _ = await http_post(base, body())
        assert status == 200 and spool.records == 1
        spool.max_bytes = spool.bytes + 10  # room for less than one more post
        size = spool.bytes
        status, reply = await http_post(base, body(message_id="0" * 31 + "2"))
        assert status == 503 and reply == {"error": "unavailable"}
        files = [f for f in os.listdir(tmp_path / "spool") if f.endswith(".spool")]
        assert spool.records == 1 and sum(os.path.getsize(tmp_path / "spool" / f) for f in files) == size
    finally:
        await runner.cleanup()


async def test_a_client_that_disconnects_after_the_body_does_not_cancel_the_post(
        tmp_path, rpc_server, rpc, daemon: FakeDaemon):
    runner, base, spool = await serve(rpc, str(tmp_path / "spool"), spool_after=5.0)
    try:
        daemon.delay = 0.5  # the daemon commits after the client is gone
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        data = body()
        writer.write(f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM_CT['Content-Type']}\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        writer.close()  # right after the body: no answer will be read
        await writer.wait_closed()
        await until(lambda: len(daemon.intakes) == 1)
        assert daemon.intakes[0]["b24_id"] == MID
        assert spool.records == 0
    finally:
        await runner.cleanup()


async def test_a_refusal_for_a_client_that_has_gone_is_dropped_quietly_and_the_post_is_forgotten(
        tmp_path, rpc_server, rpc, daemon: FakeDaemon):
    """The store task settles its handler's waiter (shim/app.py ``_settle``), not a shield: when
    the handler was cancelled (the client went away) the outcome has nobody to go to and must
    neither surface as an unretrieved task exception nor leave the task in the drain set."""
    import gc

    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    runner, base, spool = await serve(rpc, str(tmp_path / "spool"), spool_after=5.0)
    try:
        handler = runner.app[HANDLER]
        daemon.delay = 0.5
        daemon.error = RpcError("bad_request", "to: not a number")  # a refusal, after the client left
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        data = body()
        writer.write(f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM_CT['Content-Type']}\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        await until(lambda: len(handler._storing) == 1)
        writer.close()
        await writer.wait_closed()
        await until(lambda: not handler._storing)
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
        assert errors == [] and spool.records == 0
    finally:
        loop.set_exception_handler(None)
        await runner.cleanup()


async def test_a_store_task_cancelled_before_it_settles_cancels_its_handler_instead_of_hanging(
        tmp_path, rpc_server, rpc, daemon: FakeDaemon):
    runner, base, spool = await serve(rpc, str(tmp_path / "spool"), spool_after=5.0)
    try:
        handler = runner.app[HANDLER]
        daemon.delay = 5.0
        post = asyncio.create_task(http_post(base, body()))
        await until(lambda: len(handler._storing) == 1)
        (task, waiter), = handler._storing.items()
        task.cancel()  # as the loop's shutdown does to whatever is left
        await until(lambda: not handler._storing)
        assert waiter.cancelled()
        post.cancel()
        with pytest.raises((asyncio.CancelledError, Exception)):
            await post
    finally:
        await runner.cleanup()


async def test_drain_settles_a_store_task_cancelled_before_its_first_step(rpc) -> None:
    """A store task takes itself out of the drain set as it ends (shim/app.py ``_settle``); one
    cancelled before it ever ran does not, so ``drain`` must neither spin on it nor leave its
    handler's waiter hanging."""
    from shim.app import BitrixHandler
    from shim.auth import DoorConfig, Doors

    handler = BitrixHandler(doors=Doors(DoorConfig(handler_key=KEY)), codes={CODE}, rpc=rpc, max_body=1 << 20)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    task = loop.create_task(handler._settle(parse_handler_post(decode_form(body())), waiter))
    handler._storing[task] = waiter
    task.cancel()  # before its first step, as the loop's shutdown may
    await asyncio.wait_for(handler.drain(), 2)
    assert waiter.cancelled() and not handler._storing


async def test_a_client_that_disconnects_while_the_daemon_is_down_gets_its_post_spooled(tmp_path, rpc):
    runner, base, spool = await serve(rpc, str(tmp_path / "spool"), spool_after=0.3)
    try:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        data = body()
        writer.write(f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM_CT['Content-Type']}\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        writer.close()
        await until(lambda: spool.records == 1)
    finally:
        await runner.cleanup()


async def test_the_real_daemon_answers_a_replay_of_a_stored_post_as_success(tmp_path):
    """Intake is idempotent on (member_id, b24_id): a replay is stored once and answered ok."""
    rig = await start_rig(tmp_path, portal_rate=None)
    try:
        b24_id, form = rig.portal.create_message("by_life", "+375291234567", "hello")
        from smppd.sims.bitrix24 import encode_form

        params = _intake_json(parse_handler_post(decode_form(encode_form(form))))
        first = await rig.rpc.call("intake", params)
        handler = rig.shim_runner.app[HANDLER]
        assert await handler.replay([params, params]) == [True, True]
        again = await rig.rpc.call("intake", params)
        assert again["duplicate"] is True and again["id"] == first["id"]
        from tests.rigs.e2e_rig import db

        assert db(rig).execute("SELECT count(*) FROM message WHERE b24_id=?", (b24_id,)).fetchone()[0] == 1
    finally:
        await stop_rig(rig)


def _as_before_issue_15(params: bytes) -> bytes:
    """``intake`` params as the shim spooled them before issue 15.2: Bitrix24's id under the
    form's name ``message_id``, in the same place, encoded as the RPC client encodes."""
    return json.dumps({("message_id" if k == "b24_id" else k): v for k, v in json.loads(params).items()},
                      ensure_ascii=False, separators=(",", ":")).encode()


def test_a_spooled_line_of_the_previous_version_is_replayed_with_todays_names():
    """Only the id's name changes: every other parameter, its order and its bytes stay; a
    current line, or one that is not JSON, goes out untouched."""
    post = parse_handler_post(decode_form(body(message_body="Заказ \"готов\": \"message_id\":")))
    today = _intake_json(post)
    old = _as_before_issue_15(today)
    assert b'"message_id":' in old and b'"b24_id":' not in old
    assert spooled_params(old) == today
    assert spooled_params(today) is today
    assert spooled_params(b'{"message_id": x') == b'{"message_id": x'


async def test_a_spool_the_previous_version_wrote_still_reaches_the_real_daemon(tmp_path):
    """A shim upgraded with posts in its spool: the lines name Bitrix24's id ``message_id``,
    which today's daemon refuses as a bad request (and a refused replay is dropped). The
    replay renames it, so the post is stored, once, under its b24_id."""
    rig = await start_rig(tmp_path, portal_rate=None)
    try:
        from smppd.sims.bitrix24 import encode_form

        b24_id, form = rig.portal.create_message("by_life", "+375291234567", "hello from the old spool")
        old = _as_before_issue_15(_intake_json(parse_handler_post(decode_form(encode_form(form)))))
        with pytest.raises(RpcError) as refused:  # what the line alone gets from today's daemon
            await rig.rpc.call("intake", old)
        assert refused.value.code == "bad_request"
        spool_dir = tmp_path / "old-spool"
        spool_dir.mkdir()
        (spool_dir / f"{1:012d}.spool").write_bytes(encode_record(old, 1.0) + encode_record(old, 2.0))
        runner, _, spool = await serve(rig.rpc, str(spool_dir))
        try:
            await until(lambda: spool.bytes == 0)
        finally:
            await runner.cleanup()
        from tests.rigs.e2e_rig import db

        rows = db(rig).execute("SELECT b24_id, text FROM message WHERE b24_id=?", (b24_id,)).fetchall()
        assert [tuple(r) for r in rows] == [(b24_id, "hello from the old spool")]
    finally:
        await stop_rig(rig)
