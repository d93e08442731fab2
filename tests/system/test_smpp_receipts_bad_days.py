"""Issue 14 items 6-8: receipts in a wrong id base, one receipt per long message, no receipt.

The real route and store against the simulated SMSC in each fault mode, on loopback.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from smppd.model import Status

from tests.rigs.smpp_route_rig import rigs  # noqa: F401 (a fixture)

LONG = "Order 42 is ready. " * 20  # 380 GSM-7 chars: 3 parts


@pytest.mark.integration
@pytest.mark.parametrize("receipt_first", [False, True])
async def test_auto_base_matches_decimal_receipts_of_hex_resp_ids_and_warns_once(rigs, tmp_path, receipt_first):
    # 14.6: with the old default (as-is) 62 of 62 such messages never got a final status
    sim = {"id_format": "hex", "receipt_ids_decimal": True, "receipt_first": receipt_first}
    with capture_logs() as logs:
        rig = await rigs(tmp_path, sim=sim)
        assert rig.route.cfg.receipt_id_base == "auto", "auto is the default"
        ids = [await rig.send(f"m{i}") for i in range(12)]
        statuses = await rig.wait_final(ids)
    assert set(statuses.values()) == {"delivered"}
    warnings = [e for e in logs if e["event"] == "smpp_receipt_id_base_mismatch"]
    if not receipt_first:
        assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
        assert 'receipt_id_base = "dec"' in warnings[0]["advice"] and 'resp_id_base = "hex"' in warnings[0]["advice"]


@pytest.mark.integration
async def test_as_is_still_means_as_is(rigs, tmp_path):
    rig = await rigs(tmp_path, sim={"id_format": "hex", "receipt_ids_decimal": True}, receipt_id_base="as-is")
    mid = await rig.send()
    await asyncio.sleep(0.5)
    assert (await rig.message(mid))["status"] == "accepted"


async def test_receipts_that_never_match_are_counted_per_route(store):
    before = REGISTRY.get_sample_value("smppd_receipts_unmatched_total", {"route": "mts"}) or 0
    assert not await store.apply_receipt("mts", "DEADBEEF", Status.DELIVERED, "DELIVRD")
    assert not await store.apply_receipt("mts", "DEADBEF0", Status.DELIVERED, "DELIVRD")
    assert await store.expire_pending_receipts(ttl=-1) == 2
    assert REGISTRY.get_sample_value("smppd_receipts_unmatched_total", {"route": "mts"}) == before + 2


@pytest.mark.integration
@pytest.mark.parametrize("part", ["first", "last"])
async def test_one_receipt_per_long_message_finishes_it(rigs, tmp_path, part):
    # 14.7: Jasmin #1123/#1136, go-smpp #74: the operator reports on one part only
    rig = await rigs(tmp_path, sim={"long_receipts": part, "outcomes": {"UNDELIV": 1}}, multipart_receipts=part)
    mid = await rig.send(LONG)
    assert await rig.wait_final() == {mid: "undelivered"}
    rows = (await rig.message(mid))["segment_rows"]
    assert [r["status"] for r in rows] == ["undelivered"] * 3
    assert rig.smsc.receipts_sent == 1


@pytest.mark.integration
async def test_any_takes_whichever_part_reports(rigs, tmp_path):
    rig = await rigs(tmp_path, sim={"long_receipts": "last"}, multipart_receipts="any")
    mid = await rig.send(LONG)
    assert await rig.wait_final() == {mid: "delivered"}


@pytest.mark.integration
async def test_all_waits_for_every_part(rigs, tmp_path):
    rig = await rigs(tmp_path, sim={"long_receipts": "first"})
    mid = await rig.send(LONG)
    await asyncio.sleep(0.5)
    m = await rig.message(mid)
    assert m["status"] == "accepted"
    assert [r["status"] for r in m["segment_rows"]] == ["delivered", "accepted", "accepted"]


@pytest.mark.integration
async def test_no_receipt_after_validity_ends_undelivered(rigs, tmp_path, monkeypatch):
    # 14.8: a part accepted and never reported on stayed "sent" for ever
    monkeypatch.setattr("smppd.routes.smpp.RECEIPT_WATCH_INTERVAL", 0.1)
    rig = await rigs(tmp_path, sim={"receipts": False}, validity=1.0)
    ids = [await rig.send("short"), await rig.send(LONG)]
    statuses = await rig.wait_final(ids, timeout=6)
    assert set(statuses.values()) == {"undelivered"}
    assert (await rig.message(ids[0]))["reason"] == "no receipt"
    assert rig.smsc.queries == 0, "query_sm only where the route asks for it"


@pytest.mark.integration
async def test_query_sm_first_then_the_answer_is_the_receipt(rigs, tmp_path, monkeypatch):
    monkeypatch.setattr("smppd.routes.smpp.RECEIPT_WATCH_INTERVAL", 0.1)
    rig = await rigs(tmp_path, sim={"receipts": False, "outcomes": {"UNDELIV": 1}}, validity=30.0,
                     query_sm=True, query_sm_delay=0.4, throughput=50)
    mid = await rig.send()
    assert await rig.wait_final(timeout=6) == {mid: "undelivered"}
    assert "query_sm" in (await rig.message(mid))["reason"]
    assert rig.smsc.queries == 1
    later = await rig.send()
    await rig.wait_final([later], timeout=6)
    conn = rig.route.connection
    assert conn.binds == 1 and conn.connect_attempts == 1, "the answer is handled without harm to the bind"


@pytest.mark.integration
async def test_query_sm_refused_by_the_smsc_still_ends_at_validity(rigs, tmp_path, monkeypatch):
    monkeypatch.setattr("smppd.routes.smpp.RECEIPT_WATCH_INTERVAL", 0.1)
    rig = await rigs(tmp_path, sim={"receipts": False, "query_sm": False}, validity=1.5,
                     query_sm=True, query_sm_delay=0.3)
    mid = await rig.send()
    assert await rig.wait_final(timeout=8) == {mid: "undelivered"}
    assert (await rig.message(mid))["reason"] == "no receipt"
    assert rig.route.stats["queries"] >= 1
