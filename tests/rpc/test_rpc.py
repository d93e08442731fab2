"""smppd.rpc: the wire protocol, pipelining, errors, reconnects, peer checks."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from smppd.rpc import peercred, wire
from smppd.rpc import MAX_LINE, RpcClient, RpcError, RpcServer, RpcUnavailable

from tests.rigs.rpc_rig import RawConnection, gated_server


@pytest.fixture
def sock_path() -> Iterator[str]:
    # tmp_path can exceed the ~107-byte AF_UNIX limit; use a short dir.
    directory = tempfile.mkdtemp(prefix="rpc", dir="/tmp")
    yield os.path.join(directory, "run", "smppd.sock")
    shutil.rmtree(directory, ignore_errors=True)


async def echo(params: dict[str, Any]) -> Any:
    return params


async def delayed(params: dict[str, Any]) -> Any:
    await asyncio.sleep(params["delay"])
    return params["n"]


async def refuse(params: dict[str, Any]) -> Any:
    raise RpcError("unknown_code", "no such provider code", field="code")


async def crash(params: dict[str, Any]) -> Any:
    raise RuntimeError("secret detail")


HANDLERS = {"echo": echo, "delayed": delayed, "refuse": refuse, "crash": crash}


@pytest.fixture
async def server(sock_path: str) -> AsyncIterator[RpcServer]:
    srv = RpcServer(sock_path, HANDLERS)
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
async def client(server: RpcServer) -> AsyncIterator[RpcClient]:
    cli = RpcClient(server.path, timeout=5)
    yield cli
    await cli.close()


@pytest.mark.integration
async def test_round_trip(client: RpcClient) -> None:
    params = {"text": "Ваш заказ готов", "n": 1, "nested": {"a": [1, None]}}
    assert await client.call("echo", params) == params
    assert await client.call("echo") == {}


@pytest.mark.integration
async def test_pipelined_calls_share_one_connection_and_complete_out_of_order(
    server: RpcServer,
) -> None:
    raw = await RawConnection.open(server.path)
    count = 20
    # Later requests sleep less, so they finish first.
    raw.send(
        b"".join(
            json.dumps(
                {"id": n, "method": "delayed", "params": {"n": n, "delay": (count - n) * 0.01}}
            ).encode()
            + b"\n"
            for n in range(count)
        )
    )
    replies = [await raw.reply() for _ in range(count)]
    await raw.close()
    assert sorted(r["id"] for r in replies) == list(range(count))
    assert all(r["result"] == r["id"] for r in replies)
    assert [r["id"] for r in replies] != list(range(count)), "replies came back in order"
    assert replies[0]["id"] == count - 1


@pytest.mark.integration
async def test_client_multiplexes_concurrent_calls(client: RpcClient) -> None:
    count = 200
    results = await asyncio.gather(
        *(client.call("delayed", {"n": n, "delay": (count - n) * 0.0005}) for n in range(count))
    )
    assert results == list(range(count))
    conn = client._conn
    assert conn is not None and not conn.closed and not conn.pending


@pytest.mark.integration
async def test_client_uses_one_connection(server: RpcServer, client: RpcClient) -> None:
    await asyncio.gather(*(client.call("echo", {"n": n}) for n in range(10)))
    assert len(server._connections) == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("line", "expected_id"),
    [
        (b"garbage\n", None),
        (b"\xff\xfe\n", None),
        (b"[1, 2, 3]\n", None),
        (b'{"method": "echo"}\n', None),
        (b'{"id": null, "method": "echo"}\n', None),
        (b'{"id": true, "method": "echo"}\n', None),
        (b'{"id": 1.5, "method": "echo"}\n', None),
        (b'{"id": 7}\n', 7),
        (b'{"id": "x", "method": 3}\n', "x"),
        (b'{"id": 8, "method": "echo", "params": [1]}\n', 8),
    ],
)
async def test_malformed_line_gets_bad_request_and_connection_survives(
    server: RpcServer, line: bytes, expected_id: Any
) -> None:
    raw = await RawConnection.open(server.path)
    raw.send(line)
    reply = await raw.reply()
    assert reply["id"] == expected_id
    assert reply["error"]["code"] == "bad_request"
    raw.send(b'\n{"id": 2, "method": "echo", "params": {"ok": true}}\n')
    assert await raw.reply() == {"id": 2, "result": {"ok": True}}
    await raw.close()


@pytest.mark.integration
async def test_unknown_method(client: RpcClient) -> None:
    with pytest.raises(RpcError) as info:
        await client.call("nope")
    assert info.value.code == "unknown_method"


@pytest.mark.integration
async def test_handler_rpc_error_reaches_client_with_field(client: RpcClient) -> None:
    with pytest.raises(RpcError) as info:
        await client.call("refuse", {})
    assert (info.value.code, info.value.message, info.value.field) == (
        "unknown_code",
        "no such provider code",
        "code",
    )


@pytest.mark.integration
async def test_handler_crash_is_internal_and_generic(client: RpcClient) -> None:
    with pytest.raises(RpcError) as info:
        await client.call("crash")
    assert info.value.code == "internal"
    assert "secret" not in info.value.message
    assert await client.call("echo", {"still": "up"}) == {"still": "up"}


@pytest.mark.integration
async def test_unserializable_result_is_internal(sock_path: str) -> None:
    async def weird(params: dict[str, Any]) -> Any:
        return object()

    srv = RpcServer(sock_path, {"weird": weird})
    await srv.start()
    cli = RpcClient(sock_path)
    try:
        with pytest.raises(RpcError) as info:
            await cli.call("weird")
        assert info.value.code == "internal"
    finally:
        await cli.close()
        await srv.close()


@pytest.mark.integration
async def test_over_long_line_is_refused_and_connection_closed(server: RpcServer) -> None:
    raw = await RawConnection.open(server.path)
    raw.send(b'{"id": 1, "method": "echo", "params": {"x": "' + b"a" * MAX_LINE + b'"}}\n')
    reply = await raw.reply()
    assert reply["id"] is None and reply["error"]["code"] == "line_too_long"
    assert await asyncio.wait_for(raw.reader.read(), 5) == b""
    await raw.close()


@pytest.mark.integration
async def test_line_of_exactly_max_line_is_accepted(server: RpcServer) -> None:
    raw = await RawConnection.open(server.path)
    head, tail = b'{"id":1,"method":"echo","params":{"x":"', b'"}}'
    raw.send(head + b"a" * (MAX_LINE - len(head) - len(tail)) + tail + b"\n")
    line = await asyncio.wait_for(raw.reader.readline(), 5)
    assert len(json.loads(line)["result"]["x"]) == MAX_LINE - len(head) - len(tail)
    await raw.close()


@pytest.mark.integration
async def test_unavailable_when_no_server(sock_path: str) -> None:
    cli = RpcClient(sock_path, timeout=1)
    with pytest.raises(RpcUnavailable):
        await cli.call("echo")
    await cli.close()


@pytest.mark.integration
async def test_timeout_is_unavailable_and_connection_kept(client: RpcClient) -> None:
    with pytest.raises(RpcUnavailable):
        await client.call("delayed", {"n": 1, "delay": 1}, timeout=0.05)
    assert await client.call("echo", {"a": 1}) == {"a": 1}


@pytest.mark.integration
async def test_timeout_on_a_live_connection_fails_the_call_and_ignores_the_late_reply(
    client: RpcClient,
) -> None:
    assert await client.call("echo", {"a": 0}) == {"a": 0}  # connected: the next call is the fast path
    conn = client._conn
    assert conn is not None and conn.out.idle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RpcUnavailable, match="no reply to 'delayed' in time"):
        await client.call("delayed", {"n": 1, "delay": 0.2}, timeout=0.05)
    assert 0.04 < loop.time() - started < 0.19 and not conn.pending
    await asyncio.sleep(0.25)  # the late reply arrives and finds no caller
    assert client._conn is conn and not conn.closed
    assert await client.call("echo", {"a": 1}) == {"a": 1}


@pytest.mark.integration
async def test_calls_sharing_a_timeout_share_one_timer_and_each_fails_on_time(server: RpcServer) -> None:
    """Calls of one timeout wait in the connection's deadline queue under one
    timer; each still fails at its own deadline, never later, and a call
    with a shorter timeout issued after them is not held up behind them."""
    client = RpcClient(server.path, timeout=0.15)
    try:
        assert await client.call("echo", {"a": 0}) == {"a": 0}
        conn = client._conn
        assert conn is not None
        loop = asyncio.get_running_loop()

        async def timed(n: int, timeout: float | None) -> tuple[float, float, Any]:
            started = loop.time()
            limit = client._timeout if timeout is None else timeout
            try:
                outcome: Any = await client.call("delayed", {"n": n, "delay": 0.4}, timeout=timeout)
            except RpcUnavailable as exc:
                outcome = str(exc)
            return limit, loop.time() - started, outcome

        calls = [asyncio.create_task(timed(n, None)) for n in range(3)]
        await asyncio.sleep(0.05)
        calls.append(asyncio.create_task(timed(9, 0.03)))  # due before the three queued ones
        await asyncio.sleep(0)
        # the three wait in the queue under one timer, the fourth has its own
        assert len(conn._deadlines) == 3 and conn._expiry is not None
        for limit, waited, outcome in await asyncio.gather(*calls):
            assert outcome == "no reply to 'delayed' in time"
            assert limit - 0.005 < waited < limit + 0.12
        assert not conn.pending and not conn._deadlines and conn._expiry is None
    finally:
        await client.close()


@pytest.mark.integration
async def test_the_deadline_queue_forgets_answered_calls(client: RpcClient) -> None:
    assert await client.call("echo", {"a": 0}) == {"a": 0}
    conn = client._conn
    assert conn is not None
    for n in range(50):
        assert await client.call("echo", {"n": n}) == {"n": n}
    assert len(conn._deadlines) == 1 and not conn.pending  # only the last call's entry is left
    await client.close()
    assert conn._expiry is None and not conn._deadlines


@pytest.mark.integration
async def test_cancelled_call_leaves_nothing_pending(client: RpcClient) -> None:
    await client.call("echo")
    call = asyncio.create_task(client.call("delayed", {"n": 1, "delay": 0.2}))
    await asyncio.sleep(0.02)
    conn = client._conn
    assert conn is not None and len(conn.pending) == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not conn.pending
    assert await client.call("delayed", {"n": 2, "delay": 0}) == 2


@pytest.mark.integration
async def test_connect_and_backpressure_take_the_waiting_path(
    client: RpcClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    waited: list[str] = []
    ready = RpcClient._ready_connection

    async def spy(self: RpcClient, method: str, limit: float) -> Any:
        waited.append(method)
        return await ready(self, method, limit)

    monkeypatch.setattr(RpcClient, "_ready_connection", spy)
    assert await client.call("echo", {"n": 1}) == {"n": 1}  # no connection yet
    assert await client.call("echo", {"n": 2}) == {"n": 2}  # idle connection: straight on
    conn = client._conn
    assert conn is not None
    monkeypatch.setattr(conn.out, "idle", lambda: False)  # as if the buffer were above its mark
    assert await client.call("echo", {"n": 3}) == {"n": 3}
    assert waited == ["echo", "echo"]


def test_encoded_lines_are_what_json_dumps_wrote() -> None:
    for obj in [
        {"id": 1, "method": "intake", "params": {"text": "Ваш заказ готов \u2028 \"q\"\n", "to": "+375291234567"}},
        {"id": "x", "result": {"n": 1.5, "big": 10**20, "none": None, "ok": True, "list": [1, [2, {}]]}},
        {"id": None, "error": {"code": "bad_request", "message": "😀 emoji"}},
    ]:
        assert wire.encode_line(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


@pytest.mark.integration
async def test_reconnect_after_server_restart(sock_path: str) -> None:
    srv = RpcServer(sock_path, HANDLERS)
    await srv.start()
    cli = RpcClient(sock_path, timeout=2)
    try:
        assert await cli.call("echo", {"n": 1}) == {"n": 1}
        await srv.close()
        with pytest.raises(RpcUnavailable):
            await cli.call("echo", {"n": 2})
        srv = RpcServer(sock_path, HANDLERS)
        await srv.start()
        assert await cli.call("echo", {"n": 3}) == {"n": 3}
    finally:
        await cli.close()
        await srv.close()


@pytest.mark.integration
async def test_connection_loss_fails_pending_calls(sock_path: str) -> None:
    started = asyncio.Event()

    async def hang(params: dict[str, Any]) -> Any:
        started.set()
        await asyncio.sleep(30)

    srv = RpcServer(sock_path, {"hang": hang})
    await srv.start()
    cli = RpcClient(sock_path, timeout=10)
    try:
        calls = [asyncio.create_task(cli.call("hang")) for _ in range(3)]
        await started.wait()
        await srv.close(grace=0)
        for call in calls:
            with pytest.raises(RpcUnavailable):
                await call
    finally:
        await cli.close()
        await srv.close()


@pytest.mark.integration
async def test_close_lets_running_requests_answer(sock_path: str) -> None:
    srv = RpcServer(sock_path, HANDLERS)
    await srv.start()
    cli = RpcClient(sock_path)
    try:
        call = asyncio.create_task(cli.call("delayed", {"n": 5, "delay": 0.1}))
        await asyncio.sleep(0.02)
        await srv.close(grace=2)
        assert await call == 5
    finally:
        await cli.close()


@pytest.mark.integration
async def test_socket_file_mode_and_stale_socket(sock_path: str) -> None:
    # A stale socket from a crashed daemon: bound, never listening.
    os.makedirs(os.path.dirname(sock_path))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()
    srv = RpcServer(sock_path, HANDLERS)
    await srv.start()
    try:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
    finally:
        await srv.close()
    assert not os.path.exists(sock_path)


@pytest.mark.integration
async def test_live_socket_and_regular_file_are_not_replaced(
    server: RpcServer, sock_path: str
) -> None:
    with pytest.raises(OSError):
        await RpcServer(sock_path, HANDLERS).start()
    assert await RpcClient(sock_path).call("echo", {"a": 1}) == {"a": 1}

    other = os.path.join(os.path.dirname(sock_path), "not-a-socket")
    with open(other, "w") as f:
        f.write("keep me")
    with pytest.raises(FileExistsError):
        await RpcServer(other, HANDLERS).start()
    with open(other) as f:
        assert f.read() == "keep me"


@pytest.mark.integration
async def test_group_option(sock_path: str) -> None:
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    srv = RpcServer(sock_path, HANDLERS, group=group)
    await srv.start()
    try:
        assert os.stat(sock_path).st_gid == os.getgid()
    finally:
        await srv.close()
    with pytest.raises(ValueError):
        await RpcServer(sock_path, HANDLERS, group="no-such-group-smppd").start()


def test_peer_allowed_on_a_real_connection() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        # Our own uid is always allowed, whatever the socket's group.
        assert peercred.peer_allowed(a, socket_gid=987654)


def test_peer_allowed_fails_closed_without_credentials() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        assert not peercred.peer_allowed(s, socket_gid=0)


@pytest.mark.parametrize(
    ("uid", "gid", "groups", "allowed"),
    [
        (0, 5000, (), True),  # root
        (1000, 1000, (), True),  # the daemon's own user
        (2000, 3000, (), True),  # primary group owns the socket
        (2000, 2000, (4000, 3000), True),  # supplementary group
        (2000, 2000, (4000,), False),  # stranger
        (2000, 2000, (), False),
    ],
)
def test_is_allowed(uid: int, gid: int, groups: tuple[int, ...], allowed: bool) -> None:
    assert peercred.is_allowed(uid, gid, 3000, own_uid=1000, groups=groups) is allowed


def test_peer_allowed_refuses_foreign_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peercred, "_peer_credentials", lambda sock: (4242, 2000, 2000))
    monkeypatch.setattr(peercred, "_supplementary_groups", lambda pid: frozenset({4000}))
    monkeypatch.setattr(peercred.os, "getuid", lambda: 1000)
    assert not peercred.peer_allowed(None, socket_gid=3000)  # type: ignore[arg-type]
    monkeypatch.setattr(peercred, "_supplementary_groups", lambda pid: frozenset({3000}))
    assert peercred.peer_allowed(None, socket_gid=3000)  # type: ignore[arg-type]


def test_supplementary_groups_reads_proc() -> None:
    assert peercred._supplementary_groups(os.getpid()) == frozenset(os.getgroups())
    assert peercred._supplementary_groups(2**22 + 12345) == frozenset()


@pytest.mark.integration
async def test_refused_peer_gets_forbidden_and_is_closed(
    server: RpcServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peercred, "peer_allowed", lambda sock, gid: False)
    raw = await RawConnection.open(server.path)
    reply = await raw.reply()
    assert reply == {"id": None, "error": {"code": "forbidden", "message": "peer not allowed"}}
    assert await asyncio.wait_for(raw.reader.read(), 5) == b""
    await raw.close()

    cli = RpcClient(server.path, timeout=2)
    with pytest.raises(RpcUnavailable, match="forbidden"):
        await cli.call("echo")
    await cli.close()


@pytest.mark.integration
async def test_inflight_limit_stops_reading(
    sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_INFLIGHT", 2)
    async with gated_server(sock_path) as (gate, raw):
        raw.send(
            b"".join(
                json.dumps({"id": n, "method": "gate", "params": {"n": n}}).encode() + b"\n"
                for n in range(5)
            )
        )
        await asyncio.sleep(0.05)
        assert gate.started == [0, 1]
        gate.release.set()
        replies = [await raw.reply() for _ in range(5)]
        assert sorted(r["result"] for r in replies) == list(range(5))


async def test_replies_ready_together_are_written_together() -> None:
    class FakeWriter:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def is_closing(self) -> bool:
            return False

        def write(self, data: bytes) -> None:
            self.writes.append(data)

    writer = FakeWriter()
    out = wire.LineWriter(writer)  # type: ignore[arg-type]
    for n in range(3):
        out.send(b"%d\n" % n)
    await asyncio.sleep(0)
    out.send(b"3\n")
    await asyncio.sleep(0)
    assert writer.writes == [b"0\n1\n2\n", b"3\n"]
