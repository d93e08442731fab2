"""Issue 3: an SMPP route against the simulated SMSC and its fault modes, on loopback."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from smppd.smpp.pdu import (
    ESME_RALYBND,
    ESME_RINVCMDID,
    ESME_RINVDSTADR,
    ESME_RINVMSGLEN,
    ESME_RINVSRCADR,
    ESME_RMSGQFUL,
    ESME_RSYSERR,
    ESME_RTHROTTLED,
    ESME_RX_T_APPN,
)
from smppd.sims.smpp_policy import ScriptedPolicy, SubmitVerdict, ThrottlePolicy, max_in_any_second
from smppd.text import gsm7_decode

from tests.rigs.smpp_route_rig import rigs  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

LONG_LATIN = "Order 42 is ready. " * 20  # 380 GSM-7 chars: 3 parts
LONG_CYRILLIC = "Ваш заказ готов. " * 10  # 170 UCS-2 units: 3 parts


# --- throughput, throttling, command_status classes --------------------------------


async def test_cap_holds_in_any_one_second_window(rigs, tmp_path):
    rig = await rigs(tmp_path, throughput=20)
    for i in range(30):
        await rig.send(f"msg {i}")
    await rig.wait_final(timeout=5)
    times = [sm.received_at for sm in rig.smsc.submitted]
    assert len(times) == 30
    assert max_in_any_second(times) <= 20
    assert max(times) - min(times) >= 0.9  # the last ten really waited for the window to slide


async def test_throttled_and_queue_full_requeue_the_same_segment_and_keep_the_bind(rigs, tmp_path):
    policy = ScriptedPolicy([SubmitVerdict(status=ESME_RTHROTTLED),
                             SubmitVerdict(status=ESME_RMSGQFUL)])
    rig = await rigs(tmp_path, policy=policy, window=8)
    first = await rig.send("first")
    second = await rig.send("second")
    assert await rig.wait_final() == {first: "delivered", second: "delivered"}
    refused = [sm.text for sm, _ in rig.smsc.rejected]
    accepted = [sm.text for sm in rig.smsc.submitted]
    assert len(refused) == 2 and sorted(accepted) == ["first", "second"], "each sent until accepted, once"
    assert [s for _, s in rig.smsc.rejected] == [ESME_RTHROTTLED, ESME_RMSGQFUL]
    assert rig.route.connection.binds == 1, "a throttle must not cost the bind"
    assert rig.route.stats["throttled"] == 2
    assert rig.route.policy.flow.throttle_cuts == 1, "one burst of refusals is one congestion event"
    assert rig.route.policy.flow.queue_full_pauses == 1


async def test_against_an_operator_cap_aimd_converges_without_losing_anything(rigs, tmp_path):
    policy = ThrottlePolicy(tps=40)
    rig = await rigs(tmp_path, policy=policy, window=20)
    for i in range(60):
        await rig.send(f"m{i}")
    statuses = await rig.wait_final(timeout=10)
    assert set(statuses.values()) == {"delivered"}
    assert len(rig.smsc.submitted) == 60
    assert rig.route.connection.binds == 1
    assert rig.route.stats["throttled"] > 0 and policy.refused > 0, "the fault mode was exercised"
    # AIMD keeps refusals a minority, unlike "pause 1 s and retry" which refuses as much as it sends
    assert policy.refused < 60


@pytest.mark.parametrize("status", [ESME_RSYSERR, ESME_RX_T_APPN])
async def test_other_temporary_errors_requeue(rigs, tmp_path, status, monkeypatch):
    monkeypatch.setattr("smppd.routes.policy.submit.TEMPORARY_RETRY_DELAY", 0.01)
    rig = await rigs(tmp_path, policy=ScriptedPolicy([SubmitVerdict(status=status)]))
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "delivered"}
    assert len(rig.smsc.rejected) == 1 and len(rig.smsc.submitted) == 1


@pytest.mark.parametrize("status", [ESME_RINVDSTADR, ESME_RINVSRCADR, 0x45, 0xFF])
async def test_final_error_fails_the_message_with_the_code_kept(rigs, tmp_path, status):
    from structlog.testing import capture_logs

    rig = await rigs(tmp_path, policy=ScriptedPolicy([SubmitVerdict(status=status)]))
    with capture_logs() as logs:
        mid = await rig.send()
        assert await rig.wait_final() == {mid: "failed"}
    m = await rig.message(mid)
    assert f"0x{status:02X}" in m["reason"]
    assert m["b24_status"] == "failed", "what Bitrix24 is told"
    [line] = [e for e in logs if e["event"] == "smpp_submit_rejected"]
    assert (line["message"], line["b24_id"], line["route"]) == (mid, m["b24_id"], rig.route.name)


async def test_generic_nack_for_a_submit(rigs, tmp_path):
    policy = ScriptedPolicy([SubmitVerdict(status=ESME_RTHROTTLED, nack=True),
                             SubmitVerdict(status=ESME_RINVCMDID, nack=True)])
    rig = await rigs(tmp_path, policy=policy, window=1)
    first = await rig.send("first")
    second = await rig.send("second")
    statuses = await rig.wait_final()
    # the throttling nack requeues "first"; the resend of "first" is then nacked 0x03 (final)
    assert statuses == {first: "failed", second: "delivered"}
    assert rig.route.connection.binds == 1


# --- missing and slow answers, dropped connections ----------------------------------


async def test_missing_resp_times_out_and_the_segment_is_sent_again(rigs, tmp_path):
    rig = await rigs(tmp_path, policy=ScriptedPolicy([SubmitVerdict(respond=False)]),
                     response_timeout=0.2)
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "delivered"}
    assert rig.route.stats["requeued"] == 1


async def test_slow_resp_after_timeout_duplicates_at_least_once(rigs, tmp_path):
    rig = await rigs(tmp_path, policy=ScriptedPolicy([SubmitVerdict(delay=0.4)]), response_timeout=0.15)
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "delivered"}
    await asyncio.sleep(0.3)
    assert len(rig.smsc.submitted) == 2, "at-least-once: the slow one and its resend both reached the SMSC"


async def test_connection_dropped_mid_window_resends_what_was_unanswered(rigs, tmp_path):
    verdicts = [SubmitVerdict(delay=0.3)] * 3 + [SubmitVerdict(disconnect=True)]
    rig = await rigs(tmp_path, policy=ScriptedPolicy(verdicts), window=10)
    ids = [await rig.send(f"m{i}") for i in range(8)]
    statuses = await rig.wait_final(ids)
    assert set(statuses.values()) == {"delivered"}
    assert rig.route.connection.binds >= 2
    delivered_texts = {sm.text for sm in rig.smsc.submitted}
    assert delivered_texts == {f"m{i}" for i in range(8)}


async def test_unbind_from_the_smsc_is_answered_and_followed_by_a_new_bind(rigs, tmp_path):
    rig = await rigs(tmp_path)
    await rig.wait(lambda: rig.route.bound)
    await rig.smsc.unbind_all()
    await rig.wait(lambda: rig.route.connection.binds == 2)
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "delivered"}


async def test_wrong_password_retries_slowly_and_says_so_each_time(rigs, tmp_path):
    with capture_logs() as logs:
        rig = await rigs(tmp_path, sim={"accounts": {"smppd": "other"}},
                         reconnect_min=0.01, reconnect_max=0.25)
        await asyncio.sleep(0.6)
    conn = rig.route.connection
    # at 10 ms doubling it would be dozens; the credential rule waits 0.125..0.25 s each time
    assert 2 <= conn.connect_attempts <= 6
    assert conn.bind_failures == conn.connect_attempts or conn.bind_failures == conn.connect_attempts - 1
    refusals = [e for e in logs if e["event"] == "smpp.bind_rejected"]
    assert len(refusals) == conn.bind_failures
    assert all("RINVPASWD" in e["status"] for e in refusals)
    assert not any("secret" in str(e) or "other" in str(e.get("password", "")) for e in logs)
    assert rig.route.status()["bind_failures"] == conn.bind_failures


async def test_already_bound_is_a_refused_bind_and_the_next_bind_sends(rigs, tmp_path):
    # The SMSC still holds an old bind: ESME_RALYBND is a refused bind (issue 14.2), so
    # nothing is submitted on that socket; the next bind, after the back-off, carries it.
    rig = await rigs(tmp_path, sim={"bind_refusals": [ESME_RALYBND]}, bind_retry_min=0.05)
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "delivered"}
    assert rig.route.connection.binds == 1 and rig.route.connection.bind_failures == 1
    assert len(rig.smsc.submitted) == 1 and not rig.smsc.rejected


# --- receipts ----------------------------------------------------------------------


async def test_receipts_before_their_resp_are_applied_when_the_id_is_known(rigs, tmp_path):
    rig = await rigs(tmp_path, sim={"receipt_first": True, "outcomes": {"DELIVRD": 1, "UNDELIV": 1}, "seed": 5})
    ids = [await rig.send(f"m{i}") for i in range(20)]
    statuses = await rig.wait_final(ids)
    expected = {"DELIVRD": "delivered", "UNDELIV": "undelivered"}
    for mid in ids:
        pid = (await rig.message(mid))["segment_rows"][0]["smsc_id"]
        assert statuses[mid] == expected[rig.smsc.outcome_of(pid)]
    counts = await rig.store.counts()
    assert counts["receipts_pending"] == 0


@pytest.mark.parametrize("sim,route", [
    ({"id_format": "hex", "receipt_ids_decimal": True}, {"resp_id_base": "hex", "receipt_id_base": "dec"}),
    ({"id_format": "dec"}, {"receipt_id_base": "dec"}),
    ({"id_format": "hex", "id_leading_zeros": 2, "id_lower_case_in_receipt": True}, {}),
])
async def test_hex_decimal_case_and_zeros_match(rigs, tmp_path, sim, route):
    rig = await rigs(tmp_path, sim=sim, **route)
    ids = [await rig.send(f"m{i}") for i in range(5)]
    assert set((await rig.wait_final(ids)).values()) == {"delivered"}
    assert rig.smsc.receipts_acked == 5
    assert rig.route.stats["receipts_unmatched"] == 0


async def test_receipt_for_an_unknown_id_is_recorded_and_counted(rigs, tmp_path):
    rig = await rigs(tmp_path)
    await rig.wait(lambda: rig.route.bound)
    fields = dict(service_type="", source_addr_ton=1, source_addr_npi=1, source_addr="375291234567",
                  dest_addr_ton=5, dest_addr_npi=0, destination_addr="MyShop", esm_class=0x04,
                  data_coding=0, short_message=b"id:DEADBEEF sub:001 dlvrd:001 submit date:2501011200 "
                                               b"done date:2501011201 stat:DELIVRD err:000 text:")
    from smppd.sims.smpp import _Outbound
    rig.smsc._deliver(_Outbound("smppd", fields, is_receipt=True))
    await rig.wait(lambda: rig.smsc.receipts_acked == 1)
    assert rig.route.stats["receipts_unmatched"] == 1
    assert (await rig.store.counts())["receipts_pending"] == 1
    rig.store.clock = lambda: 10**10
    assert await rig.store.expire_pending_receipts() == 1
    assert (await rig.store.counts())["receipts_unmatched"] == 1


async def test_receipt_that_cannot_be_stored_is_answered_try_later(rigs, tmp_path):
    rig = await rigs(tmp_path)

    def broken(*a, **k):  # the commit failed: the operation's future carries the error
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(RuntimeError("disk full"))
        return fut

    rig.route.store.match_receipts = broken  # type: ignore[method-assign]
    with capture_logs() as logs:
        await rig.send()
        await rig.wait(lambda: rig.route.stats["receipts_unstored"] >= 1)
        await rig.wait(lambda: any(e["event"] == "smsc.deliver_refused" for e in logs))
    refused = [e for e in logs if e["event"] == "smsc.deliver_refused"]
    assert "RX_T_APPN" in refused[0]["status"]
    assert rig.smsc.receipts_acked == 0


async def test_mo_message_is_stored_counted_and_answered(rigs, tmp_path):
    rig = await rigs(tmp_path)
    await rig.wait(lambda: rig.route.bound)
    with capture_logs() as logs:
        await rig.smsc.deliver_mo("smppd", "375291234567", "MyShop", b"STOP")
        await rig.wait(lambda: rig.route.stats["mo"] == 1)
        await asyncio.sleep(0.05)
    rows = await rig.store.execute(lambda c: c.execute("SELECT route, source, body FROM mo").fetchall())
    assert rows == [("life", "375291234567", b"STOP")]
    assert not any("375291234567" in str(e) for e in logs), "full numbers never reach the logs"


# --- binds --------------------------------------------------------------------------


async def test_transmitter_receiver_pairs(rigs, tmp_path):
    rig = await rigs(tmp_path, bind_mode="pair", binds=2)
    await rig.wait(lambda: rig.smsc.binds == 4)
    ids = [await rig.send(f"m{i}") for i in range(10)]
    assert set((await rig.wait_final(ids)).values()) == {"delivered"}
    assert rig.route.status()["binds"] == 4


async def test_stop_waits_for_outstanding_unbinds_and_keeps_the_rest_queued(rigs, tmp_path):
    rig = await rigs(tmp_path, policy=ScriptedPolicy([SubmitVerdict(delay=0.1), SubmitVerdict(respond=False)]),
                     window=2)
    a = await rig.send("answered")
    b = await rig.send("never answered")
    await rig.wait(lambda: len(rig.route._inflight) == 2)
    with capture_logs() as logs:
        await rig.route.stop(timeout=0.5)
    assert not rig.route.bound
    assert (await rig.message(a))["status"] in ("accepted", "delivered")
    assert [e for e in logs if e["event"] == "smpp.unbind_sent"]
    assert [e for e in logs if e["event"] == "smpp.unbound"], "unbind_resp awaited"
    still_open = await rig.store.open_messages("life")
    assert [m.id for m in still_open] == [b], "the unanswered one is sent at the next start"


# --- long messages ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["udh8", "udh16", "sar", "payload"])
async def test_long_message_methods_on_the_wire(rigs, tmp_path, method):
    rig = await rigs(tmp_path, long_method=method)
    mid = await rig.send(LONG_CYRILLIC)
    assert await rig.wait_final() == {mid: "delivered"}
    m = await rig.message(mid)
    sent = rig.smsc.submitted
    assert m["segments"] == len(sent) == len(m["segment_rows"]), "the count shown is what was sent"
    assert "".join(sm.text for sm in sent) == LONG_CYRILLIC
    ids = [r["smsc_id"] for r in m["segment_rows"]]
    assert len(set(ids)) == len(sent) and all(ids), "per-segment SMSC ids kept"
    if method == "udh8":
        assert [sm.short_message[:6][:3] for sm in sent] == [b"\x05\x00\x03"] * 3
        assert all(sm.esm_class & 0x40 for sm in sent)
    elif method == "udh16":
        assert [sm.short_message[:3] for sm in sent] == [b"\x06\x08\x04"] * 3
    elif method == "sar":
        assert [(sm.sar_total_segments, sm.sar_segment_seqnum) for sm in sent] == [(3, 1), (3, 2), (3, 3)]
        assert len({sm.sar_msg_ref_num for sm in sent}) == 1 and not any(sm.esm_class & 0x40 for sm in sent)
    else:
        assert len(sent) == 1 and sent[0].short_message == b"" and sent[0].message_payload


async def test_concat_reference_is_per_destination_and_survives_a_restart(rigs, tmp_path):
    rig = await rigs(tmp_path, start=False)
    a1 = await rig.send(LONG_LATIN, to="+375291111111")
    a2 = await rig.send(LONG_LATIN, to="+375291111111")
    b1 = await rig.send(LONG_LATIN, to="+375292222222")
    refs = {m.id: m.concat_ref for m in await rig.store.open_messages("life")}
    assert refs[a1] != refs[a2], "two long messages to one handset never share a reference"
    assert refs[b1] == refs[a1], "the counter is per destination"
    rig.route.queue.clear()
    await rig.route.load_open()  # as after a restart
    rig.start()
    assert set((await rig.wait_final()).values()) == {"delivered"}
    by_dest: dict[tuple[str, int], set[int]] = {}
    for sm in rig.smsc.submitted:
        by_dest.setdefault((sm.destination_addr, sm.short_message[3]), set()).add(sm.short_message[5])
    assert by_dest == {("375291111111", refs[a1] & 0xFF): {1, 2, 3}, ("375291111111", refs[a2] & 0xFF): {1, 2, 3},
                       ("375292222222", refs[b1] & 0xFF): {1, 2, 3}}


async def test_gsm_extension_escape_is_never_split_on_the_wire(rigs, tmp_path):
    body = "a" * 152 + "€" + "b" * 10  # € (ESC 0x65) would straddle the 153 boundary
    rig = await rigs(tmp_path)
    mid = await rig.send(body)
    assert await rig.wait_final() == {mid: "delivered"}
    parts = [sm.short_message[6:] for sm in rig.smsc.submitted]
    assert parts[0][-1:] != b"\x1b" and "".join(gsm7_decode(p) for p in parts) == body


async def test_latin_text_as_latin1_when_the_operator_wants_it(rigs, tmp_path):
    rig = await rigs(tmp_path, latin_data_coding=3)
    mid = await rig.send("Café {ok}")
    assert await rig.wait_final() == {mid: "delivered"}
    (sm,) = rig.smsc.submitted
    assert sm.data_coding == 3 and sm.short_message == "Café {ok}".encode("latin-1")


async def test_numeric_sender_uses_the_numeric_ton_npi(rigs, tmp_path):
    rig = await rigs(tmp_path, numeric_ton=2, numeric_npi=1, alpha_ton=5, alpha_npi=0)
    await rig.send(sender="+375290000000")
    await rig.send(sender="MyShop")
    await rig.wait_final()
    got = sorted((sm.source_addr, sm.source_addr_ton, sm.source_addr_npi) for sm in rig.smsc.submitted)
    assert got == [("375290000000", 2, 1), ("MyShop", 5, 0)]


# --- several segments, one status ---------------------------------------------------


async def test_one_failing_segment_fails_the_message_and_all_delivered_delivers(rigs, tmp_path):
    policy = ScriptedPolicy([SubmitVerdict(), SubmitVerdict(status=ESME_RINVMSGLEN)])
    rig = await rigs(tmp_path, policy=policy, window=1)
    bad = await rig.send(LONG_LATIN)
    good = await rig.send(LONG_LATIN, to="+375293333333")
    statuses = await rig.wait_final()
    assert statuses == {bad: "failed", good: "delivered"}
    rows = (await rig.message(bad))["segment_rows"]
    assert [r["status"] for r in rows][:2] == ["delivered", "failed"]


async def test_a_hung_smsc_is_detected_by_enquire_link_and_the_route_rebinds(rigs, tmp_path):
    rig = await rigs(tmp_path, enquire_link_interval=0.1, response_timeout=0.15)
    await rig.wait(lambda: rig.route.bound)
    with capture_logs() as logs:
        rig.smsc.frozen = True  # TCP stays up; only enquire_link_resp can tell
        await rig.wait(lambda: any(e["event"] == "smpp.enquire_link_timeout" for e in logs), timeout=3)
        rig.smsc.frozen = False
        await rig.wait(lambda: rig.route.connection.binds == 2, timeout=3)
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "delivered"}
