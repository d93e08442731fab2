"""SMSC.ru: wire format, the batcher, ambiguous sends, Viber cascade, HLR, against the simulator."""

from __future__ import annotations

import asyncio

import pytest

from smppd.config import SmscRouteConfig
from smppd.model import SMSC_STATUS, Status, UnknownProviderStatus, smsc_status
from smppd.routes import smsc
from smppd.http_client import Ambiguous
from smppd.routes.answers import Accepted, ProviderError, Refused
from smppd.routes.http import BadCallback
from smppd.routes.policy.batch import Batcher, Job
from smppd.routes.smsc import VIBER_ID_BASE, SmscRoute
from smppd.sims.smsc import SimMessage, SmscSimulator
from smppd.model import OpenMessage

from tests.rigs.http_rig import add_message, status_of, wait_status
from tests.rigs.http_rig import store_clock  # noqa: F401  (the fixture, by import: a clock moved by hand)


def cfg(**kw) -> SmscRouteConfig:
    base = dict(name="smsc", login="smppd", password="sim-password", retry_min=0.01, retry_max=0.05,
                timeout=2.0, batch_interval=0.05)
    base.update(kw)
    return SmscRouteConfig(**base)


# --- mapping ------------------------------------------------------------------------


@pytest.mark.parametrize("code,status", [
    (-3, Status.FAILED), (-2, Status.FAILED), (-1, Status.ACCEPTED), (0, Status.ACCEPTED),
    (1, Status.DELIVERED), (2, Status.DELIVERED), (3, Status.EXPIRED), (4, Status.DELIVERED),
    (20, Status.UNDELIVERED), (22, Status.UNDELIVERED), (23, Status.UNDELIVERED), (24, Status.FAILED),
    (25, Status.UNDELIVERED),
])
def test_every_status_maps(code, status):
    assert smsc_status(code) is status


def test_unknown_status_is_not_guessed():
    assert len(SMSC_STATUS) == 13
    with pytest.raises(UnknownProviderStatus):
        smsc_status(21)


@pytest.mark.parametrize("code,delay,account", [
    (1, None, False), (2, 0.05, True), (3, 0.05, True), (4, 0.05, True), (5, None, False),
    (6, None, False), (7, None, False), (8, None, False), (9, 0.05, False),
])
def test_errors_1_to_9_are_classified(code, delay, account):
    with pytest.raises(ProviderError) as e:
        smsc.parse_send({"error": "x", "error_code": code}, ["+375291234567"], 5, cfg())
    assert e.value.retry_after == delay and e.value.account is account


def test_error_9_waits_a_minute_with_default_settings():
    assert smsc.error_delay(9, SmscRouteConfig(name="x", apikey="k")) == 60.0


def test_send_form_and_per_number_answer():
    form = smsc.send_form(cfg(valid=90), ["+375291234567", "+375331234567"], "Тест", "Shop", 42, viber=True)
    assert form["phones"] == "+375291234567,+375331234567" and form["id"] == "42"
    assert {form[k] for k in ("fmt", "charset", "op", "cost", "viber")} == {"3", "utf-8", "1", "3"}
    assert form["valid"] == "01:30" and form["login"] == "smppd" and form["psw"] == "sim-password"
    assert "apikey" in smsc.send_form(SmscRouteConfig(name="x", apikey="K"), ["+1"], "t", "s", 1)
    body = {"id": 42, "cnt": 2, "cost": "0.80", "balance": "10.00", "phones": [
        {"phone": "375291234567", "mccmnc": "25701", "cost": "0.40", "status": "-1", "error": "0"},
        {"phone": "375331234567", "mccmnc": "0", "cost": "0", "status": "-3", "error": "7"}]}
    out = smsc.parse_send(body, ["+375291234567", "+375331234567"], 42, cfg())
    assert out == {"375291234567": Accepted("42:375291234567"),
                   "375331234567": Refused(Status.FAILED, "smsc error 7")}
    with pytest.raises(Ambiguous):  # an answer for another request is not ours to apply
        smsc.parse_send({"id": 41, "cnt": 1}, ["+375291234567"], 42, cfg())


def test_callback_parsing():
    cb = smsc.parse_callback([("id", "42"), ("phone", "+375291234567"), ("status", "1"), ("err", "0"),
                              ("sender_id", "Shop"), ("cost", "0.4"), ("unknown_field", "x")])
    assert cb == smsc.CallbackStatus(42, "375291234567", 1, 0)
    assert smsc.parse_callback([("id", "5"), ("phone", "375291234567"), ("mes", "incoming")]) is None
    for bad in ([], [("status", "1")], [("id", "x"), ("phone", "1"), ("status", "1")],
                [("id", "1"), ("status", "1")]):
        with pytest.raises(BadCallback):
            smsc.parse_callback(bad)


# --- batcher (sans-I/O) -----------------------------------------------------------------


def _job(mid: int, phone: str = "+375291234567", text: str = "t", sender: str = "S", channel: str = "sms") -> Job:
    return Job(OpenMessage(mid, "r", sender, phone, text, (0,)), channel)


def test_batcher_flushes_on_size_and_on_time():
    b = Batcher(size=3, interval=2.0)
    for i in range(4):
        b.add(_job(i, f"+37529123456{i}"), now=10.0)
    full = b.due(10.0)
    assert [len(x.jobs) for x in full] == [3] and len(b) == 1
    assert b.next_deadline() == 12.0
    assert b.due(11.9) == []
    assert [j.message.id for x in b.due(12.0) for j in x.jobs] == [3]
    assert len(b) == 0 and b.next_deadline() is None


def test_batcher_keeps_texts_senders_channels_and_repeated_numbers_apart():
    b = Batcher(size=100, interval=1.0)
    b.add(_job(1), 0)
    b.add(_job(2, text="other"), 0)
    b.add(_job(3, sender="Other"), 0)
    b.add(_job(4, channel="viber"), 0)
    b.add(_job(5), 0)  # same number, same text: the second one goes in another request
    b.add(_job(6, "+375331234567"), 0)
    batches = b.due(1.0)
    assert sorted(sorted(j.message.id for j in x.jobs) for x in batches) == [[1, 6], [2], [3], [4], [5]]


# --- the route against the simulator -----------------------------------------------------


@pytest.fixture
async def sim():
    s = SmscSimulator(deliver_after=0.05)
    await s.start()
    yield s
    await s.stop()


async def _start(route: SmscRoute) -> asyncio.Task:
    return asyncio.create_task(route.run())


async def _stop(route: SmscRoute, task: asyncio.Task) -> None:
    await route.stop(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.integration
async def test_identical_texts_go_in_one_request_and_map_back(sim, store):
    sim.bad_numbers = frozenset({"375447654321"})
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/"), store)
    phones = ["+375291234567", "+375331234567", "+375447654321", "+375251234567"]
    msgs = [await add_message(store, "smsc", p, "Ваш код 1234") for p in phones]
    other = await add_message(store, "smsc", "+375291234567", "Другой текст")
    for m in msgs + [other]:
        route.enqueue(m)
    task = await _start(route)
    try:
        for m in msgs[:2] + msgs[3:] + [other]:
            await wait_status(store, m.id, {Status.ACCEPTED})
        row = await wait_status(store, msgs[2].id, {Status.FAILED})
        assert "error 7" in row["reason"]
        sends = [f for name, f in sim.requests if name == "send"]
        assert len(sends) == 2
        batch = next(f for f in sends if f["mes"] == "Ваш код 1234")
        assert batch["phones"].split(",") == phones and batch["id"] == str(msgs[0].id)
        for m in msgs[:2] + msgs[3:]:
            (_, row) = await status_of(store, m.id)
            assert row["segment_rows"][0]["smsc_id"] == f"{msgs[0].id}:{m.phone[1:]}"
            assert row["channel"] == "sms"
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_batch_flushes_at_size(sim, store):
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/", batch_size=2, batch_interval=30.0), store)
    ms = [await add_message(store, "smsc", f"+37529123456{i}", "same") for i in range(2)]
    for m in ms:
        route.enqueue(m)
    task = await _start(route)
    try:
        for m in ms:  # well before the 30 s interval
            await wait_status(store, m.id, {Status.ACCEPTED}, timeout=2.0)
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_callbacks_and_polling_finish_messages(sim, store):
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/"), store)
    a = await add_message(store, "smsc", "+375291234567")
    route.enqueue(a)
    task = await _start(route)
    try:
        row = await wait_status(store, a.id, {Status.ACCEPTED})
        rid, digits = smsc.split_smsc_id(row["segment_rows"][0]["smsc_id"])
        await asyncio.sleep(0.1)
        final = sim.messages[(rid, digits)].status
        # by callback
        assert await route.callback([("id", str(rid)), ("phone", digits), ("status", "0"), ("err", "0")]) == "OK"
        assert (await status_of(store, a.id))[0] is Status.ACCEPTED
        # by polling once the poll time has come
        store.clock.advance(301)
        assert await route.poll_once() == 1
        assert (await status_of(store, a.id))[0] is smsc_status(final)
        poll = [f for name, f in sim.requests if name == "status"][-1]
        assert poll["id"] == f"{rid}," and poll["phone"] == f"{digits},"
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_duplicate_error_9_waits_and_retries(sim, store):
    sim.fail_next("json", "send", body={"error": "duplicate request, wait a minute", "error_code": 9})
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/"), store)
    m = await add_message(store, "smsc")
    route.enqueue(m)
    task = await _start(route)
    try:
        await wait_status(store, m.id, {Status.ACCEPTED})
        assert len(sim.messages) == 1
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_lost_answer_is_checked_with_status_php_not_resent(sim, store):
    sim.fail_next("drop", "send")
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/"), store)
    ms = [await add_message(store, "smsc", f"+37529123456{i}") for i in range(3)]
    for m in ms:
        route.enqueue(m)
    task = await _start(route)
    try:
        for m in ms:
            await wait_status(store, m.id, {Status.ACCEPTED})
        assert route.stats["ambiguous"] == 1 and route.stats["ambiguous_resent"] == 0
        assert len([1 for name, _ in sim.requests if name == "send"]) == 1  # SMSC had them: not resent
        assert len(sim.messages) == 3
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_outage_then_recovery(sim, store):
    sim.fail_next("http500", "send", times=3)
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/"), store)
    m = await add_message(store, "smsc")
    route.enqueue(m)
    task = await _start(route)
    try:
        await wait_status(store, m.id, {Status.ACCEPTED})
        assert route.stats["retries"] == 3 and len(sim.messages) == 1
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_api_key_auth_and_wrong_credentials(sim, store):
    sim.apikey = "the-key"
    route = SmscRoute(SmscRouteConfig(name="smsc", apikey="the-key", base_url=sim.base_url + "sys/",
                                      batch_interval=0.0, retry_min=0.01, retry_max=0.05), store)
    m = await add_message(store, "smsc")
    route.enqueue(m)
    task = await _start(route)
    try:
        await wait_status(store, m.id, {Status.ACCEPTED})
        assert "psw" not in sim.requests[0][1]
    finally:
        await _stop(route, task)
    wrong = SmscRoute(cfg(base_url=sim.base_url + "sys/", password="nope"), store)
    m2 = await add_message(store, "smsc")
    wrong.enqueue(m2)
    task = await _start(wrong)
    try:
        await asyncio.sleep(0.2)
        assert wrong.stats["account_errors"] >= 1
        # waits for the admin, not lost: reloaded (and asked about) at the next start
        assert (await status_of(store, m2.id))[0] is Status.SUBMITTED
        assert [u.id for u in await store.submitted_unconfirmed("smsc")] == [m2.id]
    finally:
        await _stop(wrong, task)


# --- Viber cascade ------------------------------------------------------------------------


@pytest.mark.integration
async def test_viber_delivered_stays_viber(sim, store):
    sim.outcomes = {1: 1.0}
    sim.callback_url = None
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/", viber=True, viber_fallback=120.0), store)
    m = await add_message(store, "smsc")
    route.enqueue(m)
    task = await _start(route)
    try:
        row = await wait_status(store, m.id, {Status.ACCEPTED})
        assert row["channel"] == "viber"
        rid, digits = smsc.split_smsc_id(row["segment_rows"][0]["smsc_id"])
        assert rid == VIBER_ID_BASE + m.id
        assert sim.requests[0][1]["viber"] == "1"
        await route.callback([("id", str(rid)), ("phone", digits), ("status", "1"), ("err", "0")])
        st, row = await status_of(store, m.id)
        assert st is Status.DELIVERED and row["channel"] == "viber"
        assert route.stats["viber_delivered"] == 1
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_viber_failure_falls_back_to_sms(sim, store):
    sim.viber_users = frozenset()  # nobody has Viber: status 20
    sim.outcomes = {1: 1.0}
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/", viber=True), store)
    m = await add_message(store, "smsc")
    route.enqueue(m)
    task = await _start(route)
    try:
        await wait_status(store, m.id, {Status.ACCEPTED})
        await asyncio.sleep(0.1)
        rid, digits = VIBER_ID_BASE + m.id, m.phone[1:]
        assert sim.messages[(rid, digits)].status == 20
        await route.callback([("id", str(rid)), ("phone", digits), ("status", "20"), ("err", "1")])
        # the SMS goes out, SMSC delivers it
        for _ in range(200):
            if (m.id, digits) in sim.messages:
                break
            await asyncio.sleep(0.01)
        sms = sim.messages[(m.id, digits)]
        assert not sms.viber
        await asyncio.sleep(0.1)
        await route.callback([("id", str(m.id)), ("phone", digits), ("status", str(sms.status)), ("err", "0")])
        st, row = await status_of(store, m.id)
        assert st is Status.DELIVERED and row["channel"] == "viber_fallback"
        assert any("falling back to SMS" in (e["detail"] or "") for e in row["events"])
        assert route.stats["viber_fallbacks"] == 1
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_silent_viber_falls_back_after_the_timeout_even_across_a_restart(sim, store):
    sim.viber_silent = True
    sim.outcomes = {1: 1.0}
    c = cfg(base_url=sim.base_url + "sys/", viber=True, viber_fallback=600.0)
    route = SmscRoute(c, store)
    m = await add_message(store, "smsc")
    route.enqueue(m)
    task = await _start(route)
    await wait_status(store, m.id, {Status.ACCEPTED})
    store.clock.advance(599)
    assert await route.poll_once() == 0
    store.clock.advance(2)
    # The poller decides to fall back; stop before the SMS is sent (a crash would do the same).
    route.add_job = lambda job: None  # type: ignore[method-assign]
    assert await route.poll_once() == 1
    await _stop(route, task)
    row = (await status_of(store, m.id))[1]
    assert row["channel"] == "viber_fallback" and row["status"] == "accepted"
    # The next start owes it the SMS.
    again = SmscRoute(c, store)
    assert await again.load_open() == 1
    task = await _start(again)
    try:
        for _ in range(200):
            if (m.id, m.phone[1:]) in sim.messages:
                break
            await asyncio.sleep(0.01)
        assert not sim.messages[(m.id, m.phone[1:])].viber
        # The message was already 'accepted' by the Viber attempt: wait for the
        # SMS's own id to replace the Viber id, not for a status change.
        sms_id = f"{m.id}:{m.phone[1:]}"
        for _ in range(200):
            row = (await status_of(store, m.id))[1]
            if row["segment_rows"][0]["smsc_id"] == sms_id:
                break
            await asyncio.sleep(0.01)
        assert row["segment_rows"][0]["smsc_id"] == sms_id
    finally:
        await _stop(again, task)


# --- HLR ---------------------------------------------------------------------------------


@pytest.mark.integration
async def test_hlr_request_and_result(sim, store):
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/"), store)
    try:
        rid = await route.hlr_request("+375291234567")
        assert sim.requests[-1][1]["hlr"] == "1"
        assert await route.hlr_result(rid, "+375291234567") is None  # the network has not answered
        await asyncio.sleep(0.1)
        r = await route.hlr_result(rid, "+375291234567")
        assert r is not None and r.status == 1 and r.mcc == "257" and r.mnc == "01" and r.imsi
        assert sim.requests[-1][1]["all"] == "1"
    finally:
        await route.close()


@pytest.mark.integration
async def test_timeout_is_ambiguous_and_checked_before_any_resend(sim, store):
    sim.fail_next("slow", "send", body=1.0)
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/", timeout=0.2), store)
    m = await add_message(store, "smsc")
    route.enqueue(m)
    task = await _start(route)
    try:
        await wait_status(store, m.id, {Status.ACCEPTED})
        assert route.stats["ambiguous"] == 1 and route.stats["ambiguous_resent"] == 0
        assert len(sim.messages) == 1
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_concurrency_cap_per_route(sim, store):
    sim.latency = 0.05
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/", batch_size=1, batch_interval=0.0, concurrency=2), store)
    ms = [await add_message(store, "smsc", f"+3752912345{i:02d}") for i in range(8)]
    for m in ms:
        route.enqueue(m)
    task = await _start(route)
    try:
        for m in ms:
            await wait_status(store, m.id, {Status.ACCEPTED})
        assert sim.max_in_flight == 2
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_credentials_stay_out_of_urls_and_logs(sim, store):
    from structlog.testing import capture_logs

    sim.fail_next("http500", "send")
    sim.fail_next("json", "send", body={"error": "invalid login or password", "error_code": 2})
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/"), store)
    m = await add_message(store, "smsc")
    with capture_logs() as logs:
        route.enqueue(m)
        task = await _start(route)
        try:
            await wait_status(store, m.id, {Status.ACCEPTED})
            store.clock.advance(301)
            await route.poll_once()
        finally:
            await _stop(route, task)
    assert logs and "sim-password" not in repr(logs) and "291234567" not in repr(logs)
    assert all(not ({"psw", "login", "apikey", "phones", "phone"} & p) for p in sim.url_params)


@pytest.mark.integration
async def test_after_a_crash_smsc_is_asked_before_anything_is_resent(sim, store):
    c = cfg(base_url=sim.base_url + "sys/")
    had = await add_message(store, "smsc", "+375291234567")
    lost = await add_message(store, "smsc", "+375331234567")
    # A request for both was on the wire when the daemon died; SMSC took only the first.
    await store.provider_submitting([(had.id, f"{had.id}:375291234567"), (lost.id, f"{had.id}:375331234567")])
    sim.messages[(had.id, "375291234567")] = SimMessage(
        had.id, "375291234567", had.text, had.sender, False, False, status=0)
    route = SmscRoute(c, store)
    assert await route.load_open() == 2
    task = await _start(route)
    try:
        row = await wait_status(store, had.id, {Status.ACCEPTED})
        assert row["segment_rows"][0]["smsc_id"] == f"{had.id}:375291234567"
        row = await wait_status(store, lost.id, {Status.ACCEPTED})
        assert row["segment_rows"][0]["smsc_id"] == f"{lost.id}:375331234567"
        sends = [f for name, f in sim.requests if name == "send"]
        assert [f["phones"] for f in sends] == ["+375331234567"]  # only the one SMSC did not have
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_after_a_crash_a_failing_status_php_is_asked_again_never_resent_blind(sim, store):
    """The crash check goes through ResendPolicy: while status.php fails, ask again with
    back-off for as long as it takes; only a definite "not found" sends the message again."""
    c = cfg(base_url=sim.base_url + "sys/", retry_min=0.05, retry_max=0.2)
    had = await add_message(store, "smsc", "+375291234567")
    lost = await add_message(store, "smsc", "+375331234567")
    await store.provider_submitting([(had.id, f"{had.id}:375291234567"), (lost.id, f"{had.id}:375331234567")])
    sim.messages[(had.id, "375291234567")] = SimMessage(
        had.id, "375291234567", had.text, had.sender, False, False, status=0)
    sim.status_down_for(0.4)
    route = SmscRoute(c, store)
    assert await route.load_open() == 2
    task = await _start(route)
    try:
        await wait_status(store, had.id, {Status.ACCEPTED})
        await wait_status(store, lost.id, {Status.ACCEPTED})
        asks = [name for name, _ in sim.requests if name == "status"]
        assert len(asks) >= 2, "asked again after status.php failed"
        sends = [f for name, f in sim.requests if name == "send"]
        assert [f["phones"] for f in sends] == ["+375331234567"], "only what SMSC said it did not have"
        assert not route.policy.in_doubt(had.id) and not route.policy.in_doubt(lost.id)
    finally:
        await _stop(route, task)


# --- issue 14 item 9: error 9 and lost answers never become a second SMS -------------------


@pytest.mark.integration
async def test_lost_answer_while_status_php_fails_is_never_resent(sim, store):
    """The issue's case: the answer is lost and status.php fails for a while. The old route gave up
    asking after five tries, resent, got error 9, and sent again once SMSC's minute was over."""
    sim.duplicate_window = 0.3  # SMSC's minute, shortened: a resend after it would be a new SMS
    sim.fail_next("drop", "send")
    sim.status_down_for(1.0)
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/", retry_min=0.02, retry_max=0.2), store)
    ms = [await add_message(store, "smsc", f"+37529765432{i}", "lost answer") for i in range(3)]
    for m in ms:
        route.enqueue(m)
    task = await _start(route)
    try:
        for m in ms:
            await wait_status(store, m.id, {Status.ACCEPTED, Status.DELIVERED, Status.UNDELIVERED, Status.EXPIRED},
                              timeout=10.0)
        await asyncio.sleep(0.5)  # past the shortened window: nothing more goes out
        assert sim.sent_twice() == [] and len(sim.sends) == 3
        assert [n for n, _ in sim.requests].count("send") == 1
        assert route.stats["ambiguous_resent"] == 0 and route.stats["ambiguous"] == 1
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_error_9_means_smsc_has_it_learn_its_state_never_resend(sim, store):
    """Error 9 on a send SMSC already holds; status.php fails meanwhile; the callback says delivered."""
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/", retry_min=0.02, retry_max=0.2, batch_interval=0.0),
                      store)
    m = await add_message(store, "smsc", "+375297654329", "held by smsc")
    rid, digits = m.id, "375297654329"
    sim.messages[(rid, digits)] = SimMessage(rid, digits, "held by smsc", "DemoShop", False, False)  # taken before
    sim.fail_next("json", "send", body={"error": "duplicate request, wait a minute", "error_code": 9})
    sim.status_down_for(0.6)
    route.enqueue(m)
    task = await _start(route)
    try:
        for _ in range(100):  # the route is asking status.php, which fails
            if [n for n, _ in sim.requests].count("status") >= 2:
                break
            await asyncio.sleep(0.02)
        assert route.stats["duplicates"] == 1
        assert await route.callback([("id", str(rid)), ("phone", digits), ("status", "1"), ("err", "0")]) == "OK"
        await wait_status(store, m.id, {Status.DELIVERED})
        await asyncio.sleep(1.0)  # status.php is back; the route's doubt ended with the callback
        assert sim.sends == [] and [n for n, _ in sim.requests].count("send") == 1
        assert (await status_of(store, m.id))[0] is Status.DELIVERED
    finally:
        await _stop(route, task)


@pytest.mark.integration
async def test_error_9_for_too_many_requests_sends_once_smsc_says_it_has_nothing(sim, store):
    """Error 9 is also SMSC's answer to 15+ concurrent requests (nothing taken): after status.php
    says "no such message" and the duplicate window, the message goes, once."""
    route = SmscRoute(cfg(base_url=sim.base_url + "sys/", retry_min=0.02, retry_max=0.2, batch_interval=0.0),
                      store)
    sim.concurrent_limit = 0  # every send now is "too many at once"
    m = await add_message(store, "smsc", "+375297654328", "busy smsc")
    route.enqueue(m)
    task = await _start(route)
    try:
        for _ in range(100):
            if route.stats["duplicates"]:
                break
            await asyncio.sleep(0.02)
        sim.concurrent_limit = 15
        await wait_status(store, m.id, {Status.ACCEPTED, Status.DELIVERED, Status.UNDELIVERED, Status.EXPIRED},
                          timeout=10.0)
        assert len(sim.sends) == 1 and "status" in [n for n, _ in sim.requests]
    finally:
        await _stop(route, task)
