"""smppd contacts (issue 16): the simulated portal's CRM list/update/userfield methods, the
scan and normalize job over the real REST client, the shared budget with the pusher."""

from __future__ import annotations

import asyncio
import json
import random

import aiohttp
import pytest

from smppd.bitrix24.contacts import INVALID_FIELD, ContactsJob, classify, plan_update
from smppd.sims.bitrix24 import SimulatedPortal
from smppd.bitrix24.rest import PRIORITY_BULK, RestClient, RestError
from smppd.model import PortalRecord


def _auth(portal: SimulatedPortal) -> PortalRecord:
    return PortalRecord(**portal.install_auth())


@pytest.fixture
async def crm():
    portal = SimulatedPortal(rate=None, scope="messageservice,crm")
    await portal.start()
    async with aiohttp.ClientSession() as http:
        yield portal, RestClient(http, _auth(portal), rate=None, max_attempts=3, backoff_base=0.01)
    await portal.stop()


# ------------------------------------------------------------------ simulated portal formats


@pytest.mark.integration
async def test_list_pages_with_next_and_total_and_fast_paging_without(crm):
    portal, client = crm
    for i in range(1, 121):
        portal.add_crm_entity("contact", i * 3, phones=["+375291234567"], NAME=f"n{i}")
    first = await client._request("crm.contact.list", "select[0]=ID&start=0")
    assert len(first["result"]) == 50 and first["total"] == 120 and first["next"] == 50
    last = await client._request("crm.contact.list", "select[0]=ID&start=100")
    assert len(last["result"]) == 20 and "next" not in last
    fast = await client._request("crm.contact.list", "order[ID]=ASC&filter[%3EID]=300&select[0]=ID&start=-1")
    assert [r["ID"] for r in fast["result"]] == [str(i * 3) for i in range(101, 121)]
    assert fast["total"] == 0 and "next" not in fast  # huge-data.md: no count with start=-1


@pytest.mark.integration
async def test_multifield_only_when_selected_and_update_by_value_id(crm):
    portal, client = crm
    portal.add_crm_entity("contact", 7, phones=[("80291234567", "MOBILE"), ("+375 44 765-43-21", "WORK")])
    rows = await client.call("crm.contact.list", {"select": ["ID"], "start": -1})
    assert "PHONE" not in rows[0]
    rows = await client.call("crm.contact.list", {"select": ["ID", "PHONE"], "start": -1})
    phones = rows[0]["PHONE"]
    assert {p["VALUE_TYPE"] for p in phones} == {"MOBILE", "WORK"} and all(p["TYPE_ID"] == "PHONE" for p in phones)
    assert await client.call("crm.contact.update", {"id": 7, "fields": {"PHONE": [
        {"ID": phones[0]["ID"], "VALUE": "+375291234567", "VALUE_TYPE": "MOBILE"}]}}) is True
    after = portal.crm["contact"][7]["PHONE"]
    assert after[0] == {**phones[0], "VALUE": "+375291234567"} and after[1] == phones[1]  # the other is untouched
    with pytest.raises(RestError) as e:
        await client.call("crm.contact.update", {"id": 8, "fields": {"NAME": "x"}})
    assert e.value.code == "" and "not found" in e.value.description


@pytest.mark.integration
async def test_userfield_add_prefix_errors_and_list(crm):
    portal, client = crm
    assert await client.call("crm.lead.userfield.list", {"filter": {"FIELD_NAME": INVALID_FIELD}}) == []
    new_id = await client.call("crm.lead.userfield.add", {"fields": {"FIELD_NAME": "SMS_INVALID",
                                                                      "USER_TYPE_ID": "boolean"}})
    assert isinstance(new_id, int)
    listed = await client.call("crm.lead.userfield.list", {"filter": {"FIELD_NAME": INVALID_FIELD}})
    assert listed[0]["FIELD_NAME"] == INVALID_FIELD and listed[0]["ENTITY_ID"] == "CRM_LEAD"
    for fields, text in (({"USER_TYPE_ID": "string"}, "'FIELD_NAME'"),
                         ({"FIELD_NAME": "SMS_INVALID", "USER_TYPE_ID": "boolean"}, "already exists"),
                         ({"FIELD_NAME": "bad-name", "USER_TYPE_ID": "string"}, "invalid characters"),
                         ({"FIELD_NAME": "X"}, "'USER_TYPE_ID'")):
        with pytest.raises(RestError) as e:
            await client.call("crm.lead.userfield.add", {"fields": fields})
        assert text in e.value.description


@pytest.mark.integration
async def test_list_inside_batch_has_result_next_and_total(crm):
    portal, client = crm
    for i in range(1, 61):
        portal.add_crm_entity("company", i, phones=["+375447654321"])
    ok, errors, paging = await client.batch_answer({
        "a": ("crm.company.list", {"select": ["ID"], "start": 0}),
        "b": ("crm.company.list", {"select": ["ID"], "start": -1, "filter": {">ID": 55}, "order": {"ID": "ASC"}}),
        "c": ("crm.nothing.list", {}),
    })
    assert len(ok["a"]) == 50 and paging["a"] == {"next": 50, "total": 60}
    assert [r["ID"] for r in ok["b"]] == ["56", "57", "58", "59", "60"] and paging["b"]["next"] is None
    assert errors["c"].code == "ERROR_METHOD_NOT_FOUND"


# ------------------------------------------------------------------ verdicts


def test_classify_and_plan_update_keep_value_type_and_are_idempotent():
    assert classify("80291234567").e164 == "+375291234567"
    assert classify("80291234567").by_code == "29"
    assert classify("12345").e164 is None
    row = {"ID": "5", "PHONE": [{"ID": "11", "VALUE": "8 (029) 123-45-67", "VALUE_TYPE": "MOBILE"},
                                {"ID": "12", "VALUE": "12345", "VALUE_TYPE": "HOME"},
                                {"ID": "13", "VALUE": "+375447654321", "VALUE_TYPE": "WORK"}]}
    fields, changes = plan_update(row)
    assert fields == {"PHONE": [{"ID": "11", "VALUE": "+375291234567", "VALUE_TYPE": "MOBILE"}], INVALID_FIELD: "1"}
    assert changes == [("8 (029) 123-45-67", "+375291234567")]
    clean = {"ID": "5", INVALID_FIELD: "1", "PHONE": [{"ID": "11", "VALUE": "+375291234567"},
                                                      {"ID": "12", "VALUE": "12345"}]}
    assert plan_update(clean) == ({}, [])
    fixed = {"ID": "5", INVALID_FIELD: "1", "PHONE": [{"ID": "11", "VALUE": "+375291234567"}]}
    assert plan_update(fixed) == ({INVALID_FIELD: "0"}, [])


# ------------------------------------------------------------------ the job


def _messy_base(portal: SimulatedPortal, n: int, seed: int = 3) -> dict[str, int]:
    rnd = random.Random(seed)
    forms = ["+375291234{:03d}", "8029123{:04d}", "375 44 765-{:04d}", "29 12{:05d}", "+7 916 123-{:04d}",
             "12{:03d}", "+375331112{:03d}"]
    expected = {"invalid": 0, "differs": 0}
    next_id = 1
    for i in range(n):
        next_id += rnd.choice((1, 1, 2, 9))  # gaps, as deleted rows leave them
        form = rnd.choice(forms)
        value = form.format(rnd.randrange(1000))
        v = classify(value)
        expected["invalid"] += v.e164 is None
        expected["differs"] += v.e164 is not None and v.e164 != value
        portal.add_crm_entity(rnd.choice(("contact", "contact", "lead", "company")), next_id, phones=[value])
    return expected


@pytest.mark.integration
async def test_scan_reads_every_row_in_windows_and_reports(crm):
    portal, client = crm
    expected = _messy_base(portal, 700)
    portal.add_crm_entity("lead", 99_000, phones=["+375291234001"])  # a far id after a long gap
    portal.add_crm_entity("contact", 99_001, phones=["+375291234001"])
    job = ContactsJob(client)
    report = await job.run()
    assert sum(report.entities.values()) == 702 and report.numbers == 702
    assert len(report.invalid) == expected["invalid"] and report.differs == expected["differs"]
    assert ("lead", 99_000) in dict(report.shared())["+375291234001"]
    assert report.by_prefix["29"] and report.by_country["RU"]
    # a batch reads many pages: far fewer requests than pages of 50
    assert job.progress.requests < 702 / 50
    assert portal.crm_writes == {}  # a scan never writes


@pytest.mark.integration
async def test_normalize_dry_run_writes_nothing_apply_writes_then_is_idempotent(crm):
    portal, client = crm
    expected = _messy_base(portal, 300)
    dry = await ContactsJob(client, normalize=True).run()
    assert len(dry.changes) == expected["differs"] and portal.crm_writes == {} and portal.user_fields == {}
    applied = await ContactsJob(client, normalize=True, apply=True).run()
    assert applied.updated > 0 and not applied.failed
    assert set(portal.user_fields) == {"contact", "lead", "company"}
    for entity, rows in portal.crm.items():
        for row in rows.values():
            for value in row["PHONE"]:
                v = classify(value["VALUE"])
                assert v.e164 is None or v.e164 == value["VALUE"]
                if v.e164 is None:
                    assert row[INVALID_FIELD] == "1"
    writes = sum(portal.crm_writes.values())
    again = await ContactsJob(client, normalize=True, apply=True).run()
    assert again.updated == 0 and not again.changes and sum(portal.crm_writes.values()) == writes
    assert portal.user_fields_added == 3  # not created twice


@pytest.mark.integration
async def test_normalize_resumes_from_saved_progress(crm):
    portal, client = crm
    for i in range(1, 401):
        portal.add_crm_entity("contact", i, phones=[f"80291{i:06d}"])
    saved: dict[str, int] = {}

    async def save(entity: str, after_id: int) -> None:
        saved[entity] = after_id

    job = ContactsJob(client, normalize=True, apply=True, entities=["contact"], save=save)
    task = asyncio.create_task(job.run())
    while not saved.get("contact"):
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    cut = saved["contact"]
    assert 0 < cut < 400
    assert all(portal.crm["contact"][i]["PHONE"][0]["VALUE"].startswith("+") for i in range(1, cut + 1))
    writes = portal.crm_writes["contact"]
    resumed = ContactsJob(client, normalize=True, apply=True, entities=["contact"], resume=saved)
    report = await resumed.run()
    assert report.entities["contact"] == 400 - cut  # the done part is not read again
    assert writes + report.updated == 400
    assert all(portal.crm["contact"][i]["PHONE"][0]["VALUE"].startswith("+") for i in range(1, 401))


@pytest.mark.integration
async def test_rate_limit_slows_the_job_it_does_not_fail_it(crm):
    portal, client = crm
    for i in range(1, 201):
        portal.add_crm_entity("contact", i, phones=["+375291234567"])
    portal.rate, portal.burst = 50.0, 2  # the portal refuses most of what an unlimited client sends
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        await asyncio.sleep(0.05)

    job = ContactsJob(client, sleep=sleep)
    report = await job.run()
    assert report.entities["contact"] == 200
    assert portal.rejected_rate_limited > 0


@pytest.mark.integration
async def test_bulk_calls_leave_the_burst_to_normal_calls():
    """A bulk caller stops at burst - headroom; a normal call then goes at once."""
    portal = SimulatedPortal(rate=2.0, burst=50, scope="messageservice,crm")
    await portal.start()
    try:
        async with aiohttp.ClientSession() as http:
            client = RestClient(http, _auth(portal), rate=2.0, burst=50)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            bulk = [asyncio.create_task(client.call("app.info", priority=PRIORITY_BULK)) for _ in range(45)]
            while sum(t.done() for t in bulk) < 40 and loop.time() - t0 < 10:
                await asyncio.sleep(0.01)
            # 40 at once (burst 50 - headroom 10), then 2 a second: never all 45 this soon
            assert 40 <= sum(t.done() for t in bulk) <= 40 + 2 * (loop.time() - t0) + 1 < 45
            assert client.bulk_waiting
            t1 = loop.time()
            await client.call("app.info")
            assert loop.time() - t1 < 1.0  # a normal call goes at once; a 6th bulk one would wait 2.5 s
            for t in bulk:
                t.cancel()
            await asyncio.gather(*bulk, return_exceptions=True)
    finally:
        await portal.stop()


# ------------------------------------------------------------------ through the real daemon


@pytest.fixture
async def rig(tmp_path):
    from smppd.cli.demo import stop_rig
    from tests.rigs.rules_rig import start_rules_rig

    rig = await start_rules_rig(tmp_path)
    yield rig
    await stop_rig(rig)


async def _cli(rig, action: str, *extra: str) -> tuple[int, str, str]:
    import argparse
    import io

    from smppd.cli.contacts import drive

    args = argparse.Namespace(json="--json" in extra, csv="--csv" in extra, apply="--apply" in extra)
    params = {"action": action, "apply": args.apply, "entities": ["contact", "lead", "company"]}
    for item in extra:
        if item.startswith("portal="):
            params["portal"] = item.removeprefix("portal=")
    out, err = io.StringIO(), io.StringIO()
    code = await drive(rig.config.daemon.socket_path, params, args, out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.integration
async def test_cli_scan_normalize_apply_idempotent_through_the_daemon(rig):
    import csv
    import io
    import json

    expected = _messy_base(rig.portal, 250)
    code, out, _ = await _cli(rig, "scan", "--json")
    report = json.loads(out)
    assert code == 0 and report["state"] == "done"
    assert report["summary"]["invalid"] == expected["invalid"] == len(report["invalid"])
    assert report["summary"]["differs_from_e164"] == expected["differs"]

    code, out, _ = await _cli(rig, "normalize")  # dry run: a table, nothing written
    assert code == 0 and "dry run" in out and sum(rig.portal.crm_writes.values()) == 0

    code, out, _ = await _cli(rig, "normalize", "--apply", "--csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and sum(1 for r in rows if r[0] == "changes") == expected["differs"]
    assert await rig.daemon.store.contacts_progress(rig.portal.member_id) == {}  # done: nothing to resume

    code, out, _ = await _cli(rig, "normalize", "--apply", "--json")
    assert code == 0 and json.loads(out)["summary"]["changes"] == 0 and json.loads(out)["summary"]["updated"] == 0

    code, _, err = await _cli(rig, "scan", "portal=nope")
    assert code == 2 and "no installed portal" in err


@pytest.mark.integration
async def test_a_normalize_cut_short_resumes_from_the_store(rig):
    for i in range(1, 301):
        rig.portal.add_crm_entity("contact", i, phones=[f"80291{i:06d}"])
    member = rig.portal.member_id
    await rig.daemon.store.contacts_progress_save(member, "contact", 200)  # as a killed run leaves it
    code, out, err = await _cli(rig, "normalize", "--apply", "--json")
    assert code == 0 and "resuming" in err and "contact after id 200" in err
    assert json.loads(out)["summary"]["entities"] == {"contact": 100}
    assert rig.portal.crm["contact"][150]["PHONE"][0]["VALUE"] == "80291000150"  # before the cut: not read again
    assert rig.portal.crm["contact"][250]["PHONE"][0]["VALUE"] == "+375291000250"


@pytest.mark.integration
async def test_cost_prices_the_crm_numbers_per_route_without_sending(rig):
    import argparse
    import dataclasses
    import io

    from smppd.cli.contacts import drive_cost
    from smppd.sims.smsc import SmscSimulator
    from smppd.sims.smsru import SmsRuSimulator

    from tests.rigs.config_rig import cfg_with

    for i in range(1, 151):
        rig.portal.add_crm_entity("contact", i, phones=[f"80291{i:06d}"])
    rig.portal.add_crm_entity("lead", 1, phones=["12345", "+375291000001"])  # invalid; shared with contact 1
    ru, sc = SmsRuSimulator(refuse={"375291000007": 207}), SmscSimulator(bad_numbers=frozenset({"375291000008"}))
    await ru.start()
    await sc.start()
    try:
        cfg = dataclasses.replace(cfg_with(ru.base_url, sc.base_url + "sys/"), daemon=rig.config.daemon)
        params = {"action": "scan", "apply": False, "entities": ["contact", "lead", "company"]}
        for code, sim in (("by_ru", ru), ("by_sc", sc)):
            out, err = io.StringIO(), io.StringIO()
            args = argparse.Namespace(code=code, text="Здравствуйте! " * 10, json=True)
            assert await drive_cost(cfg, params, args, out, err) == 0, err.getvalue()
            answer = json.loads(out.getvalue())
            assert answer["numbers"] == 150 and answer["invalid_in_crm"] == 1 and answer["refused"] == 1
            assert answer["sms"] == 149 * 3 and answer["cost"] == pytest.approx(149 * 3 * sim.price)
            assert len(sim.requests) == 2  # 100 numbers a request
            assert not sim.messages  # nothing was sent
        assert all(f.get("op") == "1" and f.get("cost") == "1" for _, f in sc.requests)
    finally:
        await ru.stop()
        await sc.stop()


@pytest.fixture
async def http_rig(tmp_path):
    from smppd.cli.demo import start_rig, stop_rig

    rig = await start_rig(tmp_path, portal_rate=None, http=True)
    rig.portal.scope = "crm,messageservice"
    rig.daemon.hlr_poll = 0.05
    yield rig
    await stop_rig(rig)
    for sim in rig.http_sims.values():
        await sim.stop()


@pytest.mark.integration
async def test_hlr_asks_checks_writes_fields_and_caches(http_rig):
    import argparse
    import io

    from smppd.cli.contacts import drive_hlr

    rig = http_rig
    sim = rig.http_sims["smscru"]
    sim.hlr_unreachable = frozenset({"375291000003"})
    for i in range(1, 6):
        rig.portal.add_crm_entity("contact", i, phones=[f"80291{i:06d}"])
    rig.portal.add_crm_entity("lead", 9, phones=["+375291000001", "bad"])  # shares contact 1's number
    params = {"action": "hlr", "apply": False, "entities": ["contact", "lead", "company"], "code": "by_smsc",
              "cache_ttl": 86400.0}
    socket = rig.config.daemon.socket_path

    asked: list[str] = []
    out, err = io.StringIO(), io.StringIO()
    code = await drive_hlr(socket, params, argparse.Namespace(yes=False, json=True), out, err,
                           ask=lambda prompt: asked.append(prompt) or "n")
    assert code == 1 and asked and "5 numbers to check" in err.getvalue() and "price 2.00" in err.getvalue()
    assert not [m for m in sim.messages.values() if m.hlr]  # declined: nothing paid
    assert all(f.get("cost") == "1" for s, f in sim.requests if s == "send")

    out, err = io.StringIO(), io.StringIO()
    assert await drive_hlr(socket, params, argparse.Namespace(yes=True, json=True), out, err) == 0, err.getvalue()
    summary = json.loads(out.getvalue())
    assert summary["hlr"]["checked"] == 5 and summary["hlr"]["reachable"] == 4
    contact3, contact1, lead = rig.portal.crm["contact"][3], rig.portal.crm["contact"][1], rig.portal.crm["lead"][9]
    assert contact3["UF_CRM_SMS_REACHABLE"] == "0"
    assert contact1["UF_CRM_SMS_REACHABLE"] == "1" and contact1["UF_CRM_OPERATOR"] == "A1"
    assert contact1["UF_CRM_REGION"] == "Belarus" and lead["UF_CRM_OPERATOR"] == "A1"
    assert {"UF_CRM_OPERATOR", "UF_CRM_REGION", "UF_CRM_SMS_REACHABLE"} <= set(rig.portal.user_fields["contact"])
    paid = len([m for m in sim.messages.values() if m.hlr])
    assert paid == 5

    out, err = io.StringIO(), io.StringIO()  # a rerun within the TTL pays nothing
    assert await drive_hlr(socket, params, argparse.Namespace(yes=False, json=True), out, err,
                           ask=lambda prompt: pytest.fail("nothing to pay: no question")) == 0
    assert json.loads(out.getvalue())["hlr"]["cached"] == 5
    assert len([m for m in sim.messages.values() if m.hlr]) == paid


@pytest.mark.integration
async def test_hlr_refuses_a_code_that_is_not_smsc(http_rig):
    import argparse
    import io

    from smppd.cli.contacts import drive_hlr

    err = io.StringIO()
    params = {"action": "hlr", "apply": False, "entities": ["contact"], "code": "by_smsru", "cache_ttl": 0}
    assert await drive_hlr(http_rig.config.daemon.socket_path, params, argparse.Namespace(yes=True, json=False),
                           io.StringIO(), err) == 2
    assert "not SMSC.ru" in err.getvalue()


@pytest.mark.integration
async def test_demo_contacts_shows_scan_then_normalize_then_nothing_left(capsys):
    from smppd.cli import main as cli
    from smppd.cli.demo import _contacts_demo

    assert cli._parser().parse_args(["demo", "--contacts", "300"]).contacts == 300
    # the coroutine, not cli.main: main reconfigures logging for the whole test session
    assert await _contacts_demo(300, 5)
    out = capsys.readouterr().out
    assert out.count("$ smppd contacts") == 3 and "entities read     360" in out
    applied, again = out.split("$ smppd contacts normalize")[1:]
    assert "entities updated" in applied and "changes           0 numbers" in again


@pytest.mark.integration
async def test_preferred_channel_is_written_and_skips_viber_when_asked(http_rig):
    import dataclasses

    from smppd.cli.demo import handler_url

    rig = http_rig
    rig.daemon.channels._flush = 0.05
    sim = rig.http_sims["smscru_viber"]
    sim.viber_users = frozenset({"375291000001"})
    rig.portal.add_crm_entity("contact", 1, phones=["+375291000009"])  # no Viber: falls back to SMS
    rig.portal.add_crm_entity("contact", 2, phones=["8 029 100-00-01"])  # Viber delivers
    async with aiohttp.ClientSession() as http:
        async def send(to: str, text: str = "Ваш заказ готов") -> str:
            b24_id, form = rig.portal.create_message("by_viber", to, text)
            status, _ = await rig.portal.post_to_handler(http, handler_url(rig, "by_viber"), form)
            assert status == 200
            return b24_id

        ids = [await send("+375291000009"), await send("+375291000001")]
        for _ in range(400):
            c1, c2 = rig.portal.crm["contact"][1], rig.portal.crm["contact"][2]
            if c1.get("UF_CRM_SMS_CHANNEL") and c2.get("UF_CRM_SMS_CHANNEL") and all(
                    rig.portal.messages[b].status == "delivered" for b in ids):
                break
            await asyncio.sleep(0.05)
        assert (c1.get("UF_CRM_SMS_CHANNEL"), c2.get("UF_CRM_SMS_CHANNEL")) == ("sms", "viber")
        assert all(rig.portal.messages[b].status == "delivered" for b in ids)
        assert "UF_CRM_SMS_CHANNEL" in rig.portal.user_fields["contact"]

        route = rig.daemon.routes["smscru_viber"]
        route.cfg = dataclasses.replace(route.cfg, skip_viber_for_sms_contacts=True)
        sent_before = len(sim.requests)
        third = await send("+375291000009", "Ваш заказ доставлен")
        for _ in range(200):
            if rig.portal.messages[third].status == "delivered":
                break
            await asyncio.sleep(0.05)
        sends = [f for script, f in sim.requests[sent_before:] if script == "send" and "375291000009" in f["phones"]]
        assert sends and all(f.get("viber") != "1" for f in sends)  # straight to SMS, no Viber wait
        assert route.stats["viber_skipped"] == 1
    writes = sum(rig.portal.crm_writes.values())
    await asyncio.sleep(0.2)
    assert sum(rig.portal.crm_writes.values()) == writes  # the same ending again is not written again


def test_filter_argument_keeps_the_operator_with_the_field():
    from smppd.cli.contacts import _split_filter

    assert _split_filter("TYPE_ID=CLIENT") == ("TYPE_ID", "CLIENT")
    assert _split_filter(">=DATE_CREATE=2026-01-01") == (">=DATE_CREATE", "2026-01-01")


@pytest.mark.integration
async def test_filter_narrows_the_job_and_id_is_refused(crm):
    portal, client = crm
    for i in range(1, 201):
        portal.add_crm_entity("contact", i, phones=["+375291234567"], TYPE_ID="CLIENT" if i % 4 == 0 else "OTHER")
    report = await ContactsJob(client, entities=["contact"], where={"TYPE_ID": "CLIENT"}).run()
    assert report.entities["contact"] == 50

    from smppd.bitrix24.contacts import ContactsJobs, RpcRefused

    jobs = ContactsJobs(lambda: {"m": client}, store=None)  # type: ignore[arg-type]
    with pytest.raises(RpcRefused) as e:
        await jobs.start({"action": "scan", "filter": {">ID": "5"}})
    assert e.value.field == "filter"


@pytest.mark.integration
async def test_pusher_spaces_partial_batches_while_a_bulk_job_waits(tmp_path, monkeypatch):
    """Few updates at a time go out at most every PARTIAL_GAP_UNDER_BULK while a bulk job
    waits (so it gets request slots), and at once again when none waits."""
    from smppd.bitrix24 import pusher as pusher_mod
    from smppd.bitrix24.pusher import StatusPusher
    from smppd.model import Status
    from smppd.model import NewMessage
    from smppd.store import Store

    made = iter(range(10_000))

    async def accepted_and_delivered(portal, store, n):  # type: ignore[no-untyped-def]
        for _ in range(n):
            i = next(made)
            b24_id, _ = portal.create_message("by_life", "+375291234567", f"m{i}")
            r = await store.intake(NewMessage(portal.member_id, b24_id, "by_life", "life", "Shop",
                                              "+375291234567", f"m{i}", "gsm7", 1))
            await store.segment_accepted(r.id, 0, f"Q{i}")
            await store.apply_receipt("life", f"Q{i}", Status.DELIVERED, "DELIVRD")

    monkeypatch.setattr(pusher_mod, "PARTIAL_GAP_UNDER_BULK", 0.4)
    portal = SimulatedPortal(rate=None)
    await portal.start()
    store = Store(str(tmp_path / "p.db"))
    await store.open()
    async with aiohttp.ClientSession() as http:
        client = RestClient(http, _auth(portal), rate=None)
        pusher = StatusPusher(store, client)
        sent: list[float] = []
        push = pusher.push

        async def timed(items):  # type: ignore[no-untyped-def]
            sent.append(asyncio.get_running_loop().time())
            await push(items)

        pusher.push = timed  # type: ignore[method-assign]
        task = asyncio.create_task(pusher.run())
        client._bucket.bulk_waiting = 1  # a contacts job waits for budget
        for _ in range(4):
            await accepted_and_delivered(portal, store, 2)
            await asyncio.sleep(0.15)
        await asyncio.sleep(0.5)
        gaps = [b - a for a, b in zip(sent, sent[1:])]
        assert len(sent) >= 2 and all(g >= 0.39 for g in gaps), gaps
        client._bucket.bulk_waiting = 0
        monkeypatch.setattr(pusher_mod, "PARTIAL_GAP_UNDER_BULK", 30.0)
        before = len(sent)
        await accepted_and_delivered(portal, store, 1)
        for _ in range(30):
            if len(sent) > before:
                break
            await asyncio.sleep(0.1)
        assert len(sent) == before + 1  # nobody waits: not held for the (now 30 s) gap
        pusher.stop()
        await task
    assert all(m.status == "delivered" for m in portal.messages.values())
    await store.close()
    await portal.stop()


@pytest.mark.integration
async def test_smsc_hlr_sends_every_hundred_then_polls_them_together():
    from smppd.bitrix24.contacts import SmscHlr
    from smppd.config import SmscRouteConfig
    from smppd.routes.provider_client import ProviderClient
    from smppd.routes.smsc import auth
    from smppd.sims.smsc import SmscSimulator

    sim = SmscSimulator(hlr_unreachable=frozenset({"375291000007", "375291000207"}), deliver_after=0.05)
    await sim.start()
    cfg = SmscRouteConfig(name="sc", login=sim.login, password=sim.psw, base_url=sim.base_url + "sys/")
    route = ProviderClient(cfg)
    try:
        hlr = SmscHlr(route, auth(cfg), poll=0.1, timeout=10)
        numbers = [f"+375291{i:06d}" for i in range(250)]
        assert await hlr.price(numbers) == pytest.approx(250 * sim.price)
        counted: list[int] = []
        results = await hlr.check(numbers, counted.append)
        assert len(results) == 250 == sum(counted)
        assert {n for n, r in results.items() if not r.reachable} == {"+375291000007", "+375291000207"}
        assert results["+375291000001"].operator == "A1"
        sends = [f for script, f in sim.requests if script == "send" and f.get("cost") != "1"]
        assert len(sends) == 3 and all(f["hlr"] == "1" for f in sends)
    finally:
        await route.close()
        await sim.stop()


@pytest.mark.integration
async def test_without_the_crm_scope_the_job_fails_with_the_fix(rig):
    rig.portal.scope = "messageservice"
    rig.portal.add_crm_entity("contact", 1, phones=["+375291234567"])
    code, _, err = await _cli(rig, "scan")
    assert code == 1 and "insufficient_scope" in err and "crm scope" in err


@pytest.mark.integration
async def test_operating_time_limit_429_slows_the_job_it_does_not_fail_it(crm):
    portal, client = crm
    for i in range(1, 101):
        portal.add_crm_entity("contact", i, phones=["80291234567"])
    portal.block_method("batch", 1.0)  # 429 OPERATION_TIME_LIMIT until a second from now
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    report = await ContactsJob(client, normalize=True, apply=True, entities=["contact"]).run()
    assert report.updated == 100 and loop.time() - t0 >= 0.5
