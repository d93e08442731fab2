"""The sans-I/O SMPP session, driven with bytes an SMSC would send and injected time."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from smppd.smpp.encode import encode, generic_nack
from smppd.smpp.pdu import MAX_SEQUENCE, Framer, decode
from smppd.smpp.events import (
    BindRejected,
    Bound,
    MessageReceived,
    ReceiptReceived,
    SubmitAccepted,
    SubmitRejected,
    SubmitUnconfirmed,
    Terminated,
)
from smppd.smpp.session import BindMode, Session, State

from tests.rigs.session_rig import (
    INTERVAL,
    PASSWORD,
    RESP_TIMEOUT,
    bind_resp_for,
    bound_session,
    config,
    item,
    mo_pdu,
    raw_pdu,
    receipt_pdu,
    sent,
    sent_one,
    submit_n,
    submit_resp,
)


@pytest.mark.parametrize(
    "mode, command",
    [
        (BindMode.TRANSCEIVER, "bind_transceiver"),
        (BindMode.TRANSMITTER, "bind_transmitter"),
        (BindMode.RECEIVER, "bind_receiver"),
    ],
)
def test_start_sends_bind_for_the_mode(mode, command):
    s = Session(config(bind_mode=mode, system_type="VMA", addr_ton=1, addr_npi=1))
    assert s.state is State.IDLE
    assert s.next_deadline() is None
    s.start(100.0)
    assert s.state is State.BINDING
    header, raw = sent_one(s)
    assert header.command == command
    assert header.sequence == 1
    pdu = decode(raw)
    assert pdu.system_id == b"esme01"
    assert pdu.password == PASSWORD.encode()
    assert pdu.system_type == b"VMA"
    assert pdu.interface_version == 0x34
    assert (pdu.addr_ton, pdu.addr_npi) == (1, 1)
    assert pdu.address_range in (b"", None)
    assert s.next_deadline() == 100.0 + RESP_TIMEOUT
    with pytest.raises(RuntimeError):
        s.start(101.0)


@pytest.mark.parametrize(
    "mode, can_submit",
    [(BindMode.TRANSCEIVER, True), (BindMode.TRANSMITTER, True), (BindMode.RECEIVER, False)],
)
def test_bind_resp_ok_binds(mode, can_submit):
    s = Session(config(bind_mode=mode))
    s.start(0.0)
    header, _ = sent_one(s)
    events = s.receive_data(bind_resp_for(mode, header.sequence, system_id="MTS_SMSC"), 0.5)
    assert events == [Bound("MTS_SMSC")]
    assert s.state is State.BOUND
    assert s.can_submit() is can_submit
    if not can_submit:
        with pytest.raises(RuntimeError):
            s.submit(item("r"), 1.0)


def test_the_session_reports_bind_and_end_and_leaves_their_log_lines_to_the_caller():
    """One log line per event (issue 15): smpp.bound, smpp.bind_rejected and smpp.terminated
    are written once, by the connection, which knows the route; the session only reports."""
    lifecycle = {"smpp.bound", "smpp.bind_rejected", "smpp.terminated", "smpp_bound", "smpp_bind_rejected",
                 "smpp_terminated"}
    with capture_logs() as logs:
        s = bound_session()
        assert any(isinstance(e, Terminated) for e in s.receive_data(encode("unbind", 9), 1.0))
        r = Session(config())
        r.start(0.0)
        header, _ = sent_one(r)
        assert r.receive_data(bind_resp_for(BindMode.TRANSCEIVER, header.sequence, status=0x0E), 0.2) == [
            BindRejected(0x0E)]
    assert [e["event"] for e in logs if e["event"] in lifecycle] == []


def test_bind_rejected_closes_the_session():
    s = Session(config())
    s.start(0.0)
    header, _ = sent_one(s)
    events = s.receive_data(bind_resp_for(BindMode.TRANSCEIVER, header.sequence, status=0x0E), 0.2)
    assert events == [BindRejected(0x0E)]
    assert s.state is State.CLOSED
    assert s.next_deadline() is None
    assert not s.can_submit()
    assert s.data_to_send() == b""
    assert s.receive_data(raw_pdu(0x15, 5), 0.3) == []  # nothing is processed any more


def test_bind_resp_already_bound_is_a_bind_failure_and_nothing_is_submitted():
    # issue 14.2: a stale session at the SMSC answers RALYBND; Kannel took it as bound and
    # pushed a window of submits into a socket the SMSC was about to close.
    s = Session(config())
    s.start(0.0)
    header, _ = sent_one(s)
    events = s.receive_data(bind_resp_for(BindMode.TRANSCEIVER, header.sequence, status=0x05), 0.2)
    assert events == [BindRejected(0x05)]
    assert s.state is State.CLOSED
    assert not s.can_submit()
    with pytest.raises(RuntimeError):
        s.submit(item("a"), 0.3)
    assert s.data_to_send() == b""


def test_bind_resp_timeout_terminates():
    s = Session(config())
    s.start(5.0)
    sent(s)
    assert s.next_deadline() == 15.0
    assert s.handle_timers(14.9) == []
    assert s.handle_timers(15.0) == [Terminated("bind_resp timeout")]
    assert s.state is State.CLOSED
    assert s.next_deadline() is None


def test_generic_nack_to_bind_is_a_rejection():
    s = Session(config())
    s.start(0.0)
    header, _ = sent_one(s)
    events = s.receive_data(generic_nack(header.sequence, 0x03), 0.1)
    assert events == [BindRejected(0x03)]
    assert s.state is State.CLOSED


def test_password_is_never_logged():
    with capture_logs() as logs:
        s = Session(config())
        s.start(0.0)
        header, _ = sent_one(s)
        s.receive_data(bind_resp_for(BindMode.TRANSCEIVER, header.sequence, status=0x0E), 0.1)
    assert logs
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in repr(s.config)


# --- submit and window -----------------------------------------------------------------------


def test_submit_encodes_the_segment():
    s = bound_session()
    seq = s.submit(
        item(
            "m1:1",
            text=b"\x05\x00\x03\x07\x02\x01part one",
            esm_class=0x40,
            data_coding=0x08,
            registered_delivery=1,
        ),
        1.0,
    )
    header, raw = sent_one(s)
    assert header.command == "submit_sm"
    assert header.sequence == seq == 2  # 1 went to the bind
    pdu = decode(raw)
    assert pdu.source_addr == b"MyBrand"
    assert (pdu.source_addr_ton, pdu.source_addr_npi) == (5, 0)
    assert pdu.destination_addr == b"375291234567"
    assert (pdu.dest_addr_ton, pdu.dest_addr_npi) == (1, 1)
    assert pdu.esm_class == 0x40
    assert pdu.data_coding == 0x08
    assert pdu.registered_delivery == 1
    assert pdu.short_message == b"\x05\x00\x03\x07\x02\x01part one"
    assert s.outstanding == 1


def test_submit_without_tlvs_sends_what_the_general_encoder_builds():
    # Every submit, with or without TLVs, is the table-driven encode()'s bytes (the hand-built
    # encode_submit_sm fast path is gone, issue 15).
    s = bound_session()
    for i, (text, esm, dc) in enumerate([(b"Hello", 0, 0), (b"", 0, 0), (b"\x05\x00\x03\x07\x02\x01x", 0x40, 8),
                                         (b"y" * 254, 0, 0xF0)]):
        seq = s.submit(item(i, text=text, esm_class=esm, data_coding=dc, registered_delivery=i % 2), 1.0)
        _, raw = sent_one(s)
        assert raw == encode(
            "submit_sm", seq, service_type="", source_addr_ton=5, source_addr_npi=0, source_addr="MyBrand",
            dest_addr_ton=1, dest_addr_npi=1, destination_addr="375291234567", esm_class=esm,
            registered_delivery=i % 2, data_coding=dc, short_message=text,
        )
    s.submit(item("vp", tlvs={"validity_period": "000001000000000R"}), 1.0)
    _, raw = sent_one(s)
    assert decode(raw).validity_period == b"000001000000000R"
    with pytest.raises(ValueError):
        s.submit(item("long-sender", source_addr="S" * 21), 1.0)
    with pytest.raises(TypeError):
        s.submit(item("bool-ton", dest_addr_ton=True), 1.0)
    assert s.outstanding == 5 and s.data_to_send() == b""


def test_submit_passes_tlvs_to_the_codec():
    s = bound_session()
    s.submit(
        item("m", text=b"", tlvs={"message_payload": b"x" * 300, "sar_msg_ref_num": 7}),
        1.0,
    )
    _, raw = sent_one(s)
    pdu = decode(raw)
    assert pdu.message_payload == b"x" * 300
    assert pdu.sar_msg_ref_num == 7
    assert not pdu.short_message
    with pytest.raises(ValueError):
        s.submit(item("bad", text=b"hi", tlvs={"message_payload": b"x"}), 1.0)
    assert s.outstanding == 1
    assert s.submit(item("next"), 1.0) == 3  # the refused one used no sequence number


def test_encoding_error_uses_no_window_slot():
    s = bound_session()
    with pytest.raises(ValueError):
        s.submit(item("too-long", text=b"x" * 255), 1.0)
    assert s.outstanding == 0
    assert s.data_to_send() == b""


def test_window_full_blocks_submit_until_a_resp_frees_a_slot():
    s = bound_session(window=2)
    seqs = submit_n(s, ["a", "b"])
    assert s.outstanding == 2
    assert not s.can_submit()
    with pytest.raises(RuntimeError):
        s.submit(item("c"), 1.0)
    sent(s)
    events = s.receive_data(submit_resp(seqs["a"], "77"), 1.5)
    assert events == [SubmitAccepted("a", "77", "77")]
    assert s.outstanding == 1
    assert s.can_submit()


def test_window_can_be_lowered_and_raised():
    s = bound_session(window=3)
    submit_n(s, ["a", "b"])
    s.window = 1
    assert not s.can_submit()
    s.window = 5
    assert s.can_submit()
    with pytest.raises(ValueError):
        s.window = -1


def test_responses_in_any_order_match_their_refs():
    s = bound_session()
    seqs = submit_n(s, ["a", "b", "c"])
    sent(s)
    data = submit_resp(seqs["c"], "00ff") + submit_resp(seqs["a"], "1") + submit_resp(seqs["b"], "2")
    events = s.receive_data(data, 2.0)
    assert events == [
        SubmitAccepted("c", "FF", "00ff"),  # canonical: upper case, no leading zeros
        SubmitAccepted("a", "1", "1"),
        SubmitAccepted("b", "2", "2"),
    ]
    assert s.outstanding == 0


def test_resp_id_base_converts_the_resp_id():
    s = bound_session(resp_id_base="hex", receipt_id_base="dec")
    seq = s.submit(item("a"), 1.0)
    assert s.receive_data(submit_resp(seq, "FF"), 1.1) == [SubmitAccepted("a", "255", "FF")]


@pytest.mark.parametrize(
    "status, temporary",
    [(0x58, True), (0x14, True), (0x08, True), (0x64, True), (0x0B, False), (0x45, False)],
)
def test_resp_with_error_is_a_rejection(status, temporary):
    s = bound_session(window=1)
    seq = s.submit(item("a"), 1.0)
    events = s.receive_data(submit_resp(seq, status=status), 1.1)
    assert events == [SubmitRejected("a", status, temporary)]
    assert s.outstanding == 0
    assert s.can_submit()
    assert s.state is State.BOUND


def test_resp_accepted_without_readable_message_id_is_still_accepted():
    s = bound_session()
    seq = s.submit(item("a"), 1.0)
    broken = raw_pdu(0x80000004, seq, body=b"ABC")  # message_id without its NUL
    assert s.receive_data(broken, 1.1) == [SubmitAccepted("a", "", "")]
    assert s.outstanding == 0


def test_not_bound_status_requeues_and_ends_the_session():
    s = bound_session()
    seqs = submit_n(s, ["a", "b"])
    events = s.receive_data(submit_resp(seqs["a"], status=0x04), 1.1)
    reason = "SMSC reports session not bound (ESME_RINVBNDSTS)"
    assert events == [
        SubmitRejected("a", 0x04, True),
        SubmitUnconfirmed("b", reason),
        Terminated(reason),
    ]
    assert s.state is State.CLOSED


def test_generic_nack_matching_a_submit_is_its_rejection():
    s = bound_session()
    seqs = submit_n(s, ["a", "b"])
    events = s.receive_data(generic_nack(seqs["b"], 0x58), 1.1)
    assert events == [SubmitRejected("b", 0x58, True)]
    assert s.outstanding == 1
    events = s.receive_data(generic_nack(seqs["a"], 0x02), 1.2)
    assert events == [SubmitRejected("a", 0x02, False)]


def test_generic_nack_with_unknown_sequence_keeps_the_bind():
    s = bound_session()
    submit_n(s, ["a"])
    sent(s)
    assert s.receive_data(generic_nack(999, 0x03), 1.1) == []
    assert s.state is State.BOUND
    assert s.outstanding == 1
    assert s.data_to_send() == b""  # a nack is never answered


def test_resp_timeout_reports_unconfirmed_and_frees_the_slot():
    s = bound_session(window=2)
    seq_a = s.submit(item("a"), 1.0)
    s.submit(item("b"), 4.0)
    assert not s.can_submit()
    assert s.next_deadline() == 1.0 + RESP_TIMEOUT
    assert s.handle_timers(10.9) == []
    assert s.handle_timers(11.0) == [SubmitUnconfirmed("a", "submit_sm_resp timeout")]
    assert s.outstanding == 1
    assert s.can_submit()
    assert s.next_deadline() == 4.0 + RESP_TIMEOUT
    # A late resp for it is logged with its ref and otherwise ignored.
    with capture_logs() as logs:
        assert s.receive_data(submit_resp(seq_a, "LATE1"), 12.0) == []
    late = [e for e in logs if e["event"] == "smpp.submit_resp_late"]
    assert late and late[0]["ref"] == "a" and late[0]["smsc_id"] == "LATE1"
    assert s.handle_timers(14.0) == [SubmitUnconfirmed("b", "submit_sm_resp timeout")]
    assert s.state is State.BOUND


def test_unexpected_responses_are_ignored():
    s = bound_session()
    sent(s)
    data = (
        submit_resp(4242, "X")
        + encode("deliver_sm_resp", 7, message_id="")
        + encode("enquire_link_resp", 99)
        + encode("unbind_resp", 98)
        + raw_pdu(0x80000099, 5)
        + bind_resp_for(BindMode.TRANSCEIVER, 1)
    )
    assert s.receive_data(data, 1.0) == []
    assert s.state is State.BOUND
    assert s.data_to_send() == b""


# --- keep-alive and timeouts -----------------------------------------------------------------


def test_enquire_link_is_sent_when_idle_and_its_resp_clears_it():
    s = bound_session(now=0.0)
    assert s.next_deadline() == INTERVAL  # the bind was the last thing sent
    assert s.handle_timers(29.0) == []
    assert s.data_to_send() == b""
    assert s.handle_timers(30.0) == []
    header, _ = sent_one(s)
    assert header.command == "enquire_link"
    assert s.next_deadline() == 30.0 + RESP_TIMEOUT
    assert s.receive_data(encode("enquire_link_resp", header.sequence), 31.0) == []
    assert s.next_deadline() == 60.0
    assert s.handle_timers(40.0) == []  # nothing due: no second enquire_link, no timeout
    assert s.data_to_send() == b""
    assert s.state is State.BOUND


def test_traffic_postpones_the_enquire_link():
    s = bound_session(now=0.0)
    seq = s.submit(item("a"), 20.0)
    s.receive_data(submit_resp(seq, "1"), 20.5)
    sent(s)
    assert s.next_deadline() == 50.0
    assert s.handle_timers(30.0) == []
    assert s.data_to_send() == b""


def test_idle_means_nothing_sent_received_traffic_does_not_postpone():
    s = bound_session(now=0.0)
    s.receive_data(encode("enquire_link", 5), 25.0)
    sent(s)  # our enquire_link_resp: a response, it does not count as traffic of ours
    assert s.next_deadline() == INTERVAL
    s.handle_timers(30.0)
    header, _ = sent_one(s)
    assert header.command == "enquire_link"


def test_enquire_link_timeout_terminates_with_outstanding_unconfirmed():
    s = bound_session(now=0.0)
    s.handle_timers(30.0)
    sent(s)  # the enquire_link
    s.submit(item("a"), 31.0)  # its own resp deadline is 41
    s.submit(item("b"), 32.0)
    assert s.next_deadline() == 40.0
    reason = "enquire_link_resp timeout"
    assert s.handle_timers(40.0) == [
        SubmitUnconfirmed("a", reason),
        SubmitUnconfirmed("b", reason),
        Terminated(reason),
    ]
    assert s.state is State.CLOSED
    assert s.outstanding == 0


def test_inactivity_timeout_terminates():
    s = bound_session(now=0.0, enquire_link_interval=1000.0, inactivity_timeout=300.0)
    s.receive_data(encode("enquire_link", 5), 100.0)  # anything received resets it
    assert s.next_deadline() == 400.0
    assert s.handle_timers(399.0) == []
    assert s.handle_timers(400.0) == [Terminated("inactivity timeout")]


def test_incoming_enquire_link_is_answered_with_its_sequence():
    s = bound_session()
    assert s.receive_data(encode("enquire_link", 0x1234), 1.0) == []
    header, raw = sent_one(s)
    assert header.command == "enquire_link_resp"
    assert header.sequence == 0x1234
    assert header.status == 0
    assert len(raw) == 16


def test_incoming_enquire_link_is_answered_before_the_bind_completes():
    s = Session(config())
    s.start(0.0)
    sent(s)
    s.receive_data(encode("enquire_link", 3), 0.1)
    header, _ = sent_one(s)
    assert (header.command, header.sequence) == ("enquire_link_resp", 3)
    assert s.state is State.BINDING


# --- unbind ----------------------------------------------------------------------------------


def test_incoming_unbind_is_answered_and_terminates():
    s = bound_session()
    submit_n(s, ["a"])
    sent(s)
    events = s.receive_data(encode("unbind", 77) + encode("enquire_link", 78), 2.0)
    assert events == [SubmitUnconfirmed("a", "unbound by SMSC"), Terminated("unbound by SMSC")]
    header, _ = sent_one(s)  # the enquire_link after the unbind is not processed
    assert (header.command, header.sequence, header.status) == ("unbind_resp", 77, 0)
    assert s.state is State.CLOSED


def test_graceful_unbind():
    s = bound_session()
    seq = s.submit(item("a"), 1.0)
    sent(s)
    s.unbind(2.0)
    assert s.state is State.UNBINDING
    assert not s.can_submit()
    with pytest.raises(RuntimeError):
        s.submit(item("b"), 2.0)
    header, _ = sent_one(s)
    assert header.command == "unbind"
    # Responses to earlier submits are still matched.
    assert s.receive_data(submit_resp(seq, "9"), 2.5) == [SubmitAccepted("a", "9", "9")]
    assert s.receive_data(encode("unbind_resp", header.sequence), 3.0) == [Terminated("unbound")]
    assert s.state is State.CLOSED
    s.unbind(4.0)  # idempotent
    assert s.data_to_send() == b""


def test_graceful_unbind_timeout_reports_outstanding():
    s = bound_session()
    s.submit(item("a"), 1.0)
    s.unbind(1.5)
    sent(s)
    assert s.next_deadline() == 11.0  # the submit's resp deadline comes first
    assert s.handle_timers(11.0) == [SubmitUnconfirmed("a", "submit_sm_resp timeout")]
    assert s.next_deadline() == 11.5
    assert s.handle_timers(11.5) == [Terminated("unbind_resp timeout")]


def test_unbind_before_start_just_closes():
    s = Session(config())
    s.unbind(0.0)
    assert s.state is State.CLOSED
    assert s.data_to_send() == b""


def test_connection_lost_reports_outstanding_once():
    s = bound_session()
    submit_n(s, ["a", "b"])
    assert s.connection_lost() == [
        SubmitUnconfirmed("a", "connection lost"),
        SubmitUnconfirmed("b", "connection lost"),
    ]
    assert s.state is State.CLOSED
    assert s.connection_lost() == []
    assert s.handle_timers(1000.0) == []
    assert s.next_deadline() is None


# --- deliver_sm / data_sm --------------------------------------------------------------------


def test_receipt_is_reported_and_acknowledged_after_storage():
    s = bound_session()
    events = s.receive_data(receipt_pdu(501), 1.0)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, ReceiptReceived)
    assert event.sequence == 501
    assert event.receipt.smsc_id == "A1B2C"
    assert event.receipt.raw_smsc_id == "0A1B2C"
    assert event.receipt.state == 2
    assert event.receipt.stat == "DELIVRD"
    assert s.data_to_send() == b""  # nothing until the caller has stored it
    assert s.unacknowledged == 1
    s.acknowledge(501)
    header, raw = sent_one(s)
    assert (header.command, header.sequence, header.status) == ("deliver_sm_resp", 501, 0)
    assert raw[16:] == b"\0"  # empty message_id
    assert s.unacknowledged == 0
    s.acknowledge(501)  # twice: logged, nothing sent
    assert s.data_to_send() == b""


def test_receipt_with_udhi_bit_is_still_a_receipt():
    s = bound_session()
    events = s.receive_data(receipt_pdu(7, esm_class=0x44), 1.0)
    assert isinstance(events[0], ReceiptReceived)


def test_data_sm_receipt_is_acknowledged_with_data_sm_resp():
    s = bound_session()
    events = s.receive_data(receipt_pdu(600, command="data_sm"), 1.0)
    assert [type(e) for e in events] == [ReceiptReceived]
    assert events[0].receipt.smsc_id == "A1B2C"
    s.acknowledge(600)
    header, _ = sent_one(s)
    assert (header.command, header.sequence, header.status) == ("data_sm_resp", 600, 0)


def test_acknowledge_with_error_status_asks_for_redelivery():
    s = bound_session()
    s.receive_data(receipt_pdu(8), 1.0)
    s.acknowledge(8, status=0x64)
    header, _ = sent_one(s)
    assert (header.command, header.sequence, header.status) == ("deliver_sm_resp", 8, 0x64)


def test_mo_message_is_reported():
    s = bound_session()
    events = s.receive_data(mo_pdu(33), 1.0)
    assert len(events) == 1 and isinstance(events[0], MessageReceived)
    message = events[0].message
    assert events[0].sequence == 33
    assert message.source_addr == "375291234567"
    assert message.destination_addr == "7575"
    assert message.data_coding == 8
    assert message.short_message.decode("utf-16-be") == "Да"
    s.acknowledge(33)
    header, _ = sent_one(s)
    assert (header.command, header.sequence) == ("deliver_sm_resp", 33)


@pytest.mark.parametrize(
    "body",
    [
        b"\0\x01\x01375291234567",  # source_addr runs past the PDU
        b"",  # no body at all
    ],
)
def test_undecodable_deliver_sm_is_still_answered_at_once(body):
    s = bound_session()
    with capture_logs() as logs:
        events = s.receive_data(raw_pdu(0x00000005, 4711, body), 1.0)
    assert events == []
    header, raw = sent_one(s)
    assert (header.command, header.sequence) == ("deliver_sm_resp", 4711)
    assert header.status != 0
    assert any(e["event"] == "smpp.deliver_undecodable" for e in logs)
    assert s.state is State.BOUND
    assert s.unacknowledged == 0


def test_receipt_without_any_id_is_answered_with_an_error():
    s = bound_session()
    pdu = receipt_pdu(12, receipted_message_id=None, short_message=b"stat:DELIVRD")
    assert s.receive_data(pdu, 1.0) == []
    header, _ = sent_one(s)
    assert (header.command, header.sequence, header.status) == ("deliver_sm_resp", 12, 0x08)


def test_deliver_sm_on_a_transmitter_bind_is_answered_not_reported():
    s = bound_session(bind_mode=BindMode.TRANSMITTER)
    assert s.receive_data(receipt_pdu(21), 1.0) == []
    header, _ = sent_one(s)
    assert (header.command, header.sequence, header.status) == ("deliver_sm_resp", 21, 0x04)


def test_deliver_sm_before_the_bind_completes_is_answered_not_reported():
    s = Session(config())
    s.start(0.0)
    sent(s)
    assert s.receive_data(receipt_pdu(22), 0.1) == []
    header, _ = sent_one(s)
    assert (header.command, header.sequence, header.status) == ("deliver_sm_resp", 22, 0x04)


def test_receiver_bind_reports_receipts():
    s = bound_session(bind_mode=BindMode.RECEIVER)
    events = s.receive_data(receipt_pdu(23), 1.0)
    assert [type(e) for e in events] == [ReceiptReceived]


def test_acknowledge_after_termination_is_a_no_op():
    s = bound_session()
    s.receive_data(receipt_pdu(9), 1.0)
    s.connection_lost()
    s.acknowledge(9)
    assert s.data_to_send() == b""


# --- unsupported requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    "command_id",
    [
        0x00000099,  # not an SMPP command at all
        0x00000008,  # cancel_sm
        0x00000003,  # query_sm
        0x00000004,  # submit_sm (we are not an SMSC)
        0x00000009,  # bind_transceiver
    ],
)
def test_unsupported_request_gets_generic_nack_invcmdid(command_id):
    s = bound_session()
    assert s.receive_data(raw_pdu(command_id, 31337, b"\0\0\0"), 1.0) == []
    header, raw = sent_one(s)
    assert header.command == "generic_nack"
    assert (header.sequence, header.status) == (31337, 0x03)
    assert len(raw) == 16
    assert s.state is State.BOUND


def test_alert_notification_is_not_answered():
    s = bound_session()
    assert s.receive_data(raw_pdu(0x00000102, 5, b"\0\0\0\0\0\0"), 1.0) == []
    assert s.data_to_send() == b""


# --- sequence numbers ------------------------------------------------------------------------


def test_sequence_wraps_to_one_never_zero():
    s = Session(config(), first_sequence=MAX_SEQUENCE - 1)
    s.start(0.0)
    header, _ = sent_one(s)
    assert header.sequence == MAX_SEQUENCE - 1
    s.receive_data(bind_resp_for(BindMode.TRANSCEIVER, header.sequence), 0.1)
    seqs = [s.submit(item(i), 1.0) for i in range(3)]
    assert seqs == [MAX_SEQUENCE, 1, 2]
    assert [h.sequence for h, _ in sent(s)] == seqs
    events = s.receive_data(submit_resp(MAX_SEQUENCE, "M"), 1.1)
    assert events == [SubmitAccepted(0, "M", "M")]


def test_sequence_skips_numbers_still_outstanding():
    s = Session(config(), first_sequence=MAX_SEQUENCE)
    s.start(0.0)  # takes 0x7FFFFFFF
    s.receive_data(bind_resp_for(BindMode.TRANSCEIVER, MAX_SEQUENCE), 0.1)
    assert s.submit(item("a"), 1.0) == 1
    s._next_seq = 1  # as if 2**31 numbers had gone by while "a" was outstanding
    assert s.submit(item("b"), 1.0) == 2


def test_first_sequence_is_validated():
    with pytest.raises(ValueError):
        Session(config(), first_sequence=0)


# --- framing ---------------------------------------------------------------------------------


def test_framing_error_terminates_with_outstanding_unconfirmed():
    s = bound_session()
    submit_n(s, ["a"])
    events = s.receive_data(b"\x00\x00\x00\x05garbage!", 2.0)
    assert len(events) == 2
    assert events[0] == SubmitUnconfirmed("a", events[1].reason)
    assert isinstance(events[1], Terminated)
    assert events[1].reason.startswith("framing error")
    assert s.state is State.CLOSED


def test_several_pdus_in_one_feed():
    s = bound_session()
    seqs = submit_n(s, ["a", "b"])
    sent(s)
    data = (
        submit_resp(seqs["a"], "1")
        + encode("enquire_link", 50)
        + receipt_pdu(51)
        + submit_resp(seqs["b"], status=0x58)
    )
    events = s.receive_data(data, 2.0)
    assert events[0] == SubmitAccepted("a", "1", "1")
    assert isinstance(events[1], ReceiptReceived) and events[1].sequence == 51
    assert events[2] == SubmitRejected("b", 0x58, True)
    header, _ = sent_one(s)
    assert (header.command, header.sequence) == ("enquire_link_resp", 50)


def test_one_pdu_split_across_feeds():
    s = bound_session()
    seq = s.submit(item("a"), 1.0)
    data = submit_resp(seq, "ABCDEF") + receipt_pdu(52)
    events = []
    for i in range(len(data)):
        events += s.receive_data(data[i:i + 1], 2.0)
    assert events[0] == SubmitAccepted("a", "ABCDEF", "ABCDEF")
    assert isinstance(events[1], ReceiptReceived) and events[1].sequence == 52
    assert len(events) == 2


def test_data_to_send_coalesces():
    s = bound_session()
    submit_n(s, ["a", "b", "c"])
    data = s.data_to_send()
    assert len(Framer().feed(data)) == 3
    assert s.data_to_send() == b""


# --- config ----------------------------------------------------------------------------------


def test_config_validation():
    # Checked once, by smppd.config, naming the key; SessionConfig has no checks of its own.
    with pytest.raises(ValueError, match=r"route\.op\.window"):
        config(window=0)
    with pytest.raises(ValueError, match=r"route\.op\.receipt_id_base"):
        config(receipt_id_base="16")
    with pytest.raises(ValueError, match=r"route\.op\.response_timeout"):
        config(response_timeout=0)
    assert config(bind_mode="receiver").bind_mode is BindMode.RECEIVER


def test_deliver_sm_after_our_unbind_is_answered_try_later_at_once():
    # issue 14.4: once our unbind is out, a store write could finish after the unbind_resp,
    # and its answer would never go out; the SMSC is told to deliver it again instead.
    s = bound_session()
    s.unbind(1.0)
    sent_one(s)
    assert s.receive_data(receipt_pdu(601), 1.1) == []
    header, _ = sent_one(s)
    assert (header.command, header.sequence, header.status) == ("deliver_sm_resp", 601, 0x64)
    assert s.unacknowledged == 0


def test_query_sm_answered_with_the_smscs_state():
    from smppd.smpp.events import QueryAnswered, QueryFailed
    s = bound_session()
    seq = s.query(("q", 1, 0), "5A000001", "MyShop", 5, 0, 1.0)
    header, raw = sent_one(s)
    assert (header.command, header.sequence) == ("query_sm", seq)
    pdu = decode(raw)
    assert (pdu.message_id, pdu.source_addr, pdu.source_addr_ton) == (b"5A000001", b"MyShop", 5)
    resp = encode("query_sm_resp", seq, message_id="5A000001", final_date="", message_state=2, error_code=0)
    assert s.receive_data(resp, 1.2) == [QueryAnswered(("q", 1, 0), 2, 0)]
    seq2 = s.query("b", "77", "MyShop", 5, 0, 2.0)
    assert s.receive_data(generic_nack(seq2, 0x03), 2.1) == [QueryFailed("b", 0x03)]
    s.query("c", "78", "MyShop", 5, 0, 3.0)
    assert s.next_deadline() == 13.0
    assert s.handle_timers(13.0) == [QueryFailed("c", 0)]
