"""The whole path: Bitrix24 form → shim → daemon → SMSC → receipt → status in Bitrix24.

Everything here is real but the peers: the simulated portal and SMSCs follow
the wire formats of the reference, on loopback.
"""

from __future__ import annotations

import random

import pytest

from smppd import text
from smppd.cli.demo import demo_messages, start_daemon, start_rig, stop_rig
from smppd.model import aggregate, bitrix24_status, receipt_status

from tests.rigs.e2e_rig import post, smsc_ids, wait_final

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


@pytest.fixture
async def rig(tmp_path, database):
    """The demo's rig, on each engine (conftest's ``database``)."""
    r = await start_rig(tmp_path, seed=3, portal_rate=None, database=database)
    yield r
    await stop_rig(r)


def smsc_for(rig, code):
    return rig.smscs["life" if code == "by_life" else "mts"]


async def test_every_message_ends_with_the_status_its_receipts_gave(rig):
    messages = demo_messages(80, random.Random(11))
    posted = []
    for code, number, body, valid in messages:
        b24_id, status, reply = await post(rig, code, number, body)
        assert status == 200, reply
        posted.append((b24_id, code, valid))
    finals = await wait_final(rig, [p[0] for p in posted])
    stats_seen = set()
    for b24_id, code, valid in posted:
        if not valid:
            assert finals[b24_id] == "failed"
            continue
        smsc = smsc_for(rig, code)
        stats = [smsc.outcome_of(pid) for pid in smsc_ids(rig, b24_id)]
        stats_seen.update(stats)
        expected = bitrix24_status(aggregate([receipt_status(None, s) for s in stats]))
        assert finals[b24_id] == expected, (b24_id, stats)
        assert rig.portal.messages[b24_id].regressions() == []
    assert stats_seen == {"DELIVRD", "UNDELIV", "EXPIRED", "REJECTD"}, "every receipt kind was exercised"


async def test_repost_is_idempotent(rig):
    b24_id, form = rig.portal.create_message("by_life", "+375291234567", "Your code 1234")
    import aiohttp

    from smppd.cli.demo import handler_url

    async with aiohttp.ClientSession() as http:
        replies = []
        for _ in range(3):
            async with http.post(handler_url(rig, "by_life"), data=form) as resp:
                assert resp.status == 200
                replies.append(await resp.json())
    assert [r["duplicate"] for r in replies] == [False, True, True]
    assert len({r["id"] for r in replies}) == 1
    await wait_final(rig, [b24_id])
    sent = [s for s in rig.smscs["life"].submitted if s.destination_addr == "375291234567"]
    assert len(sent) == 1


async def test_invalid_number_is_never_sent_and_fails_in_bitrix24(rig):
    b24_id, status, reply = await post(rig, "by_mts", "+375 17 123-45-67", "Landline test")
    assert status == 200 and reply["status"] == "failed"
    assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
    assert rig.smscs["mts"].submitted == []


async def test_multi_segment_cyrillic_on_the_wire(rig):
    body = "Здравствуйте! " * 12  # 168 UCS-2 units: 3 segments of ≤ 67
    assert text.count_segments(body) == 3
    b24_id, status, _ = await post(rig, "by_life", "80291112233", body)
    assert status == 200
    await wait_final(rig, [b24_id])
    parts = [s for s in rig.smscs["life"].submitted if s.destination_addr == "375291112233"]
    assert len(parts) == 3
    udhs = [p.short_message[:6] for p in parts]
    ref = udhs[0][3]
    assert udhs == [bytes([5, 0, 3, ref, 3, n]) for n in (1, 2, 3)]
    for p in parts:
        assert p.data_coding == 0x08 and p.esm_class & 0x40
        assert p.source_addr == "DemoShop" and p.source_addr_ton == 5 and p.source_addr_npi == 0
        assert p.dest_addr_ton == 1 and p.dest_addr_npi == 1
        assert p.registered_delivery == 1
        assert len(p.short_message) <= 6 + 67 * 2
    assert "".join(p.text for p in parts) == body


async def test_latin_text_goes_as_gsm7(rig):
    body = "Order 42 {ready} at 10:00 - see you!"
    b24_id, status, _ = await post(rig, "by_mts", "+375 (33) 555-66-77", body)
    assert status == 200
    await wait_final(rig, [b24_id])
    [sm] = [s for s in rig.smscs["mts"].submitted if s.destination_addr == "375335556677"]
    assert sm.data_coding == 0x00 and sm.esm_class == 0
    assert sm.short_message == text.gsm7_encode(body)
    assert b"\x1b\x28" in sm.short_message  # '{' as ESC + code, unpacked septets
    assert sm.text == body


async def test_forged_posts_are_refused(rig):
    b24_id, form = rig.portal.create_message("by_life", "+375291234567", "hi")
    import aiohttp

    from smppd.cli.demo import handler_url

    forged = [(k, "x" * 32 if k == "auth[application_token]" else v) for k, v in form]
    other_portal = [(k, "f" * 32 if k == "auth[member_id]" else v) for k, v in form]
    async with aiohttp.ClientSession() as http:
        url = handler_url(rig, "by_life")
        async with http.post(url, data=forged) as resp:
            assert resp.status == 403
        async with http.post(url, data=other_portal) as resp:
            assert resp.status == 403
        async with http.post(url.replace("key=", "key=x"), data=form) as resp:
            assert resp.status == 401
        async with http.post(url.replace("/by_life", "/by_nobody"), data=form) as resp:
            assert resp.status == 404
    assert rig.smscs["life"].submitted == []


async def test_daemon_down_means_spooled_then_sent(rig):
    """Bitrix24 never retries: a post while the daemon is down is kept by the
    shim's spool (200) and sent once the daemon is back."""
    await rig.daemon.stop()
    b24_id, status, reply = await post(rig, "by_life", "+375291234567", "hi")
    assert status == 200 and reply == {"ok": True, "id": None, "status": "spooled", "duplicate": False}
    await start_daemon(rig)
    b24_again, status, reply = await post(rig, "by_life", "+375291234567", "hi again")
    assert status == 200 and reply["status"] != "spooled"
    await wait_final(rig, [b24_id, b24_again])


async def test_operator_outage_and_daemon_restart_lose_nothing(rig):
    life = rig.smscs["life"]
    await life.stop()  # the operator goes away
    ids = []
    for i in range(10):
        b24_id, status, _ = await post(rig, "by_life", f"+37544555{i:04d}", f"Message {i} " + "ж" * (i * 10))
        assert status == 200
        ids.append(b24_id)
    await rig.daemon.stop()
    await start_daemon(rig)  # the queued messages come back from the store
    await life.start()  # same port: the operator returns
    finals = await wait_final(rig, ids, timeout=30)
    assert len(finals) == 10
    assert all(rig.portal.messages[i].regressions() == [] for i in ids)


async def test_stop_unbinds_politely(rig):
    from structlog.testing import capture_logs

    b24_id, status, _ = await post(rig, "by_life", "+375291234567", "before stop")
    await wait_final(rig, [b24_id])
    with capture_logs() as logs:
        await rig.daemon.stop()
    events = [e["event"] for e in logs]
    assert events.count("smpp.unbound") == 2, "both binds got their unbind_resp"
    assert "smpp.connection_lost" not in events
    assert rig.smscs["life"].binds == 0 and rig.smscs["mts"].binds == 0
    rig.daemon = None  # already stopped
