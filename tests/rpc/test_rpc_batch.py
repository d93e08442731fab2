"""smppd.rpc batches: calls of one method issued together travel as one line,
and each caller still gets its own result, error and timeout."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from smppd.rpc import wire
from smppd.rpc import MAX_LINE, RpcClient, RpcError, RpcServer, RpcUnavailable

from tests.rigs.rpc_rig import RawConnection, gated_server


@pytest.fixture
def sock_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="rpcb", dir="/tmp")
    yield os.path.join(directory, "smppd.sock")
    shutil.rmtree(directory, ignore_errors=True)


class Recorder:
    """A method with a batch handler that records each batch it runs."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.singles: list[dict[str, Any]] = []
        self.delay = 0.0

    @staticmethod
    def outcome(params: dict[str, Any]) -> Any:
        if params.get("refuse"):
            return RpcError("unknown_code", f"no sender {params['n']}", field="code")
        if params.get("crash"):
            return RuntimeError("secret detail")
        return {"n": params["n"]}

    async def single(self, params: dict[str, Any]) -> Any:
        self.singles.append(params)
        outcome = self.outcome(params)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def many(self, batch: list[dict[str, Any]]) -> list[Any]:
        self.batches.append(batch)
        await asyncio.sleep(self.delay)
        return [self.outcome(p) for p in batch]


async def ping(params: dict[str, Any]) -> Any:
    return None


@pytest.fixture
async def recorder(sock_path: str) -> AsyncIterator[Recorder]:
    rec = Recorder()
    srv = RpcServer(sock_path, {"work": rec.single, "plain": rec.single, "ping": ping},
                    batch_handlers={"work": rec.many})
    await srv.start()
    yield rec
    await srv.close()


@pytest.fixture
async def client(recorder: Recorder, sock_path: str) -> AsyncIterator[RpcClient]:
    cli = RpcClient(sock_path, timeout=5, batched={"work", "plain", "nope"})
    await cli.call("ping")  # connected: calls issued together now queue together
    yield cli
    await cli.close()


async def _outcomes(calls: list[Any]) -> list[Any]:
    return await asyncio.gather(*calls, return_exceptions=True)


def _check_mixed(outcomes: list[Any]) -> None:
    assert outcomes[0] == {"n": 0}
    assert isinstance(outcomes[1], RpcError)
    assert (outcomes[1].code, outcomes[1].message, outcomes[1].field) == ("unknown_code", "no sender 1", "code")
    assert isinstance(outcomes[2], RpcError)
    assert (outcomes[2].code, outcomes[2].message) == ("internal", "internal error")
    assert outcomes[3] == {"n": 3}


MIXED = [{"n": 0}, {"n": 1, "refuse": True}, {"n": 2, "crash": True}, {"n": 3}]


@pytest.mark.integration
async def test_calls_issued_together_go_as_one_batch_each_with_its_own_outcome(
    client: RpcClient, recorder: Recorder
) -> None:
    _check_mixed(await _outcomes([client.call("work", p) for p in MIXED]))
    assert recorder.batches == [MIXED] and recorder.singles == []
    conn = client._conn
    assert conn is not None and not conn.pending and not conn._batches


@pytest.mark.integration
async def test_a_lone_call_goes_as_a_plain_request(client: RpcClient, recorder: Recorder) -> None:
    assert await client.call("work", {"n": 7}) == {"n": 7}
    assert recorder.batches == [] and recorder.singles == [{"n": 7}]


@pytest.mark.integration
async def test_a_method_without_batch_handler_runs_its_items_one_by_one(
    client: RpcClient, recorder: Recorder
) -> None:
    _check_mixed(await _outcomes([client.call("plain", p) for p in MIXED]))
    assert recorder.batches == [] and sorted(p["n"] for p in recorder.singles) == [0, 1, 2, 3]


@pytest.mark.integration
async def test_batches_are_split_to_fit_the_line_limit(
    sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_LINE", 4096)
    rec = Recorder()
    srv = RpcServer(sock_path, {"work": rec.single, "ping": ping}, batch_handlers={"work": rec.many})
    await srv.start()
    cli = RpcClient(sock_path, timeout=5, batched={"work"})
    try:
        await cli.call("ping")
        calls = [cli.call("work", {"n": n, "pad": "я" * 400}) for n in range(20)]
        results = await asyncio.gather(*calls)
        assert [r["n"] for r in results] == list(range(20))
        sizes = [len(b) for b in rec.batches]
        assert len(sizes) > 1 and sum(sizes) + len(rec.singles) == 20
        # A request too long for any line goes alone and is refused as today.
        with pytest.raises(RpcUnavailable, match="line_too_long"):
            await cli.call("work", {"n": 99, "pad": "x" * 5000})
    finally:
        await cli.close()
        await srv.close()


def test_request_lines_fit_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_LINE", 1000)
    monkeypatch.setattr(wire, "MAX_BATCH", 4)
    items = [(n, json.dumps({"n": n, "pad": "x" * (n * 37 % 300)}).encode()) for n in range(1, 40)]
    items.append((10**19, json.dumps({"n": 10**19, "pad": "y" * 200}).encode()))  # a long id still fits
    items.append((41, json.dumps({"pad": "z" * 2000}).encode()))  # alone, too long anyway
    lines = wire.request_lines("work", items)
    seen: list[int] = []
    for line, ids in lines:
        assert line.endswith(b"\n") and b"\n" not in line[:-1]
        request = json.loads(line)
        assert request["id"] == ids[0]
        if len(ids) == 1:
            assert request["method"] == "work" and request["params"] == json.loads(dict(items)[ids[0]])
        else:
            assert len(line) - 1 <= 1000 and len(ids) <= 4
            assert request["method"] == "work.batch"
            assert request["params"]["items"] == [json.loads(dict(items)[i]) for i in ids]
        seen += ids
    assert seen == [i for i, _ in items]
    assert len(lines[-1][0]) > 1000 and lines[-1][1] == [41]
    assert any(len(ids) == 4 for _, ids in lines)


@pytest.mark.integration
async def test_each_call_of_a_batch_keeps_its_own_timeout(client: RpcClient, recorder: Recorder) -> None:
    recorder.delay = 0.2
    short = client.call("work", {"n": 1}, timeout=0.05)
    long = client.call("work", {"n": 2}, timeout=5)
    outcomes = await _outcomes([short, long])
    assert isinstance(outcomes[0], RpcUnavailable) and "in time" in str(outcomes[0])
    assert outcomes[1] == {"n": 2}
    assert len(recorder.batches) == 1
    conn = client._conn
    assert conn is not None and not conn.closed and not conn.pending and not conn._batches


@pytest.mark.integration
async def test_a_call_cancelled_before_the_batch_leaves_is_not_sent(
    client: RpcClient, recorder: Recorder
) -> None:
    tasks = [asyncio.create_task(client.call("work", {"n": n})) for n in (1, 2, 3)]
    await asyncio.sleep(0)  # the calls queued their requests
    tasks[1].cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[0] == {"n": 1} and outcomes[2] == {"n": 3}
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert recorder.batches == [[{"n": 1}, {"n": 3}]]


@pytest.mark.integration
async def test_an_error_for_the_whole_batch_is_every_calls_error(sock_path: str) -> None:
    async def refuse_all(batch: list[dict[str, Any]]) -> list[Any]:
        raise RpcError("busy", "try later")

    async def crash_all(batch: list[dict[str, Any]]) -> list[Any]:
        raise RuntimeError("secret detail")

    async def short(batch: list[dict[str, Any]]) -> list[Any]:
        return [1]

    async def never(params: dict[str, Any]) -> Any:
        raise AssertionError("the batch handler serves batches")

    srv = RpcServer(sock_path, {"a": never, "b": never, "c": never, "ping": ping},
                    batch_handlers={"a": refuse_all, "b": crash_all, "c": short})
    await srv.start()
    cli = RpcClient(sock_path, timeout=5, batched={"a", "b", "c"})
    try:
        await cli.call("ping")
        for method, code in (("a", "busy"), ("b", "internal"), ("c", "internal")):
            outcomes = await _outcomes([cli.call(method, {"n": n}) for n in range(3)])
            assert all(isinstance(o, RpcError) and o.code == code for o in outcomes), (method, outcomes)
            assert "secret" not in str(outcomes)
    finally:
        await cli.close()
        await srv.close()


@pytest.mark.integration
async def test_malformed_batches_get_clear_errors(recorder: Recorder, sock_path: str) -> None:
    raw = await RawConnection.open(sock_path)
    try:
        raw.send(json.dumps({"id": 1, "method": "work.batch", "params": {"items": [{"n": 1}, [2], {"n": 3}]}}).encode()
                 + b"\n")
        assert await raw.reply() == {"id": 1, "result": [
            {"result": {"n": 1}},
            {"error": {"code": "bad_request", "message": "params must be an object"}},
            {"result": {"n": 3}},
        ]}
        for n, params in enumerate(({}, {"items": []}, {"items": {"n": 1}}), start=2):
            raw.send(json.dumps({"id": n, "method": "work.batch", "params": params}).encode() + b"\n")
            assert await raw.reply() == {"id": n, "error": {"code": "bad_request",
                                                            "message": "items must be a non-empty list"}}
        too_many = {"items": [{"n": n} for n in range(wire.MAX_INFLIGHT + 1)]}
        raw.send(json.dumps({"id": 8, "method": "work.batch", "params": too_many}).encode() + b"\n")
        assert await raw.reply() == {"id": 8, "error": {
            "code": "bad_request", "message": f"a batch carries at most {wire.MAX_INFLIGHT} items"}}
        raw.send(b'{"id":9,"method":"nope.batch","params":{"items":[{}]}}\n')
        assert await raw.reply() == {"id": 9, "error": {"code": "unknown_method", "message": "unknown method 'nope'"}}
        raw.send(b'{"id":10,"method":"work","params":{"n":10}}\n')  # the single request still works
        assert await raw.reply() == {"id": 10, "result": {"n": 10}}
    finally:
        await raw.close()


@pytest.mark.integration
async def test_inflight_limit_counts_the_items_of_a_batch(
    sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_INFLIGHT", 4)

    def batch(request_id: int, ns: range) -> bytes:
        return json.dumps({"id": request_id, "method": "gate.batch",
                           "params": {"items": [{"n": n} for n in ns]}}).encode() + b"\n"

    async with gated_server(sock_path) as (gate, raw):
        raw.send(batch(100, range(0, 3)) + batch(101, range(3, 6))
                 + json.dumps({"id": 6, "method": "gate", "params": {"n": 6}}).encode() + b"\n")
        await asyncio.sleep(0.05)
        # 3 items < 4: the second line is read; 6 items >= 4: the third is not.
        assert sorted(gate.started) == list(range(6))
        gate.release.set()
        replies = {r["id"]: r["result"] for r in [await raw.reply() for _ in range(3)]}
        assert replies == {100: [{"result": n} for n in range(3)], 101: [{"result": n} for n in range(3, 6)], 6: 6}
        assert gate.started[-1] == 6


@pytest.mark.integration
async def test_connection_loss_fails_every_call_of_a_batch(sock_path: str) -> None:
    entered = asyncio.Event()

    async def hang(batch: list[dict[str, Any]]) -> list[Any]:
        entered.set()
        await asyncio.sleep(10)
        return [None] * len(batch)

    srv = RpcServer(sock_path, {"h": hang, "ping": ping}, batch_handlers={"h": hang})  # type: ignore[dict-item]
    await srv.start()
    cli = RpcClient(sock_path, timeout=5, batched={"h"})
    try:
        await cli.call("ping")
        calls = asyncio.gather(*(cli.call("h", {"n": n}) for n in range(3)), return_exceptions=True)
        await entered.wait()
        await srv.close(grace=0)
        outcomes = await calls
        assert all(isinstance(o, RpcUnavailable) for o in outcomes), outcomes
        conn = cli._conn
        assert conn is not None and conn.closed and not conn._batches
    finally:
        await cli.close()
        await srv.close()


def test_max_line_is_unchanged() -> None:
    assert MAX_LINE == 1024 * 1024 and wire.MAX_BATCH < wire.MAX_INFLIGHT


@pytest.mark.integration
async def test_a_batch_of_exactly_max_inflight_items_is_served(
    recorder: Recorder, sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_INFLIGHT", 3)
    raw = await RawConnection.open(sock_path)
    try:
        for n in (3, 4):
            raw.send(json.dumps({"id": n, "method": "work.batch",
                                 "params": {"items": [{"n": i} for i in range(n)]}}).encode() + b"\n")
        assert await raw.reply() == {"id": 3, "result": [{"result": {"n": i}} for i in range(3)]}
        assert (await raw.reply())["error"]["message"] == "a batch carries at most 3 items"
    finally:
        await raw.close()


@pytest.mark.integration
async def test_a_batched_call_of_an_unknown_method_fails_as_a_single_one_would(client: RpcClient) -> None:
    outcomes = await _outcomes([client.call("nope", {"n": n}) for n in range(2)] + [client.call("nope")])
    assert all(isinstance(o, RpcError) and (o.code, o.message) == ("unknown_method", "unknown method 'nope'")
               for o in outcomes), outcomes


@pytest.mark.integration
async def test_params_given_encoded_travel_as_the_same_request(
    client: RpcClient, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bytes params (a JSON object already encoded) reach the handler as the
    dict would have, batched or alone, and a plain request's line is the
    line the dict gives."""
    params = {"n": 5, "text": "Ваш заказ \"готов\"\n", "none": None}
    encoded = json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode()
    assert await _outcomes([client.call("work", encoded), client.call("work", {"n": 6})]) == [{"n": 5}, {"n": 6}]
    assert await client.call("work", encoded) == {"n": 5}
    assert recorder.batches == [[params, {"n": 6}]] and recorder.singles == [params]
    conn = client._conn
    assert conn is not None
    sent: list[bytes] = []
    monkeypatch.setattr(conn.out, "send", sent.append)
    unbatched = RpcClient(client._path, batched=())
    unbatched._conn = conn
    for given in (params, encoded):
        with pytest.raises(RpcUnavailable):
            await unbatched.call("plain", given, timeout=0.01)
    assert sent[0] == wire.encode_line({"id": 1, "method": "plain", "params": params})
    assert sent[1] == wire.encode_line({"id": 2, "method": "plain", "params": params})
