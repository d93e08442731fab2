"""No hold lasts for ever (issue 14 item 11), through the real shim and daemon.

On a portal where the app may not read the CRM, every CRM marketing message used to be
re-checked every 30 s without end while Bitrix24 showed "sent". Permanent REST errors
now fail the message with the reason and tell the admin once what to grant; every hold
has a maximum age; `smppd stuck` says why each message waits; `smppd cancel` ends held ones.
"""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from tests.rigs.e2e_rig import db, post, wait_final
from tests.rigs.rules_rig import WallClock, settle, start_rules_rig, stop_rig
from tests.rigs.process_rig import smppd_cli

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

CONSENT = "UF_CRM_SMS_CONSENT"


def stored(rig, b24_id):
    return db(rig).execute("SELECT * FROM message WHERE b24_id=?", (b24_id,)).fetchone()


async def crm_marketing(rig, to: str, body: str) -> str:
    """What Bitrix24's CRM marketing posts: module_id=sender, nothing bound (found by number)."""
    b24_id, status, reply = await post(rig, "by_life", to, body, module_id="sender")
    assert (status, reply["status"]) == (200, "queued"), reply
    return b24_id


@pytest.mark.parametrize("portal_error, scope, grant", [
    ("insufficient_scope", "messageservice", "crm scope"),
    ("ERROR_METHOD_NOT_FOUND", "crm,messageservice", "enable the CRM"),
    ("ACCESS_DENIED", "crm,messageservice", "grant read access"),
])
async def test_a_permanent_crm_error_fails_the_message_and_tells_the_admin_once(tmp_path, portal_error, scope,
                                                                               grant):
    rig = await start_rules_rig(tmp_path, scope=scope)
    try:
        if portal_error != "insufficient_scope":
            rig.portal.crm_error = portal_error
        with capture_logs() as logs:
            ids = [await crm_marketing(rig, f"+37529123456{i}", f"Newsletter {i}") for i in range(3)]
            await settle(rig)
            finals = await wait_final(rig, ids)
        assert set(finals.values()) == {"failed"}
        for b24_id in ids:
            row = stored(rig, b24_id)
            assert row["hold"] is None and portal_error in row["reason"] and grant in row["reason"]
        warnings = [e for e in logs if e["event"] == "consent_permission_missing"]
        assert len(warnings) == 1 and warnings[0]["error"] == portal_error and grant in warnings[0]["hint"]
        assert not [e for e in logs if e["event"] == "consent_lookup_failed"]  # not taken for an outage
        assert rig.smscs["life"].submitted == []
    finally:
        await stop_rig(rig)


async def test_an_outage_longer_than_hold_max_age_fails_the_message_with_its_reason(tmp_path):
    rig = await start_rules_rig(tmp_path)
    try:
        rig.portal.add_crm_entity("contact", 877, phones=["+375291234567"], **{CONSENT: True})
        rig.portal.overloaded = True  # 503 OVERLOAD_LIMIT for every REST call: an outage, not an answer
        b24_id = await crm_marketing(rig, "+375291234567", "Offer")
        await settle(rig)
        assert stored(rig, b24_id)["hold"] == "consent"
        stuck = await rig.rpc.call("stuck", {"older_than": 0})
        assert [r["waiting"] for r in stuck] == ["consent: reading the CRM (last try failed: OVERLOAD_LIMIT)"]
        # A day later (the store's clock is real: age the row instead of waiting a day).
        db_ = db(rig)
        db_.execute("UPDATE message SET created_at = created_at - 86401 WHERE b24_id=?", (b24_id,))
        db_.commit()
        await settle(rig)
        row = stored(rig, b24_id)
        assert row["status"] == "failed" and row["hold"] is None
        assert row["reason"] == "held over 24 h: consent could not be read (OVERLOAD_LIMIT)"
        rig.portal.overloaded = False  # Bitrix24 back: it learns "failed"; nothing is sent
        rig.daemon.holds._retry_at.clear()
        await settle(rig)
        assert (await wait_final(rig, [b24_id], timeout=30.0))[b24_id] == "failed"
        assert rig.smscs["life"].submitted == []
    finally:
        await stop_rig(rig)


async def test_stuck_says_quiet_hours_and_cancel_ends_a_held_message_for_good(tmp_path):
    clock = WallClock(23, 30)
    rig = await start_rules_rig(tmp_path, clock=clock)
    try:
        rig.portal.add_crm_entity("contact", 877, phones=["+375291234567"], **{CONSENT: True})
        held = await crm_marketing(rig, "+375291234567", "Morning offer")
        other = await crm_marketing(rig, "+375291234567", "Another morning offer")
        await settle(rig)
        assert stored(rig, held)["hold"] == "quiet"
        stuck = {r["id"]: r for r in await rig.rpc.call("stuck", {"older_than": 0})}
        mid = stored(rig, held)["id"]
        assert stuck[mid]["waiting"] == "quiet hours, until 2026-11-11 09:00 +03"
        code, out, err = await smppd_cli(rig, "stuck", "--for", "0s")  # the command an admin runs
        assert code == 0, err
        assert [line for line in out.splitlines() if line.startswith(f"{mid} ")][0].endswith(
            "quiet hours, until 2026-11-11 09:00 +03")
        answer = await rig.rpc.call("cancel", {"ids": [mid]})
        assert answer == {"cancelled": [mid]}
        assert (await wait_final(rig, [held]))[held] == "failed"
        assert stored(rig, held)["hold"] is None and stored(rig, held)["reason"] == "cancelled by admin"
        clock.set(9, 0, day=11)  # quiet hours end: the cancelled one stays cancelled, the other goes
        await settle(rig)
        assert (await wait_final(rig, [other]))[other] == "delivered"
        assert [s.short_message for s in rig.smscs["life"].submitted] == [b"Another morning offer"]
        assert rig.portal.messages[held].status == "failed"
    finally:
        await stop_rig(rig)


async def test_a_quiet_hold_has_a_maximum_age_too(tmp_path):
    from smppd.config import RulesConfig

    clock = WallClock(23, 30)
    rig = await start_rules_rig(tmp_path, clock=clock, rules=RulesConfig(hold_max_age=3600.0))
    try:
        rig.portal.add_crm_entity("contact", 877, phones=["+375291234567"], **{CONSENT: True})
        b24_id = await crm_marketing(rig, "+375291234567", "Morning offer")
        await settle(rig)
        db_ = db(rig)
        db_.execute("UPDATE message SET created_at = created_at - 3601 WHERE b24_id=?", (b24_id,))
        db_.commit()
        await settle(rig)
        assert (await wait_final(rig, [b24_id]))[b24_id] == "failed"
        assert stored(rig, b24_id)["reason"] == "held over 1 h in quiet hours"
    finally:
        await stop_rig(rig)
