"""The rules as plain values: quiet hours, entities of a post, stop words, consent lookups."""

from __future__ import annotations

import sqlite3
from datetime import datetime

import pytest

from smppd import rules, store as store_mod
from smppd.bitrix24.rest import RestError
from smppd.config import SenderConfig
from smppd.rules.consent import ConsentReader, granted
from smppd.rules import CONTACT, DEAL, LEAD, Entity, QuietHours
from smppd.model import NewMessage
from smppd.store import Store

from tests.rigs.rules_rig import MINSK


def at(hour, minute=0, day=10):
    return datetime(2026, 11, day, hour, minute, tzinfo=MINSK).timestamp()


@pytest.mark.parametrize(
    "now, release",
    [
        (at(20, 59), None),
        (at(21, 0), at(9, 0, day=11)),  # start is inside
        (at(23, 59), at(9, 0, day=11)),
        (at(0, 0, day=11), at(9, 0, day=11)),
        (at(8, 59, day=11), at(9, 0, day=11)),
        (at(9, 0, day=11), None),  # end is outside
    ],
)
def test_quiet_hours_across_midnight(now, release):
    assert QuietHours((21 * 60, 9 * 60), "Europe/Minsk").release_at(now) == release


def test_quiet_hours_within_a_day_and_in_another_zone():
    q = QuietHours((13 * 60, 14 * 60), "Europe/Minsk")
    assert q.release_at(at(12, 59)) is None and q.release_at(at(13, 30)) == at(14, 0)
    moscow_noon_is_minsk_noon = QuietHours((12 * 60, 13 * 60), "Europe/Moscow")  # both UTC+3
    assert moscow_noon_is_minsk_noon.release_at(at(12, 10)) == at(13, 0)
    assert QuietHours(None, "Europe/Minsk").release_at(at(23)) is None


def test_entities_from_bindings_and_from_a_robots_document():
    assert rules.entities([{"owner_type_id": 2, "owner_id": 1541}, {"owner_type_id": 3, "owner_id": 877}]) == (
        Entity(DEAL, 1541), Entity(CONTACT, 877))
    assert rules.entities([], ["crm", "CCrmDocumentLead", "LEAD_98"]) == (Entity(LEAD, 98),)
    assert rules.entities(None, ["crm", "CCrmDocumentContact", "CONTACT_5"]) == (Entity(CONTACT, 5),)
    for junk in ([{"owner_type_id": "3", "owner_id": 1}], [{"owner_type_id": 3, "owner_id": 0}], "x", [None]):
        assert rules.entities(junk) == ()
    assert rules.entities([], ["crm", "CCrmDocumentSmartProcess", "DYNAMIC_1"]) == ()
    assert rules.entities([], ["crm", "CCrmDocumentLead", "LEAD_x"]) == ()


@pytest.mark.parametrize("body, stop", [("STOP", True), (" stop! ", True), ("Стоп", True), ("СТОП.", True),
                                        ("stop the delivery", False), ("не стоп", False), ("", False)])
def test_stop_words_are_whole_messages(body, stop):
    assert rules.is_stop_word(body, {"STOP", "СТОП"}) is stop


def test_marketing_is_the_codes_type_or_crm_marketing():
    t = SenderConfig(code="a", route="r", sender_id="S", name="a")
    m = SenderConfig(code="b", route="r", sender_id="S", name="b", type="marketing")
    assert not rules.is_marketing(t, "crm") and not rules.is_marketing(t, "bizproc")
    assert rules.is_marketing(t, "sender") and rules.is_marketing(m, "crm")


@pytest.mark.parametrize("value, yes", [("1", True), ("Y", True), (True, True), (1, True), ("да", True),
                                        ("0", False), ("N", False), ("", False), (None, False), (False, False),
                                        (["1"], False), (2, False)])
def test_consent_values(value, yes):
    assert granted(value) is yes


class FakeClient:
    """RestClient.batch as the portal answers it: results and errors by key."""

    def __init__(self, rows, errors=None):
        self.rows = rows
        self.errors = errors or {}
        self.batches = []

    async def batch(self, commands):
        self.batches.append(dict(commands))
        ok, bad = {}, {}
        for key, (method, params) in commands.items():
            k = (method, params["values"][0] if "values" in params else params["id"])
            if k in self.errors:
                bad[key] = self.errors[k]
            elif k in self.rows:
                ok[key] = self.rows[k]
            else:
                bad[key] = RestError("", "Not found")
        return ok, bad


async def test_consent_reader_batches_caches_and_expires():
    rows = {("crm.contact.get", i): {"ID": str(i), "UF_CRM_SMS_CONSENT": "1" if i % 2 else "0"} for i in range(120)}
    client = FakeClient(rows)
    now = [0.0]
    reader = ConsentReader(lambda m: client, "UF_CRM_SMS_CONSENT", ttl=60, clock=lambda: now[0])
    msgs = [((Entity(CONTACT, i),), None) for i in range(120)]
    verdicts = await reader.check("m", msgs)
    assert [v.consent for v in verdicts] == [bool(i % 2) for i in range(120)]
    assert [len(b) for b in client.batches] == [50, 50, 20], "one batch call answers 50 entities"
    await reader.check("m", msgs)
    assert len(client.batches) == 3, "cached"
    now[0] = 61
    await reader.check("m", msgs[:1])
    assert len(client.batches) == 4, "expired after the TTL"
    assert (await reader.check("other-portal", msgs[:1]))[0].consent is False
    assert len(client.batches) == 5, "the cache is per portal"


async def test_consent_reader_reasons_and_outages():
    client = FakeClient({("crm.deal.get", 1): {"ID": "1", "CONTACT_ID": "0"},
                         ("crm.contact.get", 5): {"ID": "5"}},
                        errors={("crm.contact.get", 6): RestError("QUERY_LIMIT_EXCEEDED")})
    reader = ConsentReader(lambda m: client, "UF_CRM_SMS_CONSENT", ttl=60)
    v = await reader.check("m", [((Entity(DEAL, 1),), None), ((Entity(CONTACT, 5),), None),
                                 ((Entity(CONTACT, 7),), "+375291234567"), ((Entity(128, 3),), None)])
    assert [x.reason for x in v] == [
        "no consent: deal 1 has no contact",
        "no consent: contact 5 has no field UF_CRM_SMS_CONSENT",
        "no consent: contact 7 not found",
        rules.REASON_NO_BINDING,
    ]
    with pytest.raises(RestError):
        await reader.check("m", [((Entity(CONTACT, 6),), None)])
    with pytest.raises(RestError):
        await ConsentReader(lambda m: None, "F", 60).check("m", [((Entity(CONTACT, 1),), None)])


async def test_consent_by_number_when_nothing_is_bound():
    client = FakeClient({("crm.duplicate.findbycomm", "+375291234567"): {"LEAD": [4], "CONTACT": [8, 9]},
                         ("crm.duplicate.findbycomm", "+375291234568"): [],
                         ("crm.duplicate.findbycomm", "+375291234569"): {"LEAD": [4]},
                         ("crm.contact.get", 8): {"ID": "8", "F": "1"}, ("crm.contact.get", 9): {"ID": "9", "F": "Y"},
                         ("crm.lead.get", 4): {"ID": "4", "F": "0"}})
    reader = ConsentReader(lambda m: client, "F", ttl=60)
    v = await reader.check("m", [((), "+375291234567"), ((), "+375291234568"), ((), "+375291234569"),
                                 ((), "+375291234567")])
    assert [x.consent for x in v] == [True, False, False, True], "contacts win over the lead they came from"
    assert v[1].reason == "no consent: no CRM contact, lead or company has this number"
    assert v[2].reason == "no consent: F of lead 4 is not set"
    assert [sorted(b) for b in client.batches] == [["n0", "n1", "n2"], ["e1_4", "e3_8", "e3_9"]]


async def test_a_version_1_database_migrates_and_keeps_its_open_messages(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("BEGIN")
    for statement in store_mod.MIGRATIONS[1].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute("COMMIT")
    conn.execute("INSERT INTO message (member_id, b24_id, code, route, sender, phone, text, encoding, segments,"
                 " status, created_at, updated_at) VALUES ('m','a','c','life','S','+375291234567','hi','gsm7',1,"
                 "'queued',0,0)")
    conn.execute("INSERT INTO segment (message_id, seq, route, status, updated_at) VALUES (1, 0, 'life', 'queued', 0)")
    conn.commit()
    conn.close()
    s = Store(str(path))
    await s.open()
    try:
        assert [m.id for m in await s.open_messages("life")] == [1]
        held = await s.intake(NewMessage(member_id="m", b24_id="b", code="c", route="life", sender="S",
                                         phone="+375291234568", text="x", encoding="gsm7", segments=1, hold="quiet",
                                         hold_until=10.0))
        assert [m.id for m in await s.open_messages("life")] == [1], "a held message is not loaded for sending"
        assert held.id == 2
    finally:
        await s.close()


@pytest.mark.integration
def test_stoplist_cli_usage_and_unreachable_daemon(capsys, tmp_path):
    from pathlib import Path

    from smppd.cli import main as cli

    text = (Path(__file__).parents[2] / "config.toml").read_text()
    conf = tmp_path / "c.toml"
    conf.write_text(text.replace('socket = "/run/smppd/smppd.sock"', f'socket = "{tmp_path / "none.sock"}"'))
    assert cli.main(["stoplist", "list", "+375291234567", "-c", str(conf)]) == 2
    assert cli.main(["stoplist", "add", "-c", str(conf)]) == 2
    assert cli.main(["stoplist", "add", "+375291234567", "-c", str(conf)]) == 3
    assert "daemon unreachable" in capsys.readouterr().err
