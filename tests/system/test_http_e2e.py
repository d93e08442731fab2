"""HTTP providers end to end: Bitrix24 → shim → daemon → SMS.ru / SMSC.ru → callback via shim → Bitrix24."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest

from smppd.cli.demo import start_rig, stop_rig
from smppd.model import bitrix24_status, smsc_status, smsru_status
from smppd.routes.smsc import split_smsc_id

from tests.rigs.e2e_rig import db, post, smsc_ids, wait_final

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path, seed=5, portal_rate=None, http=True)
    yield r
    await stop_rig(r)


def dlr_url(rig, route: str, key: str | None = None) -> str:
    """The route's callback URL, with its own callback_key (never the handler key)."""
    if key is None:
        key = getattr(rig.config.routes.get(route), "callback_key", "") or "no-such-route-key"
    return f"{rig.shim_url}/dlr/{route}?key={key}"


async def test_smsru_and_smsc_messages_end_with_the_providers_status(rig):
    posted = []
    for i in range(12):
        code = ("by_smsru", "by_smsc")[i % 2]
        b24_id, status, reply = await post(rig, code, f"+37529{7000000 + i}", f"Заказ {i} готов")
        assert status == 200, reply
        posted.append((b24_id, code))
    finals = await wait_final(rig, [b for b, _ in posted])
    ru, sc = rig.http_sims["smsru"], rig.http_sims["smscru"]
    for b24_id, code in posted:
        [pid] = [p for p in smsc_ids(rig, b24_id) if p]
        if code == "by_smsru":
            expected = bitrix24_status(smsru_status(ru.messages[pid].code))
        else:
            expected = bitrix24_status(smsc_status(sc.messages[split_smsc_id(pid)].status))
        assert finals[b24_id] == expected
        assert rig.portal.messages[b24_id].regressions() == []
    assert ru.callbacks_sent > 0 and sc.callbacks_sent > 0  # finished by callback, not by polling
    assert ru.callbacks_failed == 0 and sc.callbacks_failed == 0


async def _post(url: str, data) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=data) as resp:
            return resp.status, await resp.text()


async def test_callback_doors(rig):
    b24_id, status, _ = await post(rig, "by_smsru", "+375291234567", "hello")
    await wait_final(rig, [b24_id])
    api_id = rig.http_sims["smsru"].api_id
    record = "sms_status\n000000-1\n103"
    good_hash = hashlib.sha256((api_id + record).encode()).hexdigest()
    # valid (unknown id: kept pending, still answered 100 so SMS.ru does not retry forever)
    assert await _post(dlr_url(rig, "smsru"), {"data[0]": record, "hash": good_hash}) == (200, "100")
    # forged signature
    assert (await _post(dlr_url(rig, "smsru"), {"data[0]": record, "hash": "0" * 64}))[0] == 403
    # malformed
    bad = "sms_status\nonly-two"
    bad_hash = hashlib.sha256((api_id + bad).encode()).hexdigest()
    assert (await _post(dlr_url(rig, "smsru"), {"data[0]": bad, "hash": bad_hash}))[0] == 400
    assert (await _post(dlr_url(rig, "smscru"), {"status": "1"}))[0] == 400
    # every refusal names its field, as the daemon gave it
    async with aiohttp.ClientSession() as http:
        for route, form, answer in (
                ("smsru", {"data[0]": record, "hash": "0" * 64}, (403, "forbidden", "hash")),
                ("smsru", {"data[0]": record}, (403, "forbidden", "hash")),
                ("smsru", {"hash": good_hash}, (400, "bad_request", "data")),
                ("smsru", {"data[0]": bad, "hash": bad_hash}, (400, "bad_request", "data")),
                ("smscru", {"id": "1", "phone": "375291234567", "status": "x"}, (400, "bad_request", "status")),
                ("smscru", {"id": "1", "status": "1"}, (400, "bad_request", "phone"))):
            async with http.post(dlr_url(rig, route), data=form) as resp:
                body = await resp.json()
                assert (resp.status, body["error"], body["field"]) == answer, (route, form)
    # wrong key, no key, unknown route, an SMPP route: all the same 401
    assert (await _post(dlr_url(rig, "smsru", key="x" * 30), {"data[0]": record}))[0] == 401
    assert (await _post(f"{rig.shim_url}/dlr/smsru", {"data[0]": record}))[0] == 401
    assert (await _post(dlr_url(rig, "nosuch"), {"data[0]": record}))[0] == 401
    assert (await _post(dlr_url(rig, "life"), {"data[0]": record}))[0] == 401
    # the handler key, in every HANDLER post's URL, opens no callback door
    for route in ("smsru", "smscru"):
        assert (await _post(dlr_url(rig, route, key=rig.config.shim.handler_key), {"id": "1", "phone": "1",
                                                                                  "status": "1"}))[0] == 401
    stats = rig.daemon.routes["smsru"].stats
    assert stats["callbacks_rejected"] == 6
    # The pending record is in the store, not lost.
    assert db(rig).execute("SELECT count(*) FROM receipt_pending WHERE smsc_id='000000-1'").fetchone()[0] == 1


async def test_callback_while_the_daemon_is_down_gets_503_so_the_provider_retries(rig):
    await rig.daemon.stop()
    try:
        status, _ = await _post(dlr_url(rig, "smscru"), {"id": "1", "phone": "375291234567", "status": "1"})
        assert status == 503
    finally:
        rig.daemon = None


async def test_status_shows_http_routes(rig):
    status = await rig.rpc.call("status")
    assert status["routes"]["smsru"]["up"] is True and "requests" in status["routes"]["smscru"]


async def test_provider_outage_across_a_daemon_restart_loses_nothing(rig):
    from smppd.cli.demo import start_daemon
    from smppd.sims.smsru import SmsRuSimulator

    sim = rig.http_sims["smsru"]
    port, callback = sim.port, sim.callback_url
    await sim.stop()  # SMS.ru is down
    b24_id, status, _ = await post(rig, "by_smsru", "+375291234567", "during the outage")
    assert status == 200
    await rig.daemon.stop()
    await start_daemon(rig)  # reloads the queued message
    back = SmsRuSimulator(api_id=sim.api_id, outcomes={103: 1.0})
    back.callback_url = callback
    await back.start(port=port)
    rig.http_sims["smsru"] = back
    finals = await wait_final(rig, [b24_id], timeout=20.0)
    assert finals[b24_id] == "delivered" and len(back.messages) == 1


async def test_smsru_callback_as_multipart_with_unnumbered_keys(rig):
    b24_id, status, _ = await post(rig, "by_smsru", "+375291234568", "multipart")
    await wait_final(rig, [b24_id])
    [pid] = [p for p in smsc_ids(rig, b24_id) if p]
    form = aiohttp.FormData()
    form.add_field("data[]", "callcheck_status\n1\n401", content_type="text/plain")
    form.add_field("data[]", f"sms_status\n{pid}\n103\n1700000000", content_type="text/plain")
    signed = rig.http_sims["smsru"].api_id + "callcheck_status\n1\n401" + f"sms_status\n{pid}\n103\n1700000000"
    form.add_field("hash", hashlib.sha256(signed.encode()).hexdigest())
    assert await _post(dlr_url(rig, "smsru"), form) == (200, "100")
