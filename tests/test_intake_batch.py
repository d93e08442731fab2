"""Intake.many: a batch of posts gives exactly what the same posts one by one give."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from smppd import config as config_mod
from smppd.cli.demo import start_rig, stop_rig
from smppd.intake import Intake
from smppd.rpc import RpcClient, RpcError
from smppd.model import OpenMessage, PortalRecord
from smppd.store import Store

from tests.rigs.intake_rig import CONFIG, MEMBER, TOKEN, post
from tests.rigs.rpc_rig import RawConnection

from tests.rigs.store_rig import connect


# One of each outcome: stored, refused before the store (each with its own code), stored as failed,
# multi-segment, and the same b24_id twice in one batch.
MIXED = [
    post(1),
    post(2, b24_id="nothex"),
    post(3, code="nope"),
    post(4, application_token="f" * 32),
    post(5, to="+375 17 123-45-67"),
    post(6, text="Заказ готов, ждём вас. " * 8),
    post(1),
    [],  # not an object: the RPC layer answers it, but Intake must not choke on odd params either
    post(7, text=""),
    post(8),
]


class Rig:
    def __init__(self, store: Store) -> None:
        cfg = config_mod.parse(tomllib.loads(CONFIG))
        portal = PortalRecord(MEMBER, "shop.bitrix24.by", "", "", "", "", TOKEN, "", "")
        self.store = store
        self.dispatched: list[OpenMessage] = []
        self.intake = Intake(cfg, store, lambda: {MEMBER: portal}, self.dispatched.append)


@pytest.fixture
async def rigs(tmp_path: Path, make_store):
    stores = [await make_store(tmp_path / f"{name}.db") for name in ("one", "many")]
    return Rig(stores[0]), Rig(stores[1])


def _outcome(value: Any) -> Any:
    if isinstance(value, RpcError):
        return ("error", value.code, value.message, value.field)
    if isinstance(value, Exception):
        return ("exception", type(value).__name__)
    return value


async def one_by_one(rig: Rig, posts: list[Any]) -> list[Any]:
    outcomes = []
    for p in posts:
        try:
            outcomes.append(await rig.intake(p))
        except Exception as e:
            outcomes.append(e)
    return [_outcome(o) for o in outcomes]


def rows(path: str) -> list[tuple]:
    conn = connect(path)
    try:
        return conn.execute(
            "SELECT id, b24_id, phone, status, reason, segments, concat_ref, b24_status FROM message ORDER BY id"
        ).fetchall() + conn.execute("SELECT row_id, seq, status FROM segment ORDER BY 1, 2").fetchall()
    finally:
        conn.close()


async def test_a_batch_gives_what_the_posts_one_by_one_give(rigs: tuple[Rig, Rig]) -> None:
    single, batch = rigs
    expected = await one_by_one(single, MIXED)
    with capture_logs() as logs:
        got = [_outcome(o) for o in await batch.intake.many(MIXED)]
    assert got == expected
    assert [o["duplicate"] for o in got if isinstance(o, dict)] == [False, False, False, True, False]
    assert got[6]["id"] == got[0]["id"]
    assert got[1][:2] == ("error", "bad_request") and got[2][:2] == ("error", "unknown_code")
    assert got[3][:2] == ("error", "forbidden") and got[4]["status"] == "failed"
    assert got[7] == ("exception", "AttributeError") and got[8][:2] == ("error", "bad_request")
    assert batch.dispatched == single.dispatched and len(batch.dispatched) == 3
    assert rows(batch.store.path) == rows(single.store.path)
    received = [e for e in logs if e["event"] == "message_received"]
    assert len(received) == 5 and all(e["to"].count("*") == 5 for e in received)
    assert [e["duplicate"] for e in received] == [False, False, False, True, False]


async def test_duplicates_inside_one_batch(rigs: tuple[Rig, Rig]) -> None:
    _, batch = rigs
    first, again = await batch.intake.many([post(9), post(9, b24_id=f"{9:032X}")])
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    assert (again["id"], again["status"]) == (first["id"], "queued")
    assert [m.id for m in batch.dispatched] == [first["id"]]


async def test_a_failing_batch_is_stored_message_by_message(
    rigs: tuple[Rig, Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, batch = rigs
    store = batch.store
    real_many = store.intake_many

    async def refuse_batches_and_message_11(messages: Any) -> Any:
        """A batch fails as a whole; alone, only message 11 fails."""
        if len(messages) > 1:
            raise sqlite3.OperationalError("disk I/O error")
        if messages[0].b24_id == f"{11:032x}":
            raise sqlite3.IntegrityError("constraint")
        return await real_many(messages)

    monkeypatch.setattr(store, "intake_many", refuse_batches_and_message_11)
    with capture_logs() as logs:
        outcomes = await batch.intake.many([post(10), post(11), post(12, b24_id="bad"), post(13)])
    assert outcomes[0]["status"] == "queued" and outcomes[3]["status"] == "queued"
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert isinstance(outcomes[2], RpcError) and outcomes[2].code == "bad_request"
    assert [e for e in logs if e["event"] == "intake_batch_failed"] == [
        {"event": "intake_batch_failed", "error": "OperationalError", "messages": 3, "log_level": "warning"}
    ]
    assert [m.b24_id for m in batch.dispatched] == [f"{10:032x}", f"{13:032x}"]
    assert [r[1] for r in rows(store.path) if len(r) == 8] == [f"{10:032x}", f"{13:032x}"]


async def test_a_batch_of_refused_posts_never_touches_the_store(
    rigs: tuple[Rig, Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, batch = rigs

    async def no_store(messages: Any) -> Any:
        raise AssertionError("nothing to store")

    monkeypatch.setattr(batch.store, "intake_many", no_store)
    outcomes = await batch.intake.many([post(1, code="nope"), post(2, to=5)])
    assert [(o.code, o.message) for o in outcomes] == [
        ("unknown_code", "no sender with code 'nope'"), ("bad_request", "to: must be a string")]


@pytest.mark.integration
async def test_the_daemon_serves_intake_batches_and_single_intakes(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, seed=5, portal_rate=None)
    portal = rig.portal
    base = {"member_id": portal.member_id, "application_token": portal.application_token, "code": "by_life",
            "text": "Your code 1234", "module_id": "crm"}
    client = RpcClient(rig.config.daemon.socket_path)
    try:
        await client.call("ping")
        conn = client._conn
        assert conn is not None
        sent: list[bytes] = []
        send = conn.out.send
        conn.out.send = lambda line: (sent.append(line), send(line))[1]  # type: ignore[method-assign]
        ids = [f"{n:032x}" for n in range(1, 6)]
        calls = [client.call("intake", {**base, "b24_id": i, "to": f"+37529{1234560 + n}"})
                 for n, i in enumerate(ids)]
        calls.append(client.call("intake", {**base, "b24_id": ids[0], "to": "+375291234560"}))
        calls.append(client.call("intake", {**base, "b24_id": "x", "to": "+375291234560"}))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert [o["duplicate"] for o in outcomes[:6]] == [False] * 5 + [True]
        assert outcomes[5]["id"] == outcomes[0]["id"]
        assert isinstance(outcomes[6], RpcError) and outcomes[6].message == "b24_id: must be 32 hex characters"
        assert [json.loads(line)["method"] for line in sent] == ["intake.batch"]

        raw = await RawConnection.open(rig.config.daemon.socket_path)
        try:
            line = {"id": 1, "method": "intake", "params": {**base, "b24_id": "f" * 32, "to": "+375291234567"}}
            raw.send((json.dumps(line) + "\n").encode())
            reply = await raw.reply()
            assert reply["id"] == 1 and reply["result"]["status"] == "queued"
        finally:
            await raw.close()
    finally:
        await client.close()
        await stop_rig(rig)
