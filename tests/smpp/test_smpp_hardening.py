"""Issue 3, sans-I/O parts: framing after garbage, smpplib defects proven not to bite."""

from __future__ import annotations

import struct

import pytest

from smppd.smpp.encode import _SM_FAST, _encode_fast, _encode_smpplib, encode, generic_nack
from smppd.smpp.pdu import (
    COMMAND_IDS,
    HEADER,
    MAX_PDU_LENGTH,
    TAG_SAR_MSG_REF_NUM,
    Framer,
    FramingError,
    PduDecodeError,
    decode,
    parse_tlvs,
    read_header,
    response_message_id,
)
from smppd.smpp.events import ReceiptReceived, SubmitAccepted, SubmitUnconfirmed, Terminated

from tests.rigs.session_rig import bound_session, receipt_pdu, sent, submit_n, submit_resp


# --- framing -----------------------------------------------------------------------


def test_framer_returns_good_pdus_before_a_bad_length_then_raises():
    framer = Framer()
    good = encode("enquire_link", 7)
    pdus = framer.feed(good + struct.pack(">L", 5) + b"junk")
    assert pdus == [good]
    assert framer.error is not None
    with pytest.raises(FramingError):
        framer.feed(encode("enquire_link", 8))


@pytest.mark.parametrize("length", [0, 15, MAX_PDU_LENGTH + 1, 0xFFFFFFFF])
def test_framer_rejects_length_outside_bounds(length):
    with pytest.raises(FramingError):
        Framer().feed(struct.pack(">L", length) + b"\0" * 12)


def test_session_handles_pdus_before_garbage_then_drops_the_connection():
    s = bound_session()
    seqs = submit_n(s, ["a", "b"])
    sent(s)
    data = submit_resp(seqs["a"], "1A") + receipt_pdu(77) + struct.pack(">L", 3) + b"xyz"
    events = s.receive_data(data, 2.0)
    assert events[0] == SubmitAccepted("a", "1A", "1A")
    assert isinstance(events[1], ReceiptReceived) and events[1].sequence == 77
    assert events[2] == SubmitUnconfirmed("b", events[3].reason)
    assert isinstance(events[3], Terminated) and events[3].reason.startswith("framing error")


# --- long messages: methods, codings, counts ----------------------------------------

from smppd import text  # noqa: E402
from smppd.config import SmppRouteConfig  # noqa: E402
from smppd.smpp.segments import build_segments, route_encoding  # noqa: E402
from smppd.model import OpenMessage  # noqa: E402


def _cfg(**kw):
    return SmppRouteConfig(name="r", host="h", port=1, system_id="s", password="p", **kw)


@pytest.mark.parametrize("method,expected", [("udh8", 3), ("udh16", 3), ("sar", 3), ("payload", 1)])
def test_segment_count_equals_submit_sm_built(method, expected):
    body = "Привет, мир! " * 12  # 156 units
    cfg = _cfg(long_method=method)
    count = route_encoding(cfg, body).segments
    jobs = build_segments(OpenMessage(1, "r", "Shop", "+375291234567", body, tuple(range(count)), 7), cfg)
    assert count == len(jobs) == expected


def test_udh16_capacity_changes_the_count():
    body = "x" * 153 * 2  # exactly two 8-bit-ref parts, three with 16-bit refs (152 each)
    assert route_encoding(_cfg(long_method="udh8"), body).segments == 2
    assert route_encoding(_cfg(long_method="udh16"), body).segments == 3


def test_ucs2_surrogate_pair_never_split_in_any_method():
    body = "я" * 66 + "\U0001F600" + "я" * 10
    for method in ("udh8", "sar"):
        enc = route_encoding(_cfg(long_method=method), body)
        assert "".join(p.decode("utf-16-be") for p in enc.parts) == body


def test_latin_coding_counts_extension_characters_as_two_septets():
    body = "{" * 80  # 160 septets: one part as GSM, and as Latin-1 too
    enc = text.encode(body, latin_coding=0x03)
    assert enc.data_coding == 0x03 and enc.segments == 1 and enc.parts[0] == b"{" * 80
    assert text.encode(body + "{", latin_coding=0x03).segments == 2


def test_latin_coding_falls_back_to_gsm_for_characters_latin1_lacks():
    enc = text.encode("Δ and €", latin_coding=0x03)
    assert enc.data_coding == 0x00


def test_concat_ref_uses_the_stored_per_destination_counter():
    body = "x" * 200
    m = OpenMessage(1000, "r", "Shop", "+375291234567", body, (0, 1), 0x1234)
    udh8 = build_segments(m, _cfg())[0].submit.short_message
    udh16 = build_segments(m, _cfg(long_method="udh16"))[0].submit.short_message
    assert udh8[:6] == bytes([5, 0, 3, 0x34, 2, 1])
    assert udh16[:7] == bytes([6, 8, 4, 0x12, 0x34, 2, 1])


# --- smpplib defects not covered in test_codec -------------------------------------

import smpplib.smpp  # noqa: E402


def test_defect_1_make_pdu_without_client_fails_but_codec_encode_does_not():
    with pytest.raises(AttributeError):
        smpplib.smpp.make_pdu("enquire_link")
    assert read_header(encode("enquire_link", 5)).sequence == 5


def test_defect_12_concat_ref_is_not_random():
    m = OpenMessage(1, "r", "Shop", "+375291234567", "y" * 400, (0, 1, 2), 9)
    refs = {build_segments(m, _cfg())[0].submit.short_message[3] for _ in range(20)}
    assert refs == {9}


def test_defect_16_generic_nack_does_not_end_our_session():
    from smppd.smpp.session import State

    s = bound_session()
    s.receive_data(generic_nack(999, 0x03), 2.0)
    assert s.state is State.BOUND


# --- the hand-built hot PDUs are byte-identical to smpplib's ------------------------

import random  # noqa: E402


@pytest.mark.parametrize("command", ["submit_sm", "deliver_sm"])
def test_fast_sm_encoder_matches_smpplib(command):
    rng = random.Random(command)
    for i in range(200):
        fields = {}
        for name, kind, limit in _SM_FAST:
            if rng.random() < 0.3:
                continue  # absent: both must default the same way
            if name in ("schedule_delivery_time", "validity_period"):
                fields[name] = rng.choice(["", "000001000000000R"])
            elif kind == "cstr":
                fields[name] = "".join(rng.choice("abcXYZ019 +é") for _ in range(rng.randint(0, limit - 1)))
            elif kind == "int1":
                fields[name] = rng.randint(0, 255)
            else:
                fields[name] = bytes(rng.randrange(256) for _ in range(rng.randint(0, limit)))
        status = rng.choice([0, 0, 0x58])
        fast = _encode_fast(command, COMMAND_IDS[command], i + 1, status, dict(fields))
        assert fast == _encode_smpplib(command, i + 1, status, dict(fields)), fields


@pytest.mark.parametrize("command", ["submit_sm_resp", "deliver_sm_resp", "data_sm_resp", "enquire_link",
                                     "enquire_link_resp", "unbind", "unbind_resp", "generic_nack"])
def test_fast_response_encoders_match_smpplib(command):
    cases = [{}] if "resp" not in command or command in ("enquire_link_resp", "unbind_resp") else \
        [{}, {"message_id": ""}, {"message_id": "0E999F21"}]
    for fields in cases:
        for status in (0, 0x64):
            fast = _encode_fast(command, COMMAND_IDS[command], 42, status, dict(fields))
            assert fast is not None
            assert fast == _encode_smpplib(command, 42, status, dict(fields))


def test_fast_encoder_keeps_the_checks():
    with pytest.raises(ValueError, match="source_addr"):
        encode("submit_sm", 1, source_addr="x" * 21)
    with pytest.raises(ValueError, match="short_message"):
        encode("submit_sm", 1, short_message=b"x" * 255)
    with pytest.raises(TypeError):
        encode("submit_sm", 1, esm_class="4")
    with pytest.raises(ValueError):
        encode("submit_sm", 1, data_coding=256)
    with pytest.raises(ValueError, match="validity_period"):
        encode("submit_sm", 1, validity_period="1d")
    # TLVs still go through smpplib and come out right
    raw = encode("submit_sm", 1, destination_addr="375291234567", sar_msg_ref_num=7,
                       sar_total_segments=2, sar_segment_seqnum=1, short_message=b"hi")
    assert parse_tlvs(raw)[TAG_SAR_MSG_REF_NUM] == b"\x00\x07"


def test_response_message_id_reads_what_smpplib_reads():
    for mid in ("", "5A000001", "0e999f21"):
        raw = encode("submit_sm_resp", 3, message_id=mid)
        assert response_message_id(raw) == mid == (decode(raw).message_id or b"").decode()
    assert response_message_id(encode("submit_sm_resp", 3, status=0x58)) == ""
    with pytest.raises(PduDecodeError):
        response_message_id(HEADER.pack(20, 0x80000004, 0, 3) + b"abcd")  # no NUL


async def test_pending_receipts_are_bounded(tmp_path):
    from smppd.model import Status
    from smppd.store import Store

    store = Store(str(tmp_path / "p.db"))
    await store.open()
    try:
        for i in range(5):
            assert not await store.apply_receipt("life", f"X{i}", Status.DELIVERED, "DELIVRD")
        assert await store.expire_pending_receipts(max_pending=3) == 2
        counts = await store.counts()
        assert (counts["receipts_pending"], counts["receipts_unmatched"]) == (3, 2)
    finally:
        await store.close()
