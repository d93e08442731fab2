"""SMS.ru: the wire format (send, status, cost, callback), the route against the simulator."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from smppd.config import SmsRuRouteConfig
from smppd.model import SMSRU_STATUS, Status, smsru_status, UnknownProviderStatus
from smppd.routes import smsru
from smppd.http_client import Ambiguous
from smppd.routes.answers import Accepted, ProviderError, Refused, Retry
from smppd.routes.http import BadCallback, ForgedCallback
from smppd.routes.smsru import SmsRuRoute
from smppd.sims.smsru import SmsRuSimulator

from tests.rigs.http_rig import add_message, status_of, wait_status
from tests.rigs.http_rig import store_clock  # noqa: F401  (the fixture, by import: a clock moved by hand)

API_ID = "sim-api-id"


def cfg(**kw) -> SmsRuRouteConfig:
    base = dict(name="smsru", api_id=API_ID, retry_min=0.01, retry_max=0.05, timeout=2.0)
    base.update(kw)
    return SmsRuRouteConfig(**base)


# --- mapping ------------------------------------------------------------------------


@pytest.mark.parametrize("code,status", [
    (100, Status.ACCEPTED), (101, Status.ACCEPTED), (102, Status.ACCEPTED), (103, Status.DELIVERED),
    (104, Status.EXPIRED), (105, Status.UNDELIVERED), (106, Status.UNDELIVERED), (107, Status.UNDELIVERED),
    (108, Status.UNDELIVERED), (110, Status.DELIVERED), (150, Status.UNDELIVERED),
])
def test_every_status_code_maps(code, status):
    assert smsru_status(code) is status


def test_unknown_and_not_found_codes_are_not_guessed():
    assert set(SMSRU_STATUS) == {100, 101, 102, 103, 104, 105, 106, 107, 108, 110, 150}
    for code in (-1, 109, 999):
        with pytest.raises(UnknownProviderStatus):
            smsru_status(code)


@pytest.mark.parametrize("code,delay,account", [
    (220, 0.01, False), (500, 0.01, False), (206, 0.05, False),  # retry later
    (201, 0.05, True), (200, 0.05, True), (301, 0.05, True),  # the admin fixes it, the message waits
    (204, None, True), (221, None, True),  # sender not approved: this message cannot go
    (202, None, False), (207, None, False), (215, None, False), (203, None, False),
])
def test_request_errors_are_classified(code, delay, account):
    with pytest.raises(ProviderError) as e:
        smsru.parse_send({"status": "ERROR", "status_code": code, "status_text": "x"}, ["375291234567"], cfg())
    assert e.value.retry_after == delay
    assert e.value.account is account


# --- send -----------------------------------------------------------------------------


def test_send_form_has_the_documented_fields():
    form = smsru.send_form(cfg(ttl=60, translit=True, test=True), ["375291234567", "375331234567"], "Привет",
                           "DemoShop")
    assert form == {"api_id": API_ID, "to": "375291234567,375331234567", "msg": "Привет", "json": "1",
                    "from": "DemoShop", "ttl": "60", "translit": "1", "test": "1"}
    with pytest.raises(ValueError):
        smsru.send_form(cfg(), [str(375290000000 + i) for i in range(101)], "x", "S")


def test_accepted_and_refused_numbers_in_one_answer_get_their_own_outcome():
    body = {"status": "OK", "status_code": 100, "balance": "4122.56",
            "sms": {"375291234567": {"status": "OK", "status_code": 100, "sms_id": "000000-10000000"},
                    "375441234567": {"status": "ERROR", "status_code": 207, "status_text": "no route"},
                    "375331234567": {"status": "ERROR", "status_code": 206, "status_text": "daily limit"}}}
    out = smsru.parse_send(body, ["375291234567", "375441234567", "375331234567", "375251234567"], cfg())
    assert out["375291234567"] == Accepted("000000-10000000")
    assert out["375441234567"] == Refused(Status.FAILED, "smsru 207: no route")
    assert isinstance(out["375331234567"], Retry)
    assert "375251234567" not in out  # not in the answer: retried by the route, never dropped


def test_garbage_answers_are_ambiguous_not_crashes():
    for body in ([], "OK", {"status": "OK"}, {"status": "OK", "sms": {"1": {"status_code": "x"}}}):
        with pytest.raises(Ambiguous):
            smsru.parse_send(body, ["1"], cfg())


# --- callback ---------------------------------------------------------------------------


def _signed(records: list[str], api_id: str = API_ID, *, keys: list[str] | None = None) -> list[tuple[str, str]]:
    keys = keys or [f"data[{i}]" for i in range(len(records))]
    form = list(zip(keys, records))
    form.append(("hash", hashlib.sha256((api_id + "".join(records)).encode()).hexdigest()))
    return form


def test_callback_records_are_read_in_order_and_hash_checked():
    records = ["sms_status\n000000-1\n103\n1700000000", "callcheck_status\n77\n401",
               "sms_status\n000000-2\n104"]
    # n starting at 1, keys out of order: sorted by n before hashing and applying.
    form = _signed(records, keys=["data[1]", "data[2]", "data[3]"])
    form = [form[2], form[0], form[1], form[3]]
    out = smsru.parse_callback(form, API_ID)
    assert [(r.sms_id, r.code, r.ts) for r in out] == [("000000-1", 103, 1700000000), ("000000-2", 104, None)]


def test_callback_without_hash_or_with_a_wrong_one_is_refused():
    """Issue 18 §5: with the URL key alone, an unsigned record marked any message delivered."""
    with pytest.raises(ForgedCallback, match="hash: missing"):
        smsru.parse_callback([("data[]", "sms_status\n1\n103")], API_ID)
    assert len(smsru.parse_callback([("data[]", "sms_status\n1\n103")], "")) == 1  # no api_id: nothing to check with
    with pytest.raises(ForgedCallback):
        smsru.parse_callback(_signed(["sms_status\n1\n103"], api_id="someone-else"), API_ID)


@pytest.mark.parametrize("form", [[], [("foo", "bar")], _signed(["sms_status\n1"]),
                                  _signed(["sms_status\n1\nabc"])])
def test_malformed_callbacks_are_refused(form):
    with pytest.raises(BadCallback):
        smsru.parse_callback(form, API_ID)


# --- the route against the simulator -----------------------------------------------------


@pytest.fixture
async def sim():
    s = SmsRuSimulator(api_id=API_ID, deliver_after=0.05)
    await s.start()
    yield s
    await s.stop()


async def _run(route: SmsRuRoute):
    task = asyncio.create_task(route.run())
    return task


async def _stop(route: SmsRuRoute, task: asyncio.Task) -> None:
    await route.stop(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.integration
async def test_send_then_poll_brings_the_final_status(sim, store):
    route = SmsRuRoute(cfg(base_url=sim.base_url, poll_after=300.0), store)
    m = await add_message(store, "smsru")
    route.enqueue(m)
    task = await _run(route)
    try:
        row = await wait_status(store, m.id, {Status.ACCEPTED})
        pid = row["segment_rows"][0]["smsc_id"]
        assert sim.messages[pid].phone == "375291234567"
        assert sim.requests[0][1]["to"] == "375291234567" and sim.requests[0][1]["json"] == "1"
        await asyncio.sleep(0.1)  # the simulator has a final status; no callback URL is set
        assert await route.poll_once() == 0  # not due yet: 5 minutes by default
        store.clock.advance(301)
        assert await route.poll_once() == 1
        st, row = await status_of(store, m.id)
        assert st is Status(smsru_status(sim.messages[pid].code))
        assert sim.requests[-1][0] == "sms/status" and sim.requests[-1][1]["sms_id"] == pid
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_poll_of_a_message_still_in_transit_asks_again_a_minute_later(sim, store):
    sim.deliver_after = 60.0
    route = SmsRuRoute(cfg(base_url=sim.base_url), store)
    m = await add_message(store, "smsru")
    route.enqueue(m)
    task = await _run(route)
    try:
        await wait_status(store, m.id, {Status.ACCEPTED})
        store.clock.advance(301)
        assert await route.poll_once() == 1
        assert await route.poll_once() == 0
        store.clock.advance(59)
        assert await route.poll_once() == 0
        store.clock.advance(2)
        assert await route.poll_once() == 1
        assert (await status_of(store, m.id))[0] is Status.ACCEPTED
        # after poll_for (3 days) the provider is not asked any more
        store.clock.advance(3 * 86400)
        assert await route.poll_once() == 1 and route.stats["poll_given_up"] == 1
        store.clock.advance(86400)
        assert await route.poll_once() == 0
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_refused_number_fails_its_message_only(sim, store):
    sim.refuse["375447654321"] = 207
    route = SmsRuRoute(cfg(base_url=sim.base_url, batch_size=10, batch_interval=0.05), store)
    good = await add_message(store, "smsru", "+375291234567")
    bad = await add_message(store, "smsru", "+375447654321")
    route.enqueue(good)
    route.enqueue(bad)
    task = await _run(route)
    try:
        await wait_status(store, good.id, {Status.ACCEPTED})
        row = await wait_status(store, bad.id, {Status.FAILED})
        assert "207" in row["reason"]
        sends = [f for name, f in sim.requests if name == "sms/send"]
        assert len(sends) == 1 and sends[0]["to"] == "375291234567,375447654321"  # one request
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_outage_5xx_and_temporary_errors_are_retried_then_sent_once(sim, store):
    sim.fail_next("http500", "sms/send", times=2)
    sim.fail_next("json", "sms/send", body={"status": "ERROR", "status_code": 220, "status_text": "later"})
    route = SmsRuRoute(cfg(base_url=sim.base_url), store)
    m = await add_message(store, "smsru")
    route.enqueue(m)
    task = await _run(route)
    try:
        await wait_status(store, m.id, {Status.ACCEPTED})
        assert len(sim.messages) == 1  # sent exactly once
        assert route.stats["retries"] >= 3
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_provider_down_keeps_the_message_queued_and_sends_when_back(store, sim):
    port = sim.port
    await sim.stop()
    route = SmsRuRoute(cfg(base_url=f"http://127.0.0.1:{port}/"), store)
    m = await add_message(store, "smsru")
    route.enqueue(m)
    task = await _run(route)
    try:
        await asyncio.sleep(0.2)
        assert (await status_of(store, m.id))[0] is Status.QUEUED
        assert route.stats["retries"] >= 2
        back = SmsRuSimulator(api_id=API_ID)
        await back.start(port=port)
        try:
            await wait_status(store, m.id, {Status.ACCEPTED})
            assert len(back.messages) == 1
        finally:
            await back.stop()
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_account_error_is_counted_and_the_message_waits(sim, store):
    sim.balance = 0.0
    route = SmsRuRoute(cfg(base_url=sim.base_url, retry_max=0.05), store)
    m = await add_message(store, "smsru")
    route.enqueue(m)
    task = await _run(route)
    try:
        await asyncio.sleep(0.15)
        assert (await status_of(store, m.id))[0] is Status.QUEUED
        assert route.stats["account_errors"] >= 1
        sim.balance = 100.0
        await wait_status(store, m.id, {Status.ACCEPTED})
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_unapproved_sender_fails_the_message(sim, store):
    route = SmsRuRoute(cfg(base_url=sim.base_url), store)
    m = await add_message(store, "smsru", sender="Unknown")
    route.enqueue(m)
    task = await _run(route)
    try:
        row = await wait_status(store, m.id, {Status.FAILED})
        assert "204" in row["reason"] and route.stats["account_errors"] == 1
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_lost_answer_is_resent_and_counted(sim, store):
    sim.fail_next("drop", "sms/send")
    route = SmsRuRoute(cfg(base_url=sim.base_url), store)
    m = await add_message(store, "smsru")
    route.enqueue(m)
    task = await _run(route)
    try:
        await wait_status(store, m.id, {Status.ACCEPTED})
        # SMS.ru cannot be asked without its id: at-least-once, counted.
        assert route.stats["ambiguous"] == 1 and route.stats["ambiguous_resent"] == 1
        assert len(sim.messages) == 2
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_callback_applies_and_early_callback_waits_for_the_send_answer(sim, store):
    route = SmsRuRoute(cfg(base_url=sim.base_url), store)
    m = await add_message(store, "smsru")
    # A callback for an id we do not know yet is kept, then applied on accept.
    assert await route.callback(_signed(["sms_status\nX-1\n103"])) == "100"
    assert route.stats["receipts_unmatched"] == 1
    await store.provider_accepted(m.id, "X-1", poll_at=store.clock() + 300, channel="sms")
    st, row = await status_of(store, m.id)
    assert st is Status.DELIVERED
    # A late "in transit" after delivered changes nothing (never backwards).
    await route.callback(_signed(["sms_status\nX-1\n102"]))
    assert (await status_of(store, m.id))[0] is Status.DELIVERED


@pytest.mark.integration
async def test_receipts_for_unknown_ids_are_bounded_in_number_and_age(sim, store):
    """Issue 18 §5: callbacks for ids not known yet are kept (the send answer may
    be late), but at most ``unknown_receipts_max`` per route and for at most
    ``unknown_receipts_ttl`` seconds; an older one is never applied."""
    route = SmsRuRoute(cfg(base_url=sim.base_url, unknown_receipts_max=3, unknown_receipts_ttl=60.0), store)
    for i in range(10):
        await route.callback(_signed([f"sms_status\nF-{i}\n103"]))
    counts = await store.counts()
    assert (counts["receipts_pending"], counts["receipts_unmatched"]) == (3, 0)  # bounded on disk: gone
    assert route.stats["receipts_unmatched"] == 10  # each counted as it came
    # the newest three are kept: one of them still applies to the message that gets its id
    fresh = await add_message(store, "smsru")
    await store.provider_accepted(fresh.id, "F-9", poll_at=store.clock() + 300, channel="sms",
                                  pending_ttl=60.0)
    assert (await status_of(store, fresh.id))[0] is Status.DELIVERED
    # a kept one older than the ttl is dropped, not applied, when its id turns up
    store.clock.advance(61)
    late = await add_message(store, "smsru")
    await store.provider_accepted(late.id, "F-8", poll_at=store.clock() + 300, channel="sms",
                                  pending_ttl=60.0)
    assert (await status_of(store, late.id))[0] is Status.ACCEPTED
    # the next unknown id expires the old ones first
    await route.callback(_signed(["sms_status\nF-10\n103"]))
    counts = await store.counts()
    assert counts["receipts_pending"] == 1


@pytest.mark.integration
async def test_multi_segment_message_moves_as_one(sim, store):
    route = SmsRuRoute(cfg(base_url=sim.base_url), store)
    m = await add_message(store, "smsru", body="Длинный текст " * 20)
    assert len(m.open_segments) > 1
    await store.provider_accepted(m.id, "L-1", poll_at=store.clock() + 300)
    await route.callback(_signed(["sms_status\nL-1\n103"]))
    st, row = await status_of(store, m.id)
    assert st is Status.DELIVERED and all(s["status"] == "delivered" for s in row["segment_rows"])


@pytest.mark.integration
async def test_cost_without_sending(sim, store):
    route = SmsRuRoute(cfg(base_url=sim.base_url), store)
    task = await _run(route)
    try:
        c = await route.cost(["375291234567", "375331234567"], "Привет " * 20, "DemoShop")
        assert c.total_sms == 2 * 3 and c.total_cost == pytest.approx(2 * 3 * sim.price)
        assert c.per_number["375291234567"][2] == 3
        assert not sim.messages
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_api_id_stays_out_of_urls_and_logs(sim, store):
    from structlog.testing import capture_logs

    sim.fail_next("http500", "sms/send")
    sim.fail_next("json", "sms/send", body={"status": "ERROR", "status_code": 301, "status_text": "bad key"})
    route = SmsRuRoute(cfg(base_url=sim.base_url), store)
    m = await add_message(store, "smsru")
    with capture_logs() as logs:
        route.enqueue(m)
        task = await _run(route)
        try:
            await wait_status(store, m.id, {Status.ACCEPTED})
        finally:
            await _stop(route, task)
    assert logs and API_ID not in repr(logs) and "291234567" not in repr(logs)
    assert all(not ({"api_id", "to"} & p) for p in sim.url_params)


@pytest.mark.integration
async def test_request_rate_cap(sim, store):
    now = [100.0]

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    route = SmsRuRoute(cfg(base_url=sim.base_url, rate=3), store, monotonic=lambda: now[0])
    route.rate_sleep = fake_sleep
    ms = [await add_message(store, "smsru", f"+3752912345{i:02d}") for i in range(7)]
    for m in ms:
        route.enqueue(m)
    task = await _run(route)
    try:
        for m in ms:
            await wait_status(store, m.id, {Status.ACCEPTED})
        # 3 requests in any 1-second window: the 4th waited a second, the 7th two.
        assert now[0] == pytest.approx(102.0)
        assert len([1 for name, _ in sim.requests if name == "sms/send"]) == 7
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_stop_does_not_wait_for_retry_timers_and_the_message_stays_queued(sim, store):
    sim.balance = 0.0  # account error: the message waits retry_max
    route = SmsRuRoute(cfg(base_url=sim.base_url, retry_max=300.0), store)
    m = await add_message(store, "smsru")
    route.enqueue(m)
    task = await _run(route)
    await asyncio.sleep(0.1)
    assert route.stats["account_errors"] == 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await _stop(route, task)
    assert loop.time() - t0 < 1.0
    assert (await status_of(store, m.id))[0] is Status.QUEUED
    assert [x.id for x in await store.open_messages("smsru")] == [m.id]  # the next start sends it
