"""The daemon's socket refuses malformed requests before any handler: wrong JSON types, integers
of 64 bits or more, NaN, absurd nesting. The connection stays usable and memory stays flat."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile

import pytest

from smppd.daemon import PARAM_TYPES
from smppd.rpc import INT_LIMIT, ListOf, MapOf, RpcServer, check_params, conforms


def test_conforms_tells_json_types_apart():
    assert conforms(int, 5) and not conforms(int, True) and not conforms(int, "5")
    assert conforms((str, None), None) and not conforms((str, None), 1)
    assert conforms(ListOf(ListOf(str, 2)), [["a", "b"]]) and not conforms(ListOf(ListOf(str, 2)), [["a", "b", "c"]])
    assert conforms(MapOf(int, 2), {"a": 1}) and not conforms(MapOf(int, 2), {"a": 1, "b": 2, "c": 3})
    assert not conforms(ListOf(str, 3), ["a"] * 4)
    err = check_params(PARAM_TYPES["intake"], {"to": ["+375291234567"], "code": "x"})
    assert err is not None and err.field == "to" and err.code == "bad_request" and "375" not in err.message


@pytest.fixture
async def server():
    directory = tempfile.mkdtemp(prefix="rpch", dir="/tmp")
    path = os.path.join(directory, "s.sock")
    calls: list[dict] = []

    async def intake(params):
        calls.append(params)
        return {"id": 1, "status": "queued", "duplicate": False}

    async def ping(params):
        return "pong"

    srv = RpcServer(path, {"intake": intake, "ping": ping}, params=PARAM_TYPES)
    await srv.start()
    yield path, calls
    await srv.close()
    shutil.rmtree(directory, ignore_errors=True)


async def ask(reader, writer, line: bytes) -> dict:
    writer.write(line + b"\n")
    await writer.drain()
    return json.loads(await asyncio.wait_for(reader.readline(), 10))


GOOD = {"code": "by_life", "b24_id": "a" * 32, "to": "+375291234567", "text": "hi", "ts": 1700000000,
        "bindings": [{"owner_type_id": 2, "owner_id": 5}]}


@pytest.mark.integration
async def test_bad_requests_are_refused_before_the_handler_and_the_connection_stays(server):
    path, calls = server
    reader, writer = await asyncio.open_unix_connection(path, limit=2**21)
    cases = [
        (json.dumps({"id": 1, "method": "intake", "params": {**GOOD, "to": 375291234567}}).encode(), "to"),
        (json.dumps({"id": 2, "method": "intake", "params": {**GOOD, "text": {"a": 1}}}).encode(), "text"),
        (json.dumps({"id": 3, "method": "intake", "params": {**GOOD, "bindings": [[1, 2]]}}).encode(), "bindings"),
        (json.dumps({"id": 4, "method": "intake", "params": {**GOOD, "ts": True}}).encode(), "ts"),
        (f'{{"id": 5, "method": "intake", "params": {{"ts": {INT_LIMIT}}}}}'.encode(), None),
        (f'{{"id": 6, "method": "intake", "params": {{"ts": {-INT_LIMIT - 1}}}}}'.encode(), None),
        (b'{"id": 7, "method": "intake", "params": {"ts": NaN}}', None),
        (b'{"id": 8, "method": "intake", "params": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", None),
        (b'{"id": 9, "method": "intake", "params": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}", None),
    ]
    for line, field in cases:
        reply = await ask(reader, writer, line)
        assert reply["error"]["code"] == "bad_request", reply
        assert reply["error"].get("field") == field
        assert "375291234567" not in json.dumps(reply)
        assert (await ask(reader, writer, b'{"id": "p", "method": "ping"}'))["result"] == "pong"
    assert calls == []
    batch = {"id": 10, "method": "intake.batch", "params": {"items": [GOOD, {**GOOD, "to": 1}]}}
    reply = await ask(reader, writer, json.dumps(batch).encode())
    assert "result" in reply["result"][0] and reply["result"][1]["error"]["field"] == "to"
    assert len(calls) == 1
    writer.close()


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.integration
async def test_memory_does_not_grow_with_the_number_of_bad_requests(server):
    path, calls = server
    reader, writer = await asyncio.open_unix_connection(path, limit=2**21)
    bad = [json.dumps({"id": 1, "method": "intake", "params": {**GOOD, "to": [1] * 50}}).encode(),
           b'{"id": 2, "method": "intake", "params": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
           b"not json at all", b'{"id": 3, "method": "nope"}', f'{{"id": 4, "ts": {10**30}}}'.encode()]

    async def send(n: int) -> None:
        for i in range(n):
            writer.write(bad[i % len(bad)] + b"\n")
            if i % 100 == 99:
                await writer.drain()
                for _ in range(100):
                    await asyncio.wait_for(reader.readline(), 10)

    await send(2_000)  # warm-up: caches, allocator arenas
    before = _rss_kb()
    await send(20_000)
    after = _rss_kb()
    assert after - before < 4_000, (before, after)
    assert calls == []
    writer.close()


def test_the_compiled_checks_agree_with_conforms():
    from smppd.rpc import compile_spec

    values = [None, True, 0, -5, 1.5, "", "x", [], [1], ["a", "b"], [["a", "b"]], [["a", 1]], {}, {"a": 1},
              {"a": "b"}, [{"owner_id": 1}], [{"owner_id": [1]}], ["a"] * 9]
    for types in PARAM_TYPES.values():
        for spec in types.values():
            check = compile_spec(spec)
            for value in values:
                assert check(value) == conforms(spec, value), (spec, value)


def test_param_checks_give_check_params_verdict_on_every_param():
    """ParamChecks (the server's per-request check: plain types inline, containers compiled)
    names the same first wrong parameter as the generic check_params, or none."""
    import itertools

    from smppd.rpc.params import ParamChecks

    values = [None, True, 0, 1.5, "", "x", [], ["a"], [["a", "b"]], {}, {"a": 1}, [{"owner_id": 1}]]
    for types in PARAM_TYPES.values():
        checks = ParamChecks(types)
        names = list(types)
        for combo in itertools.islice(itertools.product(values, repeat=min(3, len(names))), 600):
            for start in range(0, len(names), 3):
                params = dict(zip(names[start:start + 3], combo))
                params["unknown"] = object()  # not declared: never checked
                want, got = check_params(types, params), checks(params)
                assert (want is None) == (got is None), (params, want, got)
                if want is not None:
                    assert (want.field, want.message) == (got.field, got.message)


def test_the_compiled_container_checks_agree_with_conforms_at_their_bounds():
    """The loop-per-container checks (smppd.rpc.params._compile_container) against the generic walk: lengths
    at and past each bound, a bool where an int belongs, nesting, several container alternatives."""
    from smppd.rpc import compile_spec

    specs = [ListOf(str, 2), MapOf((int, str), 2), ListOf(MapOf((int, str), 2), 2), (ListOf(int, 2), None),
             (ListOf(int, 1), MapOf(str, 1), str), ListOf(ListOf(float, 2), 2), MapOf(ListOf(str, 1), 1),
             ListOf((str, None), 3), MapOf(MapOf(bool, 1), 2)]
    values = [None, True, 1, 1.5, "a", [], {}, ["a"], ["a", "b"], ["a", "b", "c"], [None, "a"], [1], [True],
              [1, 2, 3], {"a": 1}, {"a": 1, "b": "x"}, {"a": 1, "b": 2, "c": 3}, {"a": True}, [{"a": 1}],
              [{"a": 1}, {"b": "c"}], [{"a": 1}, {"b": "c"}, {}], [{"a": [1]}], [[1.5, 2]], [[1, 2, 3]], [["a"]],
              {"k": ["a"]}, {"k": ["a", "b"]}, {"k": {"x": True}}, {"k": {"x": 1}}, {"k": {"x": True, "y": False}},
              {"a": "b"}, {"a": "b", "c": "d"}]
    for spec in specs:
        check = compile_spec(spec)
        for value in values:
            assert check(value) == conforms(spec, value), (spec, value)
