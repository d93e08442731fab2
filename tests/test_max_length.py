"""Very long texts (issue 19 item 7): a maximum per route, and a longer message fails with
the reason (stored, pushed to Bitrix24 as `failed`), never refused at the door."""

from __future__ import annotations

import dataclasses

import pytest

from smppd import config, text
from smppd.intake import too_long

from tests.rigs.e2e_rig import db, post, wait_final
from tests.rigs.rules_rig import start_rules_rig, stop_rig
from tests.rigs.config_rig import raw, with_route

CYRILLIC_PART = 67  # UCS-2 characters per part of a long message (8-bit UDH)


def cyrillic(parts: int) -> str:
    return "ю" * (CYRILLIC_PART * parts)


def stored(rig, b24_id):
    return db(rig).execute("SELECT status, reason, segments FROM message WHERE b24_id=?", (b24_id,)).fetchone()


@pytest.mark.integration
async def test_long_texts_fail_with_the_reason_and_10_parts_go_out(tmp_path):
    rig = await start_rules_rig(tmp_path)
    try:
        # Half the issue's text is 75 parts; the issue's 10,000 Cyrillic characters (~60 KB of
        # form) are 150; 20,000 are more than the 255 parts a handset can join at all.
        body = "Ж" * 5_000
        long_id, status, reply = await post(rig, "by_life", "+375291234567", body)
        assert status == 200, reply  # Bitrix24 never reads the answer: the status tells the manager
        assert reply["status"] == "failed"
        issue_id, status, reply = await post(rig, "by_life", "+375291234570", "Ж" * 10_000)
        assert status == 200 and reply["status"] == "failed", reply
        huge_id, status, reply = await post(rig, "by_life", "+375291234571", "Ж" * 20_000)
        assert status == 200 and reply["status"] == "failed", reply
        ten_id, status, reply = await post(rig, "by_life", "+375291234568", cyrillic(10))
        assert status == 200 and reply["status"] == "queued", reply
        eleven_id, status, reply = await post(rig, "by_mts", "+375331234569", cyrillic(10) + "ю")
        assert status == 200 and reply["status"] == "failed", reply

        finals = await wait_final(rig, [long_id, ten_id, eleven_id, issue_id, huge_id])
        assert finals == {long_id: "failed", ten_id: "delivered", eleven_id: "failed", issue_id: "failed",
                          huge_id: "failed"}
        row = stored(rig, long_id)
        assert row["reason"] == "text too long: 75 parts, route life takes at most 10 (max_parts)"
        assert stored(rig, issue_id)["reason"] == "text too long: 150 parts, route life takes at most 10 (max_parts)"
        assert stored(rig, huge_id)["reason"] == "text too long: message needs 299 parts, at most 255 can be joined"
        assert stored(rig, eleven_id)["reason"] == "text too long: 11 parts, route mts takes at most 10 (max_parts)"
        assert stored(rig, ten_id)["segments"] == 10
        # Nothing of the failed ones reached an operator; all ten parts of the other did.
        assert [s.destination_addr for s in rig.smscs["life"].submitted] == ["375291234568"] * 10
        assert rig.smscs["mts"].submitted == []
        assert rig.portal.messages[long_id].history[-1][1] == "failed"
    finally:
        await stop_rig(rig)


def test_route_defaults_come_from_what_each_provider_accepts():
    cfg = config.parse(raw())
    smpp = next(r for r in cfg.routes.values() if isinstance(r, config.SmppRouteConfig))
    assert smpp.max_parts == 10
    ru = config.parse(with_route("ru", {"kind": "smsru", "api_id": "k"})).routes["ru"]
    assert ru.max_parts == 8  # SMS.ru error 205: more than 8 parts
    sc = config.parse(with_route("sc", {"kind": "smsc", "apikey": "k"})).routes["sc"]
    assert sc.max_parts == 15  # SMSC.ru: `mes` of at most 1000 characters, 15 Cyrillic parts


@pytest.mark.parametrize("table", [
    {"kind": "smsru", "api_id": "k", "max_parts": 9},  # the provider refuses it anyway
    {"kind": "smsru", "api_id": "k", "max_parts": 0},
    {"kind": "smsc", "apikey": "k", "max_parts": 16},
    {"kind": "smsc", "apikey": "k", "max_parts": "5"},
])
def test_bad_max_parts_names_the_key(table):
    with pytest.raises(config.ConfigError) as e:
        config.parse(with_route("x", table))
    assert e.value.key == "route.x.max_parts"


def test_smpp_max_parts_is_configurable_and_bounded():
    r = raw()
    name = next(iter(r["route"]))
    r["route"][name]["max_parts"] = 5
    assert config.parse(r).routes[name].max_parts == 5
    r["route"][name]["max_parts"] = 256  # the concatenation UDH counts parts in one octet
    with pytest.raises(config.ConfigError) as e:
        config.parse(r)
    assert e.value.key == f"route.{name}.max_parts"


def test_too_long_per_route_kind():
    ru = config.SmsRuRouteConfig(name="ru", api_id="k")
    assert too_long(ru, "ru", cyrillic(8), text.count_segments(cyrillic(8))) is None
    assert too_long(ru, "ru", cyrillic(9), 9) == "text too long: 9 parts, route ru takes at most 8 (max_parts)"
    sc = config.SmscRouteConfig(name="sc", apikey="k")
    latin = "a" * 1001  # 7 parts: within max_parts, over the provider's character limit
    assert too_long(sc, "sc", latin, text.count_segments(latin)) == \
        "text too long: 1001 characters, SMSC.ru takes at most 1000"
    assert too_long(sc, "sc", "a" * 1000, text.count_segments("a" * 1000)) is None
    smpp = config.SmppRouteConfig(name="op", host="h", port=1, system_id="s", password="p", max_parts=3)
    assert too_long(smpp, "op", cyrillic(3), 3) is None
    # message_payload sends one submit_sm, but the handset is billed the usual parts
    payload = dataclasses.replace(smpp, long_method="payload")
    assert too_long(payload, "op", cyrillic(4), 1) == "text too long: 4 parts, route op takes at most 3 (max_parts)"
