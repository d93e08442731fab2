"""Operations on the real path: /metrics, the status journal, the admin RPC methods.

The rig is the demo's: real shim, daemon and store, simulated portal and SMSCs on loopback.
"""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from smppd.cli.demo import start_rig, stop_rig
from smppd.rpc import RpcClient, RpcError

from tests.rigs.e2e_rig import db, post, wait_final

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

NUMBERS = ["+375291234567", "+375297654321", "+375447000011", "+375336543210"]


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path, seed=5, portal_rate=None)
    yield r
    await stop_rig(r)


@pytest.fixture
async def rpc(rig):
    client = RpcClient(rig.config.daemon.socket_path)
    yield client
    await client.close()


async def scrape(rig) -> dict[tuple[str, tuple], float]:
    """Every sample of the daemon's /metrics, by (name, sorted labels)."""
    await rig.daemon.ops.watcher.tail()
    await rig.daemon.ops.watcher.snapshot()
    url = f"http://127.0.0.1:{rig.daemon.ops.metrics_port}/metrics"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_after_traffic_agree_with_the_store(rig):
    before = await scrape(rig)
    posted = []
    for i, number in enumerate(NUMBERS * 3):
        b24_id, status, _ = await post(rig, "by_life" if i % 2 else "by_mts", number, f"Order {i} is ready")
        assert status == 200
        posted.append(b24_id)
    b24_id, status, _ = await post(rig, "by_life", "+375 17 123-45-67", "landline")  # fails at intake
    posted.append(b24_id)
    await wait_final(rig, posted)
    after = await scrape(rig)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "smppd_bind_up", route="life") == 1.0
    assert value(after, "smppd_bind_up", route="mts") == 1.0
    assert value(after, "smppd_queue_depth", route="life") == 0.0
    assert value(after, "smppd_window_size", route="life") == 20.0
    assert delta("smppd_messages_received_total", route="life", status="queued") == 6
    assert delta("smppd_messages_received_total", route="mts", status="queued") == 6
    assert delta("smppd_messages_received_total", route="life", status="failed") == 1
    assert delta("smppd_segments_received_total", route="life") == 7
    assert delta("smppd_submit_latency_seconds_count", route="life") == 6
    assert delta("smppd_shim_requests_total", http_status="200", outcome="stored") == 13

    # Final statuses per route and status, straight from the store.
    rows = db(rig).execute("SELECT route, status, count(*) FROM message GROUP BY 1, 2").fetchall()
    for route, status, n in rows:
        assert value(after, "smppd_messages_final_total", route=route, status=status) == n
    assert sum(v for (name, _), v in after.items() if name == "smppd_messages_final_total") == 13
    def receipts(samples):
        return sum(v for (name, labels), v in samples.items()
                   if name == "smppd_receipt_latency_seconds_count" and ("route", "life") in labels)

    segments_with_receipts = db(rig).execute(
        "SELECT count(*) FROM segment WHERE route='life' AND smsc_id IS NOT NULL"
        " AND status IN ('delivered','undelivered','expired','rejected')").fetchone()[0]
    assert receipts(after) - receipts(before) == segments_with_receipts > 0
    assert value(after, "smppd_segments_accepted_total", route="mts") >= 6

    # Low cardinality: no phone number or message id ever becomes a label.
    ids = {r[0] for r in db(rig).execute("SELECT b24_id FROM message")}
    for (name, labels) in after:
        for _, v in labels:
            assert not any(d in v for d in ("375291234567", "1234567", "7654321")), (name, labels)
            assert v not in ids


async def test_one_final_line_per_message_with_our_bitrix24_and_smsc_ids(rig):
    with capture_logs() as logs:
        b24_id, status, reply = await post(rig, "by_life", NUMBERS[0], "Ваш заказ готов к выдаче, " * 4)
        bad_id, _, bad = await post(rig, "by_mts", "+375 17 123-45-67", "landline")
        assert status == 200
        await wait_final(rig, [b24_id, bad_id])
        await rig.daemon.ops.watcher.tail()
    finals = [e for e in logs if e["event"] == "message_final"]
    [line] = [e for e in finals if e["b24_id"] == b24_id]
    pids = [r[0] for r in db(rig).execute(
        "SELECT smsc_id FROM segment WHERE row_id=? ORDER BY seq", (reply["id"],))]
    assert len(pids) == 2 and all(pids)
    assert line["id"] == reply["id"] and line["route"] == "life" and line["smsc_ids"] == pids
    stored = db(rig).execute("SELECT status FROM message WHERE id=?", (reply["id"],)).fetchone()[0]
    assert line["status"] == stored and line["seconds"] >= 0
    [line] = [e for e in finals if e["b24_id"] == bad_id]
    assert line["id"] == bad["id"] and line["route"] == "mts" and line["status"] == "failed"
    assert line["smsc_ids"] == [] and line["reason"].startswith("invalid number")
    assert len(finals) == 2, "exactly one line per message"
    # Full numbers never reach a log line.
    for e in logs:
        assert "1234567" not in repr(e), e


async def test_send_takes_the_real_path_and_reports_smsc_ids(rig, rpc):
    from prometheus_client import REGISTRY

    def gone() -> float:
        return REGISTRY.get_sample_value("smppd_bitrix24_rest_errors_total", {
            "portal": rig.portal.member_id, "code": "ERROR_MESSAGE_NOT_FOUND"}) or 0.0

    before = gone()
    sent = await rpc.call("send", {"code": "by_mts", "to": "8 029 765-43-21", "text": "smppd test"})
    assert sent["route"] == "mts" and sent["status"] == "queued" and len(sent["b24_id"]) == 32
    await rig.daemon.store.execute(lambda conn: None)  # let the group commit settle
    for _ in range(200):
        m = await rpc.call("message", {"id": sent["id"]})
        if m["status"] not in ("queued", "submitted", "accepted"):
            break
        await __import__("asyncio").sleep(0.02)
    assert m["status"] in ("delivered", "undelivered", "expired", "rejected")
    assert m["to"] != "+375297654321" and m["to"].startswith("+37529")
    assert all(s["smsc_id"] for s in m["segments"])
    assert [s.destination_addr for s in rig.smscs["mts"].submitted] == ["375297654321"]
    # Bitrix24 never heard of a test message: its status update is refused, counted and dropped.
    pusher = rig.daemon.pushers[rig.portal.member_id]
    for _ in range(200):
        if pusher.dropped:
            break
        await __import__("asyncio").sleep(0.02)
    assert gone() - before == pusher.dropped >= 1


async def test_send_refuses_unknown_codes_and_bad_fields(rpc):
    with pytest.raises(RpcError) as e:
        await rpc.call("send", {"code": "nope", "to": "+375291234567", "text": "x"})
    assert e.value.code == "unknown_code"
    with pytest.raises(RpcError) as e:
        await rpc.call("send", {"code": "by_life", "to": "+375291234567", "text": ""})
    assert e.value.code == "bad_request"


async def test_stuck_retry_and_cancel(rig, rpc):
    await rig.smscs["mts"].stop()  # the operator is down: messages stay queued
    b24_a, status, a = await post(rig, "by_mts", NUMBERS[1], "first")
    b24_b, status, b = await post(rig, "by_mts", NUMBERS[2], "second")
    route = rig.daemon.routes["mts"]
    assert {j.row_id for j in route.queue} == {a["id"], b["id"]}

    stuck = await rpc.call("stuck", {"older_than": 0, "route": "mts"})
    assert [s["id"] for s in stuck] == [a["id"], b["id"]]
    assert all(s["status"] == "queued" for s in stuck)

    # Retry does not queue twice what is already queued...
    assert (await rpc.call("retry", {"ids": [a["id"]]}))["requeued"] == []
    # ...but puts back what fell out of the queue.
    route.queue.clear()
    r = await rpc.call("retry", {"older_than": 0, "route": "mts"})
    assert r["requeued"] == [a["id"], b["id"]] and len(route.queue) == 2

    c = await rpc.call("cancel", {"ids": [a["id"]]})
    assert c["cancelled"] == [a["id"]]
    assert {j.row_id for j in route.queue} == {b["id"]}
    assert (await rpc.call("message", {"id": a["id"]}))["status"] == "failed"
    assert (await wait_final(rig, [b24_a]))[b24_a] == "failed"  # Bitrix24 hears of it too
    events = db(rig).execute("SELECT detail FROM event WHERE row_id=? AND status='failed'", (a["id"],))
    assert [r[0] for r in events] == ["cancelled by admin"]

    with pytest.raises(RpcError) as e:
        await rpc.call("cancel", {})
    assert e.value.code == "bad_request"
    with pytest.raises(RpcError):
        await rpc.call("retry", {"ids": ["1"]})


async def test_status_has_window_binds_and_outbox_per_portal(rig, rpc):
    st = await rpc.call("status")
    life = st["routes"]["life"]
    # window: the AIMD window now (≤ window_size); inflight: how much of it is used
    assert life["bound"] is True and life["window_size"] == 20 and life["window"] == 20
    assert life["inflight"] == 0 and life["binds"] == 1
    portal = next(iter(st["pushers"].values()))
    assert portal["updates"] == 0 and "oldest_seconds" in portal
