"""Business rules through the real shim and daemon, against the simulated portal and SMSCs.

Each test posts real HANDLER forms and checks what the operator got, what
Bitrix24 shows and the reason the store keeps.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from structlog.testing import capture_logs

from smppd import rules
from smppd.cli import main as cli
from smppd.config import RulesConfig
from smppd.cli.demo import handler_url

from tests.rigs.e2e_rig import db, post, wait_final
from tests.rigs.rules_rig import WallClock, settle, start_rules_daemon, start_rules_rig, stop_rig

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

CONSENT = "UF_CRM_SMS_CONSENT"


@pytest.fixture
async def rig(tmp_path):
    r = await start_rules_rig(tmp_path)
    yield r
    await stop_rig(r)


def sent_to(rig, route, digits):
    return [s for s in rig.smscs[route].submitted if s.destination_addr == digits]


def stored(rig, b24_id):
    return db(rig).execute("SELECT * FROM message WHERE b24_id=?", (b24_id,)).fetchone()


async def marketing(rig, to, body, *, contact=877, code="promo", **kw):
    kw.setdefault("bindings", ((2, 1541), (3, contact)))
    b24_id, status, reply = await post(rig, code, to, body, **kw)
    assert status == 200, reply
    await settle(rig)
    return b24_id, reply


# --- numbers -----------------------------------------------------------------------


async def test_number_outside_the_routes_countries_fails_with_the_reason(tmp_path):
    rig = await start_rules_rig(tmp_path, mts_countries=frozenset({"BY", "RU"}))
    try:
        b24_id, status, reply = await post(rig, "by_life", "+7 916 123-45-67", "Код 1234")
        assert status == 200 and reply["status"] == "failed"
        assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
        assert stored(rig, b24_id)["reason"] == "invalid number: country not allowed: RU"
        # The same number on a route that takes Russia goes out.
        b24_id, status, reply = await post(rig, "by_mts", "8 916 123-45-67", "Код 1234")
        assert reply["status"] == "queued"
        assert (await wait_final(rig, [b24_id]))[b24_id] == "delivered"
        assert len(sent_to(rig, "mts", "79161234567")) == 1
        assert rig.smscs["life"].submitted == []
    finally:
        await stop_rig(rig)


# --- consent -------------------------------------------------------------------------


async def test_marketing_with_consent_goes_out_under_the_marketing_sender(rig):
    rig.portal.add_crm_entity("contact", 877, NAME="Ivan", **{CONSENT: True})
    b24_id, reply = await marketing(rig, "+375291234567", "Sale -20% today")
    # Stored and answered first, judged after: Bitrix24 never waits on its own REST API.
    first_event = db(rig).execute("SELECT detail FROM event WHERE row_id=? ORDER BY id", (reply["id"],)).fetchone()
    assert first_event[0] == "held: consent"
    assert (await wait_final(rig, [b24_id]))[b24_id] == "delivered"
    [sm] = sent_to(rig, "life", "375291234567")
    assert sm.source_addr == "DemoPromo"
    assert rig.portal.crm_reads["contact"] == 1


async def test_marketing_without_consent_fails_with_the_reason_counted(rig):
    rig.portal.add_crm_entity("contact", 878, **{CONSENT: False})
    with capture_logs() as logs:
        b24_id, _ = await marketing(rig, "+375291234568", "Sale -20% today", contact=878)
    assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
    assert stored(rig, b24_id)["reason"] == f"no consent: {CONSENT} of contact 878 is not set"
    assert rig.daemon.rules.stats.refused == {"no consent": 1}
    assert any(e["event"] == "message_refused" and "contact 878" in e["reason"] for e in logs)
    assert rig.smscs["life"].submitted == []


async def test_crm_marketing_is_marketing_on_a_transactional_code(rig):
    rig.portal.add_crm_entity("contact", 877, phones=["+375 (29) 123-45-67"], **{CONSENT: "1"})
    # The portal posts module_id=sender without bindings: the contact is found by its number,
    # its consent read, and the CODE's marketing sender is used.
    b24_id, status, reply = await post(rig, "by_life", "80291234567", "Newsletter", module_id="sender")
    assert (status, reply["status"]) == (200, "queued")
    await settle(rig)
    assert (await wait_final(rig, [b24_id]))[b24_id] == "delivered"
    assert [s.source_addr for s in sent_to(rig, "life", "375291234567")] == ["DemoPromo"]
    assert rig.portal.crm_reads["findbycomm"] == 1
    # A number no CRM entity holds has no proof of consent.
    b24_id, _, _ = await post(rig, "by_life", "+375291111111", "Newsletter", module_id="sender")
    await settle(rig)
    assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
    assert stored(rig, b24_id)["reason"] == "no consent: no CRM contact, lead or company has this number"
    # With the recipient's contact bound, the binding is used and no search is needed.
    b24_id, form = rig.portal.create_message("by_life", "+375291234568", "Newsletter 2", module_id="sender")
    form += [("bindings[0][OWNER_TYPE_ID]", "3"), ("bindings[0][OWNER_ID]", "877")]
    async with aiohttp.ClientSession() as http:
        assert (await rig.portal.post_to_handler(http, handler_url(rig, "by_life"), form))[0] == 200
    await settle(rig)
    assert (await wait_final(rig, [b24_id]))[b24_id] == "delivered"
    assert rig.portal.crm_reads["findbycomm"] == 2
    # The same CODE's ordinary CRM sends stay transactional: no consent read, the usual sender.
    before = rig.portal.crm_reads["contact"]
    b24_id, _, reply = await post(rig, "by_life", "+375291234569", "Your order is ready")
    assert stored(rig, b24_id)["entities"] is None
    await wait_final(rig, [b24_id])
    assert [s.source_addr for s in sent_to(rig, "life", "375291234569")] == ["DemoShop"]
    assert rig.portal.crm_reads["contact"] == before


async def test_consent_is_cached_and_a_deal_is_followed_to_its_contact(rig):
    rig.portal.add_crm_entity("deal", 1541, TITLE="Order", CONTACT_ID=877)
    rig.portal.add_crm_entity("contact", 877, **{CONSENT: True})
    ids = []
    for i in range(3):
        b24_id, _ = await marketing(rig, f"+37529123450{i}", f"Offer {i}", bindings=((2, 1541),))
        ids.append(b24_id)
    assert set((await wait_final(rig, ids)).values()) == {"delivered"}
    assert rig.portal.crm_reads == {"deal": 1, "contact": 1}


async def test_a_number_shared_by_two_contacts_needs_both_to_agree(rig):
    rig.portal.add_crm_entity("contact", 1, phones=["+375291234567"], **{CONSENT: True})
    rig.portal.add_crm_entity("contact", 2, phones=["+375 29 1234567", "+375447654321"], **{CONSENT: False})
    b24_id, _, _ = await post(rig, "promo", "+375291234567", "Offer", bindings=())
    await settle(rig)
    assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
    assert stored(rig, b24_id)["reason"] == f"no consent: {CONSENT} of contact 2 is not set"


async def test_a_robots_document_names_the_lead(rig):
    rig.portal.add_crm_entity("lead", 98, **{CONSENT: True})
    b24_id, _ = await marketing(rig, "+375291234567", "Robot offer", module_id="bizproc", bindings=())
    assert (await wait_final(rig, [b24_id]))[b24_id] == "delivered"
    assert rig.portal.crm_reads["lead"] == 1


async def test_unknown_contact_and_missing_scope_are_refusals_that_say_why(tmp_path):
    rig = await start_rules_rig(tmp_path, scope="messageservice")
    try:
        b24_id, _ = await marketing(rig, "+375291234567", "Offer")
        assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
        assert "insufficient_scope" in stored(rig, b24_id)["reason"]
        assert "crm scope" in stored(rig, b24_id)["reason"]
        rig.portal.scope = "crm,messageservice"
        rig.daemon.consent.forget()
        b24_id, _ = await marketing(rig, "+375291234568", "Offer", contact=404)
        assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
        assert stored(rig, b24_id)["reason"] == "no consent: contact 404 not found"
    finally:
        await stop_rig(rig)


async def test_a_bitrix24_outage_holds_marketing_and_loses_nothing(rig):
    rig.portal.add_crm_entity("contact", 877, **{CONSENT: True})
    rig.portal.overloaded = True  # 503 OVERLOAD_LIMIT for every REST call
    b24_id, _ = await marketing(rig, "+375291234567", "Offer")
    row = stored(rig, b24_id)
    assert (row["status"], row["hold"]) == ("queued", "consent")
    # A restart in the middle keeps the hold and does not send the message early.
    await rig.daemon.stop()
    await start_rules_daemon(rig)
    await asyncio.sleep(0.1)
    assert rig.smscs["life"].submitted == [] and stored(rig, b24_id)["hold"] == "consent"
    rig.portal.overloaded = False
    rig.daemon.holds._retry_at.clear()
    await settle(rig)
    assert (await wait_final(rig, [b24_id]))[b24_id] == "delivered"


# --- stop list -------------------------------------------------------------------------


async def test_stop_list_from_the_cli_refuses_marketing_not_transactional(rig):
    rig.portal.add_crm_entity("contact", 877, **{CONSENT: True})
    conf = rig.tmp / "cli.toml"
    example = (__import__("pathlib").Path(__file__).parents[2] / "config.toml").read_text()
    conf.write_text(example.replace('socket = "/run/smppd/smppd.sock"', f'socket = "{rig.config.daemon.socket_path}"'))
    code = await asyncio.to_thread(cli.main, ["stoplist", "add", "8 029 123-45-67", "-c", str(conf)])
    assert code == 0
    assert await rig.rpc.call("stoplist.list") == {"numbers": [
        {"phone": "+375291234567", "source": "cli", "added_at": pytest.approx(0, abs=1e10)}]}
    b24_id, reply = await marketing(rig, "+375291234567", "Offer")
    assert reply["status"] == "failed" and stored(rig, b24_id)["reason"] == rules.REASON_STOPLIST
    t_id, _, reply = await post(rig, "by_life", "+375291234567", "Your code 5555")
    finals = await wait_final(rig, [b24_id, t_id])
    assert finals == {b24_id: "failed", t_id: "delivered"}
    assert rig.portal.crm_reads["contact"] == 0, "a stopped number costs no REST call"
    assert await asyncio.to_thread(cli.main, ["stoplist", "remove", "+375291234567", "-c", str(conf)]) == 0
    b24_id, _ = await marketing(rig, "+375291234567", "Offer again")
    assert (await wait_final(rig, [b24_id]))[b24_id] == "delivered"
    assert await asyncio.to_thread(cli.main, ["stoplist", "add", "not a number", "-c", str(conf)]) == 1


async def test_a_stop_reply_over_smpp_opts_the_number_out_for_good(rig):
    rig.portal.add_crm_entity("contact", 877, **{CONSENT: True})
    await rig.smscs["life"].deliver_mo("smppd", "375291234567", "DemoShop", "СТОП!".encode("utf-16-be"),
                                       data_coding=8)
    await rig.smscs["life"].deliver_mo("smppd", "375291234568", "DemoShop", b"stop the delivery at 5")
    for _ in range(100):
        if len(rig.daemon.stoplist):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    assert [e["phone"] for e in await rig.daemon.stoplist.entries()] == ["+375291234567"]
    assert (await rig.daemon.stoplist.entries())[0]["source"] == "mo:life"
    await rig.daemon.stop()
    await start_rules_daemon(rig)
    assert "+375291234567" in rig.daemon.stoplist
    b24_id, reply = await marketing(rig, "80291234567", "Offer")
    assert stored(rig, b24_id)["reason"] == rules.REASON_STOPLIST


# --- duplicates -------------------------------------------------------------------------


async def test_a_robot_firing_twice_sends_once_and_both_follow_the_first(rig):
    first, _, r1 = await post(rig, "by_life", "+375291234567", "Your order 42 has shipped")
    again, _, r2 = await post(rig, "by_life", "80291234567", "Your order 42 has shipped")
    other, _, _ = await post(rig, "by_life", "+375291234567", "Your order 43 has shipped")
    assert stored(rig, again)["duplicate_of"] == r1["id"] and stored(rig, first)["duplicate_of"] is None
    finals = await wait_final(rig, [first, again, other])
    assert finals == {first: "delivered", again: "delivered", other: "delivered"}
    assert len(sent_to(rig, "life", "375291234567")) == 2  # order 42 once, order 43 once
    assert rig.portal.messages[again].regressions() == []
    assert rig.daemon.rules.stats.duplicates == 1


async def test_a_repeat_follows_a_first_that_failed_at_the_operator(tmp_path):
    rig = await start_rules_rig(tmp_path, outcomes={"UNDELIV": 1.0})
    try:
        first, _, _ = await post(rig, "by_life", "+375291234567", "Your code 1234")
        again, _, _ = await post(rig, "by_life", "+375291234567", "Your code 1234")
        assert await wait_final(rig, [first, again]) == {first: "undelivered", again: "undelivered"}
        assert len(rig.smscs["life"].submitted) == 1
    finally:
        await stop_rig(rig)


async def test_duplicates_can_fail_instead_and_the_window_ends(tmp_path):
    rig = await start_rules_rig(tmp_path, rules=RulesConfig(duplicate_outcome="failed", duplicate_window=600))
    try:
        first, _, _ = await post(rig, "by_life", "+375291234567", "Your code 1234")
        again, _, reply = await post(rig, "by_life", "+375291234567", "Your code 1234")
        assert reply["status"] == "failed" and stored(rig, again)["reason"].startswith("duplicate of message")
        assert await wait_final(rig, [first, again]) == {first: "delivered", again: "failed"}
        # Outside the window it is a new message: pretend the first is 11 minutes old.
        with db(rig) as conn:
            conn.execute("UPDATE message SET created_at = created_at - 660")
        later, _, reply = await post(rig, "by_life", "+375291234567", "Your code 1234")
        assert reply["status"] == "queued"
        await wait_final(rig, [later])
        assert len(rig.smscs["life"].submitted) == 2
    finally:
        await stop_rig(rig)


# --- quiet hours ------------------------------------------------------------------------


async def test_quiet_hours_hold_marketing_through_a_restart_and_send_it_at_nine(tmp_path):
    clock = WallClock(23, 30)
    rig = await start_rules_rig(tmp_path, clock=clock)
    try:
        rig.portal.add_crm_entity("contact", 877, **{CONSENT: True})
        b24_id, _ = await marketing(rig, "+375291234567", "Morning offer")
        t_id, _, _ = await post(rig, "by_life", "+375291234568", "Your code 1234")  # transactional: no wait
        assert (await wait_final(rig, [t_id]))[t_id] == "delivered"
        row = stored(rig, b24_id)
        assert (row["status"], row["hold"]) == ("queued", "quiet")
        assert row["hold_until"] == WallClock(9).now + 86400  # 09:00 the next day
        assert rig.portal.messages[b24_id].status == "sent"
        await rig.daemon.stop()
        await start_rules_daemon(rig)
        clock.set(8, 59, day=11)
        await settle(rig)
        assert sent_to(rig, "life", "375291234567") == []
        clock.set(9, 0, day=11)
        await settle(rig)
        assert (await wait_final(rig, [b24_id]))[b24_id] == "delivered"
        assert rig.daemon.rules.stats.released == 1
    finally:
        await stop_rig(rig)


# --- text ----------------------------------------------------------------------------------


async def test_a_template_over_one_segment_warns_once_and_is_counted(rig):
    body = "Здравствуйте! Ваш заказ готов к выдаче, ждём вас в магазине с 9 до 21 каждый день."
    with capture_logs() as logs:
        ids = [(await post(rig, "by_life", f"+37529123456{i}", body))[0] for i in range(3)]
    warnings = [e for e in logs if e["event"] == "template_over_one_segment"]
    assert len(warnings) == 1 and warnings[0]["segments"] == 2 and warnings[0]["encoding"] == "ucs2"
    assert warnings[0]["count"] == 1 and warnings[0]["code"] == "by_life"
    assert not any(word in repr(warnings) for word in ("Здравствуйте", "заказ", "магазине"))  # no text
    with capture_logs() as logs:  # another personalised text of the same CODE: counted, not warned
        ids.append((await post(rig, "by_life", "+375291234569", body.replace("9 до 21", "10 до 20")))[0])
    assert [e for e in logs if e["event"] == "template_over_one_segment"] == []
    assert rig.daemon.rules.stats.multi_segment == 4
    await wait_final(rig, ids)
    status = await rig.rpc.call("status")
    assert status["rules"]["multi_segment"] == 4


def test_segment_warnings_once_per_code_per_hour_with_the_count():
    from smppd.ops.logs import LinePacer

    w = LinePacer(every=3600.0)
    assert w.note("by_life", 0.0) == 1
    assert [w.note("by_life", t) for t in (1.0, 2.0, 3599.0)] == [None, None, None]
    assert w.note("by_mts", 10.0) == 1  # CODEs apart
    assert w.note("by_life", 3600.0) == 4  # the three counted since, and this one


async def test_a_stop_during_quiet_hours_cancels_the_held_marketing(tmp_path):
    clock = WallClock(22)
    rig = await start_rules_rig(tmp_path, clock=clock)
    try:
        rig.portal.add_crm_entity("contact", 877, **{CONSENT: True})
        b24_id, _ = await marketing(rig, "+375291234567", "Morning offer")
        assert (await rig.rpc.call("status"))["rules"]["waiting"] == {"quiet": 1}
        await rig.smscs["life"].deliver_mo("smppd", "375291234567", "DemoShop", b"STOP")
        for _ in range(100):
            if "+375291234567" in rig.daemon.stoplist:
                break
            await asyncio.sleep(0.02)
        clock.set(9, 30, day=11)
        await settle(rig)
        assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
        assert stored(rig, b24_id)["reason"] == rules.REASON_STOPLIST
        assert rig.smscs["life"].submitted == []
    finally:
        await stop_rig(rig)


async def test_consent_withdrawn_overnight_stops_the_morning_send(tmp_path):
    clock = WallClock(23)
    rig = await start_rules_rig(tmp_path, clock=clock)
    try:
        rig.portal.add_crm_entity("contact", 877, **{CONSENT: True})
        b24_id, _ = await marketing(rig, "+375291234567", "Morning offer")
        assert stored(rig, b24_id)["hold"] == "quiet"
        rig.portal.add_crm_entity("contact", 877, **{CONSENT: False})  # the manager unticks the box
        rig.daemon.consent.clock = lambda: 10**9  # ten hours later the cached yes has expired
        clock.set(9, 0, day=11)
        await settle(rig)
        assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
        assert rig.portal.crm_reads["contact"] == 2 and rig.smscs["life"].submitted == []
    finally:
        await stop_rig(rig)
