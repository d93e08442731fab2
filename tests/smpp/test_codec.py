"""The SMPP codec (smppd/smpp/pdu.py, encode.py, receipts.py): framing, encode/decode over smpplib, TLVs, receipts (no sockets).

PDUs that smpplib cannot produce (TLVs without NUL, 2-octet message_state, TLVs it
refuses in deliver_sm, truncated bodies) are built by hand (tests/rigs/codec_rig.py).

The second half holds the codec's fast paths to the general code they stand for, over
many deterministically generated inputs: each gives exactly what the general code gives,
or steps aside.
"""

from __future__ import annotations

import random
import struct
from typing import Any, Callable

import pytest

from smppd.smpp import receipts
from smppd.smpp.encode import _check_sequence, _encode_smpplib, empty_id_resp, encode, generic_nack
from smppd.smpp.pdu import (
    COMMAND_IDS,
    COMMAND_NAMES,
    DATA_SM,
    DELIVER_SM,
    ESME_RINVCMDID,
    ESME_RINVCMDLEN,
    ESME_RINVMSGLEN,
    ESME_RINVPASWD,
    ESME_RTHROTTLED,
    MAX_PDU_LENGTH,
    MAX_SEQUENCE,
    STATUS_NAMES,
    SUBMIT_SM,
    TAG_RECEIPTED_MESSAGE_ID,
    TAG_SAR_MSG_REF_NUM,
    TAG_SAR_SEGMENT_SEQNUM,
    TAG_SAR_TOTAL_SEGMENTS,
    TEMPORARY_STATUSES,
    Framer,
    FramingError,
    Header,
    PduDecodeError,
    checked_header,
    decode,
    is_temporary,
    parse_tlvs,
    read_header,
    response_message_id,
    status_name,
    walk_mandatory,
    walk_tlvs,
)
from smppd.smpp.receipts import (
    _RECEIPT_CANONICAL,
    Receipt,
    ShortMessage,
    _deliver_sm_fast,
    _parse_receipt_text,
    _parse_receipt_text_general,
    canonical_smsc_id,
    is_receipt,
    parse_deliver,
    parse_receipt,
)

from tests.rigs.codec_rig import cstr, deliver, pdu, receipt_text, sm_body, tlv

# --- framing -----------------------------------------------------------------------


def test_framer_joins_a_pdu_split_across_feeds() -> None:
    raw = encode("enquire_link", 5)
    framer = Framer()
    out: list[bytes] = []
    for i in range(len(raw)):
        out += framer.feed(raw[i:i + 1])
    assert out == [raw]
    assert framer.pending == 0


def test_framer_splits_several_pdus_in_one_feed_and_keeps_the_rest() -> None:
    a = encode("enquire_link", 1)
    b = encode("submit_sm_resp", 2, message_id="ABC")
    c = encode("unbind", 3)
    framer = Framer()
    assert framer.feed(a + b + c[:5]) == [a, b]
    assert framer.pending == 5
    assert framer.feed(c[5:]) == [c]


@pytest.mark.parametrize("length", [0, 15, MAX_PDU_LENGTH + 1, 0xFFFFFFFF])
def test_framer_rejects_bad_command_length_as_soon_as_it_is_seen(length: int) -> None:
    with pytest.raises(FramingError):
        Framer().feed(struct.pack(">L", length))  # no need to wait for the header


def test_framer_accepts_the_limits() -> None:
    framer = Framer()
    assert framer.feed(pdu(0x15, 1)) == [pdu(0x15, 1)]
    big = struct.pack(">LLLL", MAX_PDU_LENGTH, 0x4, 0, 1) + bytes(MAX_PDU_LENGTH - 16)
    assert framer.feed(big) == [big]


def test_read_header() -> None:
    header = read_header(generic_nack(9, ESME_RINVCMDID))
    assert header == Header(16, 0x80000000, 3, 9)
    assert header.is_response and header.command == "generic_nack"
    with pytest.raises(FramingError):
        read_header(b"\0" * 15)


def test_command_tables() -> None:
    assert COMMAND_IDS["generic_nack"] == 0x80000000
    assert COMMAND_NAMES[0x80000009] == "bind_transceiver_resp"
    assert COMMAND_NAMES[0x103] == "data_sm"


# --- encode / decode ---------------------------------------------------------------


def test_bind_transceiver_round_trip_is_exact_on_the_wire() -> None:
    raw = encode(
        "bind_transceiver", 1, system_id="smppd", password="secret", system_type="",
        interface_version=0x34, addr_ton=0, addr_npi=0, address_range="",
    )
    assert raw == pdu(0x09, 1, cstr("smppd") + cstr("secret") + cstr("") + bytes([0x34, 0, 0]) + cstr(""))
    bind = decode(raw)
    assert bind.command == "bind_transceiver"
    assert (bind.sequence, bind.system_id, bind.password, bind.interface_version) == (
        1, b"smppd", b"secret", 0x34,
    )


def test_bind_resp_with_sc_interface_version_and_error_resp_without_body() -> None:
    ok = encode("bind_transceiver_resp", 1, system_id="SMSC", sc_interface_version=0x34)
    assert ok == pdu(0x80000009, 1, cstr("SMSC") + tlv(0x0210, b"\x34"))
    assert decode(ok).sc_interface_version == 0x34
    refused = encode("bind_transceiver_resp", 1, status=ESME_RINVPASWD, system_id="SMSC")
    assert refused == pdu(0x80000009, 1, status=0x0E)  # SMPP 3.4 §4.1.2: no body on error
    assert decode(refused).status == 0x0E


def test_submit_sm_ucs2_with_udh_round_trip() -> None:
    udh = b"\x05\x00\x03\x2A\x02\x01"
    body = udh + "Ваш код: 1234".encode("utf-16-be")
    raw = encode(
        "submit_sm", 7, service_type="", source_addr_ton=5, source_addr_npi=0,
        source_addr="MyBrand", dest_addr_ton=1, dest_addr_npi=1,
        destination_addr="375291234567", esm_class=0x40, registered_delivery=1,
        data_coding=0x08, short_message=body,
    )
    header = read_header(raw)
    assert (header.command_id, header.sequence, header.length) == (0x04, 7, len(raw))
    sm = decode(raw)
    assert sm.short_message == body and sm.sm_length == len(body)
    assert (sm.esm_class, sm.data_coding, sm.registered_delivery) == (0x40, 0x08, 1)
    assert (sm.source_addr, sm.source_addr_ton, sm.destination_addr) == (b"MyBrand", 5, b"375291234567")
    # our walker agrees with smpplib on where the body ends
    assert parse_tlvs(raw) == {}


def test_submit_sm_with_sar_tlvs_and_message_payload() -> None:
    raw = encode(
        "submit_sm", 8, source_addr="MyBrand", destination_addr="375291234567",
        short_message=b"part one", sar_msg_ref_num=0x1234, sar_total_segments=2,
        sar_segment_seqnum=1,
    )
    tlvs = parse_tlvs(raw)
    assert tlvs[TAG_SAR_MSG_REF_NUM] == b"\x12\x34"
    assert tlvs[TAG_SAR_TOTAL_SEGMENTS] == b"\x02"
    assert tlvs[TAG_SAR_SEGMENT_SEQNUM] == b"\x01"
    sm = decode(raw)
    assert (sm.sar_msg_ref_num, sm.sar_total_segments, sm.sar_segment_seqnum) == (0x1234, 2, 1)

    long_text = b"x" * 1000  # message_payload is not bound by smpplib's max=260
    raw = encode("submit_sm", 9, source_addr="A", destination_addr="1", message_payload=long_text)
    sm = decode(raw)
    assert sm.sm_length == 0 and sm.message_payload == long_text
    with pytest.raises(ValueError, match="exclusive"):
        encode("submit_sm", 9, short_message=b"a", message_payload=b"b")


def test_deliver_sm_round_trip() -> None:
    raw = encode(
        "deliver_sm", 3, source_addr="375291234567", destination_addr="MyBrand",
        esm_class=0x04, short_message=receipt_text(), receipted_message_id="5A000001",
        message_state=2,
    )
    dlr = decode(raw)
    assert dlr.receipted_message_id == b"5A000001" and dlr.message_state == 2
    assert parse_tlvs(raw)[TAG_RECEIPTED_MESSAGE_ID] == b"5A000001\0"


def test_deliver_sm_resp_carries_an_empty_message_id() -> None:
    assert encode("deliver_sm_resp", 77) == pdu(0x80000005, 77, b"\0")


def test_sequence_is_set_on_the_pdu_not_ignored() -> None:
    # defect 2: smpplib ignores sequence= and would number everything 0
    assert read_header(encode("enquire_link", 0x7FFFFFFF)).sequence == 0x7FFFFFFF
    assert read_header(encode("enquire_link_resp", 12)).sequence == 12


def test_decode_never_consumes_a_sequence_number() -> None:
    # defect 3: parsing a request draws client.next_sequence(); ours must come back intact
    raw = encode("submit_sm", 41, source_addr="A", destination_addr="1", short_message=b"x")
    assert [decode(raw).sequence for _ in range(3)] == [41, 41, 41]
    assert read_header(encode("submit_sm", 42, short_message=b"x")).sequence == 42


@pytest.mark.parametrize("sequence", [0, 0x80000000, -1])
def test_request_sequence_out_of_range(sequence: int) -> None:
    with pytest.raises(ValueError, match="sequence"):
        encode("enquire_link", sequence)


def test_generic_nack() -> None:
    raw = generic_nack(5, ESME_RINVCMDID)
    assert raw == pdu(0x80000000, 5, status=3)
    nack = decode(raw)
    assert nack.command == "generic_nack" and nack.is_response() and nack.status == 3


def test_error_submit_sm_resp_has_no_body_and_no_message_id() -> None:
    raw = encode("submit_sm_resp", 5, status=ESME_RTHROTTLED, message_id="ignored")
    assert len(raw) == 16
    resp = decode(raw)
    assert resp.status == 0x58 and resp.message_id is None


# --- encode validation (defects 9, 14) ---------------------------------------------


def test_over_long_source_addr_is_refused_not_truncated() -> None:
    with pytest.raises(ValueError, match="source_addr"):
        encode("submit_sm", 1, source_addr="1" * 21, destination_addr="1")
    encode("submit_sm", 1, source_addr="1" * 20, destination_addr="1")  # 20 + NUL fits


def test_255_octet_short_message_is_refused() -> None:
    with pytest.raises(ValueError, match="short_message"):
        encode("submit_sm", 1, short_message=b"x" * 255)
    raw = encode("submit_sm", 1, short_message=b"x" * 254)
    assert decode(raw).sm_length == 254


def test_too_long_password_error_does_not_echo_it() -> None:
    with pytest.raises(ValueError, match="password") as info:
        encode("bind_transmitter", 1, system_id="smppd", password="sup3rs3cret")
    assert "sup3rs3cret" not in str(info.value)


def test_field_types_and_charsets() -> None:
    with pytest.raises(TypeError, match="source_addr"):
        encode("submit_sm", 1, source_addr=b"MyBrand")
    with pytest.raises(TypeError, match="short_message"):
        encode("submit_sm", 1, short_message="text")
    with pytest.raises(ValueError, match="source_addr"):
        encode("submit_sm", 1, source_addr="Магазин")
    with pytest.raises(ValueError, match="esm_class"):
        encode("submit_sm", 1, esm_class=256)
    with pytest.raises(ValueError, match="no field"):
        encode("submit_sm", 1, destination="375291234567")  # a typo is not ignored
    with pytest.raises(ValueError, match="validity_period"):
        encode("submit_sm", 1, validity_period="1d")
    with pytest.raises(ValueError, match="cannot encode"):
        encode("cancel_sm", 1)


# --- decode failures ---------------------------------------------------------------


def test_truncated_deliver_sm_is_a_decode_error_with_its_sequence() -> None:
    full = deliver(sm_body(short_message=receipt_text()), sequence=1234)
    cut = full[:40]
    cut = struct.pack(">L", len(cut)) + cut[4:]  # a consistent but truncated PDU (defect 8)
    for parse in (decode, parse_receipt, parse_tlvs):
        with pytest.raises(PduDecodeError) as info:
            parse(cut)
        assert info.value.sequence == 1234 and info.value.command_id == DELIVER_SM


def test_sm_length_past_the_end_is_a_decode_error() -> None:
    body = sm_body(short_message=b"hello")[:-2]  # sm_length says 5, 3 octets follow
    with pytest.raises(PduDecodeError) as info:
        decode(deliver(body, sequence=8))
    assert info.value.nack_status == ESME_RINVMSGLEN


def test_command_length_must_match_the_bytes() -> None:
    raw = encode("enquire_link", 4) + b"\0"
    with pytest.raises(PduDecodeError) as info:
        decode(raw)
    assert (info.value.sequence, info.value.nack_status) == (4, ESME_RINVCMDLEN)


@pytest.mark.parametrize("command_id", [0x07, 0x08, 0x21, 0x0B, 0x99])
def test_unknown_or_unsupported_command_asks_for_rinvcmdid(command_id: int) -> None:
    with pytest.raises(PduDecodeError) as info:
        decode(pdu(command_id, 6))
    assert (info.value.command_id, info.value.sequence) == (command_id, 6)
    assert info.value.nack_status == ESME_RINVCMDID


# --- receipts ------------------------------------------------------------------------


def test_receipt_text_only() -> None:
    raw = deliver(sm_body(short_message=receipt_text("0A1B2C3D", "UNDELIV", "001")))
    assert parse_receipt(raw) == Receipt(
        smsc_id="A1B2C3D", raw_smsc_id="0A1B2C3D", state=None, stat="UNDELIV",
        error="001", submit_date="2403011200", done_date="2403011201",
    )


def test_receipt_tlv_only() -> None:
    body = sm_body(short_message=b"") + tlv(0x001E, b"5a000001\0") + tlv(0x0427, b"\x02")
    receipt = parse_receipt(deliver(body))
    assert receipt is not None
    assert (receipt.smsc_id, receipt.raw_smsc_id, receipt.state, receipt.stat) == (
        "5A000001", "5a000001", 2, None,
    )


def test_receipt_tlv_wins_over_a_truncated_text_id() -> None:
    body = (
        sm_body(short_message=receipt_text("5A00000", "DELIVRD"))
        + tlv(0x001E, b"5A000001\0") + tlv(0x0427, b"\x02")
    )
    receipt = parse_receipt(deliver(body))
    assert receipt is not None
    assert (receipt.smsc_id, receipt.state, receipt.stat) == ("5A000001", 2, "DELIVRD")


def test_esm_class_0x44_is_a_receipt_and_mo_is_not() -> None:
    assert is_receipt(0x04) and is_receipt(0x44) and is_receipt(0x08)
    assert is_receipt(0x20) and not is_receipt(0x00) and not is_receipt(0x40)
    assert parse_receipt(deliver(sm_body(esm_class=0x44, short_message=receipt_text())))
    mo = deliver(sm_body(esm_class=0x00, short_message=b"id:123 stat:DELIVRD is just text"))
    assert parse_receipt(mo) is None


def test_receipted_message_id_tlv_alone_marks_a_receipt() -> None:
    # some SMSCs forget the esm_class bits; the TLV never appears in an MO message
    body = sm_body(esm_class=0x00) + tlv(0x001E, b"77\0") + tlv(0x0427, b"\x05")
    receipt = parse_receipt(deliver(body))
    assert receipt is not None and receipt.smsc_id == "77" and receipt.state == 5


@pytest.mark.parametrize(
    ("text_id", "base", "expected"),
    [
        ("5A000001", "hex", str(0x5A000001)),
        ("1509949441", "dec", "1509949441"),
        ("0e999f21", "as-is", "E999F21"),
        ("000", "as-is", "0"),
        ("00123", "dec", "123"),
    ],
)
def test_receipt_ids_in_each_base(text_id: str, base: str, expected: str) -> None:
    receipt = parse_receipt(deliver(sm_body(short_message=receipt_text(text_id))), id_base=base)
    assert receipt is not None and receipt.smsc_id == expected and receipt.raw_smsc_id == text_id


def test_canonical_smsc_id() -> None:
    assert canonical_smsc_id(" 0e999f21\0") == "E999F21"
    assert canonical_smsc_id("E999F21") == canonical_smsc_id("0e999f21")
    assert canonical_smsc_id("5A000000", "hex") == canonical_smsc_id("1509949440", "dec")
    assert canonical_smsc_id("0x5A", "as-is") == "X5A"
    for raw, base in [("xyz", "hex"), ("5A", "dec"), ("", "as-is"), ("\0 ", "hex"), ("1", "oct")]:
        with pytest.raises(ValueError):
            canonical_smsc_id(raw, base)


def test_receipt_id_that_the_base_cannot_parse_is_a_decode_error() -> None:
    with pytest.raises(PduDecodeError):
        parse_receipt(deliver(sm_body(short_message=receipt_text("ZZ-1"))), id_base="hex")


def test_receipt_without_any_id_is_a_decode_error() -> None:
    with pytest.raises(PduDecodeError) as info:
        parse_receipt(deliver(sm_body(short_message=b"stat:DELIVRD err:000"), sequence=3))
    assert info.value.sequence == 3


def test_receipted_message_id_without_nul_keeps_its_last_char() -> None:
    body = sm_body() + tlv(0x001E, b"0A1B2C3D") + tlv(0x0427, b"\x02")
    raw = deliver(body)
    assert decode(raw).receipted_message_id == b"0A1B2C3"  # defect 6, for the record
    receipt = parse_receipt(raw)
    assert receipt is not None and receipt.raw_smsc_id == "0A1B2C3D"


def test_two_octet_message_state() -> None:
    raw = deliver(sm_body(short_message=receipt_text()) + tlv(0x0427, b"\x00\x02"), sequence=91)
    with pytest.raises(PduDecodeError) as info:
        decode(raw)  # defect 7: smpplib raises struct.error
    assert info.value.sequence == 91
    receipt = parse_receipt(raw)
    assert receipt is not None and receipt.state == 2


@pytest.mark.parametrize(
    "extra",
    [tlv(0x001D, b"delivered to handset\0"), tlv(0x0425, b"\x01")],
    ids=["additional_status_info_text", "delivery_failure_reason"],
)
def test_tlvs_smpplib_refuses_in_deliver_sm(extra: bytes) -> None:
    raw = deliver(sm_body(short_message=receipt_text()) + tlv(0x001E, b"5A000001\0") + extra, 55)
    with pytest.raises(PduDecodeError) as info:
        decode(raw)  # defect 4: KeyError even with allow_unknown_opt_params
    assert (info.value.command_id, info.value.sequence) == (DELIVER_SM, 55)
    receipt = parse_receipt(raw)
    assert receipt is not None and receipt.smsc_id == "5A000001" and receipt.stat == "DELIVRD"


def test_vendor_tlv_is_skipped() -> None:
    raw = deliver(sm_body(short_message=receipt_text()) + tlv(0x1400, b"\x01\x02\x03") + tlv(0x0427, b"\x02"))
    assert decode(raw).message_state == 2  # defect 5: fine with allow_unknown_opt_params
    assert parse_tlvs(raw)[0x1400] == b"\x01\x02\x03"
    receipt = parse_receipt(raw)
    assert receipt is not None and receipt.state == 2


@pytest.mark.parametrize("word", ["DELIVERED", "UNDELIVERABLE", "REJECTED", "ENROUTE", "delivrd"])
def test_a1_full_state_words(word: str) -> None:
    receipt = parse_receipt(deliver(sm_body(short_message=receipt_text(stat=word))))
    assert receipt is not None and receipt.stat == word.upper()


def test_receipt_text_variants() -> None:
    text = b"id:12345 submit_date:240301120000 done_date:240301120100 Stat:EXPIRED Err:0x1F Text:stat:DELIVRD"
    receipt = parse_receipt(deliver(sm_body(esm_class=0x04, short_message=text)))
    assert receipt is not None
    assert (receipt.stat, receipt.error) == ("EXPIRED", "0x1F")  # the user's text does not count
    assert (receipt.submit_date, receipt.done_date) == ("240301120000", "240301120100")


def test_ucs2_receipt_text() -> None:
    text = receipt_text("ABC", "UNDELIV").decode().encode("utf-16-be")
    receipt = parse_receipt(deliver(sm_body(short_message=text, data_coding=0x08)))
    assert receipt is not None and (receipt.smsc_id, receipt.stat) == ("ABC", "UNDELIV")


def test_network_error_code_tlv() -> None:
    body = sm_body() + tlv(0x001E, b"9\0") + tlv(0x0427, b"\x05") + tlv(0x0423, b"\x03\x00\x01")
    receipt = parse_receipt(deliver(body))
    assert receipt is not None and receipt.error == receipt.network_error == "GSM:0x0001"
    body = sm_body(short_message=receipt_text(err="069")) + tlv(0x0423, b"\x08\x01\x00")
    receipt = parse_receipt(deliver(body))
    assert receipt is not None and (receipt.error, receipt.network_error) == ("069", "SMSC:0x0100")


def test_data_sm_receipt_in_message_payload() -> None:
    body = (
        cstr("") + bytes([1, 1]) + cstr("375291234567") + bytes([5, 0]) + cstr("MyBrand")
        + bytes([0x04, 0, 0])  # esm_class, registered_delivery, data_coding
        + tlv(0x0424, receipt_text("FF01", "REJECTD"))
    )
    receipt = parse_receipt(pdu(DATA_SM, 5, body), id_base="hex")
    assert receipt is not None and (receipt.smsc_id, receipt.stat) == ("65281", "REJECTD")


def test_parse_receipt_refuses_other_commands() -> None:
    with pytest.raises(ValueError):
        parse_receipt(encode("submit_sm", 1, short_message=b"x"))


# --- MO ------------------------------------------------------------------------------


def test_parse_deliver_mo() -> None:
    text = "Привет".encode("utf-16-be")
    raw = deliver(sm_body(esm_class=0x00, short_message=text, data_coding=0x08) + tlv(0x001D, b"x\0"))
    mo = parse_deliver(raw)
    assert mo == ShortMessage(
        source_addr="375291234567", destination_addr="MyBrand", esm_class=0,
        data_coding=0x08, short_message=text,
    )
    payload = deliver(sm_body(esm_class=0x00) + tlv(0x0424, b"long text"))
    assert parse_deliver(payload).short_message == b"long text"


# --- statuses --------------------------------------------------------------------------


def test_status_names_and_classes() -> None:
    assert status_name(0x58) == "ESME_RTHROTTLED (0x58)"
    assert status_name(0) == "ESME_ROK (0x00)"
    assert status_name(0xAB) == "0x000000AB"
    assert STATUS_NAMES[0x0E] == "ESME_RINVPASWD"
    assert TEMPORARY_STATUSES == {0x08, 0x14, 0x58, 0x64}
    assert is_temporary(0x58) and is_temporary(0x14)
    assert not is_temporary(0x0A) and not is_temporary(0x45)


def test_smpp_constants_are_defined_in_pdu_only() -> None:
    """Command ids, command_status values, TLV tags and esm_class bits have one home
    (smppd/smpp/pdu.py, issue 15): a copy elsewhere drifts.  The simulators, the SMSC's
    side, are another peer and keep their own."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2] / "smppd"
    constant = re.compile(
        r"^\s*_?(ESME_\w+|TAG_\w+|ESM_CLASS_\w+|CREDENTIAL_STATUSES|GENERIC_NACK|BIND_\w+|SUBMIT_SM\w*"
        r"|DELIVER_SM\w*|DATA_SM\w*|UNBIND\w*|ENQUIRE_LINK\w*|QUERY_SM\w*|ALERT_NOTIFICATION)\s*(:[^=]*)?="
        r"\s*(0x[0-9A-Fa-f]+|\d+|frozenset\(\{\s*0x)"  # a literal value: a copy, not an import or a derivation
    )
    copies = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in root.rglob("*.py")
        if path.relative_to(root).as_posix() not in {"smpp/pdu.py"}
        and "sims" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if constant.match(line)
    ]
    assert copies == []


# === the fast paths ========================================================================
# The codec's fast paths give exactly what the general code gives, or step aside.
#
# Each fast path (the canonical receipt text, the deliver_sm field walk) must either
# produce the very result of the general code or decline, so that the general code
# decides, errors included.  These tests run both over many inputs, generated
# deterministically: canonical receipts, every spelling variant we know of, texts
# mutated character by character, and PDUs truncated or corrupted at every octet.


# --- receipt text ----------------------------------------------------------------------

_CANONICAL = (
    "id:{id} sub:001 dlvrd:{dlvrd} submit date:2611220555 done date:2611220556 "
    "stat:{stat} err:{err} text:{text}"
)

# Characters that stress the general parser's edges: key names, colons, case, underscores,
# every kind of whitespace str.split() knows, non-ASCII.
_ALPHABET = "idsubmtaeoxrn_:IDSTA 0123456789\t\n\xa0\x85\x1c-:;!~é"


def _texts(rng: random.Random) -> list[str]:
    ids = ["5A000001", "0e999f21", "123", "a-b_c", "x!~;", "ID", "stat", "0"]
    stats = ["DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "delivrd", "ACCEPTD"]
    texts = [
        _CANONICAL.format(id=i, dlvrd=d, stat=s, err=e, text=t)
        for i in ids for s in stats
        for d, e, t in (("001", "000", "Hello"), ("000", "0x1F", "stat:FAKE id:9"), ("1", "069", ""))
    ]
    base = _CANONICAL.format(id="5A000001", dlvrd="001", stat="DELIVRD", err="000", text="Order 12")
    texts += [
        base.split(" text:")[0],  # no text: at all
        base.split(" text:")[0] + " ",
        base.split(" text:")[0] + "\n",
        base.replace("sub:001 ", ""),  # sub and dlvrd are often missing
        base.replace("err:000", "err:"),
        base.replace("stat:DELIVRD", "stat: DELIVRD"),
        base.replace("stat:DELIVRD", "stat :DELIVRD"),
        base.replace("stat:DELIVRD", "Stat:DELIVRD"),
        base.replace("submit date", "submit_date").replace("done date", "done_date"),
        base.replace(" sub:", "  sub:"),
        base.replace(" sub:", "\tsub:"),
        base.replace("id:5A000001", "id:5A:01"),
        base.replace("id:5A000001", "id:5Aid:01"),
        base.replace("id:5A000001", "id:5A_stat:X"),
        base.replace("id:5A000001", "id:5A1stat:X"),
        base.replace("id:5A000001", "id:5Aé"),
        base.replace("id:5A000001", "id:5A\xa0B"),
        " " + base,
        "x" + base,
        "ID:5A " + base,
        base.replace("text:", "TEXT:"),
        base.replace("text:", "texts:"),
        base.replace("err:000 text", "err:000 text2"),
        base.replace("err:000 text:", "err:000 xtext:"),
        base.replace("err:000 text:", "err:000_text:"),
        "",
        "id:1",
        "stat:DELIVRD err:000",
    ]
    for _ in range(3000):  # mutate the canonical text one to three characters at a time
        chars = list(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars))
            op = rng.randrange(3)
            if op == 0:
                chars[at] = rng.choice(_ALPHABET)
            elif op == 1:
                chars.insert(at, rng.choice(_ALPHABET))
            else:
                del chars[at]
        texts.append("".join(chars))
    return texts


def test_canonical_receipt_text_takes_the_fast_path() -> None:
    text = _CANONICAL.format(id="5A000001", dlvrd="001", stat="DELIVRD", err="000", text="Hi")
    assert _RECEIPT_CANONICAL.match(text) is not None
    assert _parse_receipt_text(text) == {
        "id": "5A000001", "sub": "001", "dlvrd": "001", "submit date": "2611220555",
        "done date": "2611220556", "stat": "DELIVRD", "err": "000",
    }


def test_receipt_text_fast_path_equals_the_general_parser() -> None:
    rng = random.Random(7)
    fast = 0
    for text in _texts(rng):
        assert _parse_receipt_text(text) == _parse_receipt_text_general(text), text
        fast += _RECEIPT_CANONICAL.match(text) is not None
    assert fast > 500  # the comparison covered the fast path, not only the fallback


# --- deliver_sm walk and the whole receipt ---------------------------------------------


def _outcome(parse: Callable[[], Any]) -> Any:
    try:
        return ("ok", parse())
    except PduDecodeError as exc:
        return ("decode", str(exc), exc.command_id, exc.status, exc.sequence, exc.nack_status)
    except Exception as exc:  # noqa: BLE001 -- the type and text must match too
        return (type(exc).__name__, str(exc))


def _general(raw: bytes, id_base: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setattr(receipts, "_deliver_sm_fast", lambda raw: None)
        return _outcome(lambda: parse_receipt(raw, id_base=id_base))


def _pdus(rng: random.Random) -> list[bytes]:
    text = receipt_text("5A000001")
    bodies = [
        sm_body(short_message=text),
        sm_body(short_message=text) + tlv(0x001E, b"5A000001\0") + tlv(0x0427, b"\x02"),
        sm_body(short_message=b"") + tlv(0x001E, b"77\0") + tlv(0x0427, b"\x05"),
        sm_body(esm_class=0x00, short_message=b"an MO text"),
        sm_body(esm_class=0x44, short_message=text),
        sm_body(short_message=b"") + tlv(0x0424, text),
        sm_body(short_message=text) + tlv(0x0423, b"\x03\x00\x01") + tlv(0x1400, b"\x01"),
        sm_body(short_message=receipt_text("ZZ-1")),
        sm_body(short_message=b"stat:DELIVRD err:000"),
        sm_body(short_message=text, data_coding=0x08),
        sm_body(short_message=receipt_text("ABC").decode().encode("utf-16-be"), data_coding=0x08),
        sm_body(short_message=text, source_addr="", destination_addr=""),
    ]
    raws = [deliver(b, sequence=9) for b in bodies]
    raws.append(pdu(DATA_SM, 5, bytes(4) + b"\x04\0\0" + tlv(0x0424, text)))
    raws.append(encode("submit_sm", 1, short_message=b"x"))
    out = list(raws)
    for raw in raws:
        for cut in range(len(raw)):  # every truncation, with the length fixed up or not
            short = raw[:cut]
            out.append(short)
            if cut >= 16:
                out.append(struct.pack(">L", cut) + short[4:])
        for _ in range(60):  # random octets overwritten, the length kept right
            b = bytearray(raw)
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(16, len(b))] = rng.choice((0, 1, 0x20, 0x3A, 0xFF, rng.randrange(256)))
            out.append(bytes(b))
    return out


@pytest.mark.parametrize("id_base", ["as-is", "hex", "dec"])
def test_parse_receipt_fast_path_equals_the_general_walk(
    id_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(11)
    fast = 0
    for raw in _pdus(rng):
        got = _outcome(lambda: parse_receipt(raw, id_base=id_base))
        assert got == _general(raw, id_base, monkeypatch), raw.hex()
        fast += _deliver_sm_fast(raw) is not None
    assert fast > 500


def test_deliver_sm_fast_reads_the_same_fields_as_the_walker() -> None:
    raw = deliver(sm_body(esm_class=0x44, data_coding=0x08, short_message=b"\0a\0b") + tlv(0x0427, b"\x02"))
    esm_class, data_coding, short_message, pos = _deliver_sm_fast(raw) or (None,) * 4
    header = read_header(raw)
    fields, tlv_pos = walk_mandatory(raw, header)
    assert (esm_class, data_coding, short_message, pos) == (
        fields["esm_class"], fields["data_coding"], fields["short_message"], tlv_pos,
    ) == (0x44, 0x08, b"\0a\0b", len(raw) - 5)


def test_deliver_sm_fast_declines_what_it_does_not_take() -> None:
    good = deliver(sm_body(short_message=receipt_text()))
    assert _deliver_sm_fast(good) is not None
    assert _deliver_sm_fast(good + b"\0") is None  # command_length no longer matches
    assert _deliver_sm_fast(good[:15]) is None
    assert _deliver_sm_fast(pdu(DATA_SM, 1, bytes(10))) is None
    assert _deliver_sm_fast(deliver(sm_body(short_message=b"abc")[:-2])) is None  # sm_length too long


# --- submit_sm_resp message_id -------------------------------------------------------------


def _general_message_id(raw: bytes) -> Any:
    header = checked_header(raw)
    fields, pos = walk_mandatory(raw, header)
    walk_tlvs(raw, pos, header)
    value = fields.get("message_id")
    return value.decode("latin-1") if value else ""


def test_response_message_id_fast_path_equals_the_walk() -> None:
    rng = random.Random(5)
    raws = [
        encode("submit_sm_resp", 9, message_id="5A000001"),
        encode("submit_sm_resp", 9, message_id=""),
        encode("deliver_sm_resp", 9, message_id="x"),
        encode("submit_sm_resp", 9, status=0x58),  # header only
        pdu(0x80000004, 9, b"5A\0" + tlv(0x0427, b"\x02")),
        pdu(0x80000004, 9, b"5A\0\0"),
        pdu(0x80000004, 9, b"5A"),
        pdu(0x80000004, 9, "идентификатор".encode("utf-8") + b"\0"),
        pdu(0x80000103, 9, b"77\0"),
        pdu(0x80000006, 9, b"77\0"),  # unbind_resp with a body: not a message-id resp
        pdu(0x80000000, 9, b"77\0"),
    ]
    for raw in list(raws):
        for cut in range(len(raw)):
            raws.append(raw[:cut])
            if cut >= 16:
                raws.append(struct.pack(">L", cut) + raw[4:cut])
        for _ in range(40):
            b = bytearray(raw)
            if len(b) > 16:
                b[rng.randrange(16, len(b))] = rng.choice((0, 0x41, 0xFF))
            raws.append(bytes(b))
    fast = 0
    for raw in raws:
        assert _outcome(lambda: response_message_id(raw)) == _outcome(
            lambda: _general_message_id(raw)), raw.hex()
        fast += len(raw) > 16 and raw.find(b"\0", 16) == len(raw) - 1
    assert fast > 20


# --- submit_sm -----------------------------------------------------------------------------


class _Ton(int):
    """An int subclass (as an IntEnum would be): encode() takes it, the fast path defers."""


_SUBMIT_FIELDS = ("source_addr_ton", "source_addr_npi", "source_addr", "dest_addr_ton",
                  "dest_addr_npi", "destination_addr", "esm_class", "registered_delivery",
                  "data_coding", "short_message")


def _submit_cases(rng: random.Random) -> list[tuple[int, dict[str, Any]]]:
    good: dict[str, Any] = dict(
        source_addr_ton=5, source_addr_npi=0, source_addr="DemoShop", dest_addr_ton=1,
        dest_addr_npi=1, destination_addr="375291234567", esm_class=0, registered_delivery=1,
        data_coding=0, short_message=b"Order 123 is ready",
    )
    odd: dict[str, list[Any]] = {
        "source_addr_ton": [0, 255, 256, -1, True, None, _Ton(5), "5", 1.0],
        "source_addr_npi": [0, 1, 300],
        "source_addr": ["", "A" * 20, "A" * 21, "Ünïcode", "Привет", "a\0b", None, b"Shop", 5],
        "dest_addr_ton": [0, 1, 256, False],
        "dest_addr_npi": [0, 1, -5],
        "destination_addr": ["", "3" * 20, "3" * 21, "+375291234567", None, "a\0", "é"],
        "esm_class": [0x40, 0x80, 0x100, None],
        "registered_delivery": [0, 1, 0x11, 2 ** 40],
        "data_coding": [0, 8, 0xF0, 256],
        "short_message": [b"", b"x" * 254, b"x" * 255, bytearray(b"abc"), memoryview(b"abc"),
                          "text", None, bytes(range(256))[:200]],
    }
    cases: list[tuple[int, dict[str, Any]]] = [(1, good), (MAX_SEQUENCE, good)]
    cases += [(seq, good) for seq in (0, -1, MAX_SEQUENCE + 1, True, 5.0, None)]
    for name, values in odd.items():
        cases += [(7, {**good, name: value}) for value in values]
    for _ in range(500):  # several odd fields at once
        fields = dict(good)
        for name in rng.sample(list(odd), rng.randint(1, 4)):
            fields[name] = rng.choice(odd[name])
        cases.append((rng.choice((1, 99, MAX_SEQUENCE, 0)), fields))
    return cases


def test_table_driven_submit_sm_equals_smpplib() -> None:
    """The table-driven submit_sm (the hand-built encode_submit_sm is gone, issue 15) over odd
    inputs: smpplib's bytes whenever it builds one (the refusals: the next test)."""
    rng = random.Random(3)
    built = 0
    for seq, fields in _submit_cases(rng):
        got = _outcome(lambda: encode("submit_sm", seq, service_type="", **fields))
        if got[0] != "ok":
            continue  # refused before any encoder ran, or by the same field check smpplib's path uses
        want = _outcome(lambda: _encode_smpplib("submit_sm", seq, 0, {"service_type": "", **fields}))
        assert got == want, (seq, fields)
        built += 1
    assert built > 30


def test_table_driven_submit_sm_refuses_what_smpplib_path_refuses() -> None:
    rng = random.Random(3)
    refused = 0
    for seq, fields in _submit_cases(rng):
        got = _outcome(lambda: encode("submit_sm", seq, service_type="", **fields))
        if got[0] == "ok":
            continue
        refused += 1
        assert got[0] in ("TypeError", "ValueError"), (seq, fields, got)
        # smpplib's path with the same fields (after the same sequence check) refuses too
        def smpplib_path() -> bytes:
            _check_sequence("submit_sm", SUBMIT_SM, seq)
            return _encode_smpplib("submit_sm", seq, 0, {"service_type": "", **fields})
        assert _outcome(smpplib_path)[0] != "ok", (seq, fields)
    assert refused > 30


def test_encode_submit_sm_bytes_decode_back() -> None:
    raw = encode("submit_sm", 42, service_type="", source_addr_ton=5, source_addr_npi=0,
                       source_addr="DemoShop", dest_addr_ton=1, dest_addr_npi=1,
                       destination_addr="375291234567", esm_class=0x40, registered_delivery=1,
                       data_coding=8, short_message=b"\x05\x00\x03\x01\x02\x01hi")
    sm = decode(raw)
    assert (sm.sequence, sm.source_addr, sm.destination_addr, sm.esm_class, sm.data_coding) == (
        42, b"DemoShop", b"375291234567", 0x40, 8)
    assert sm.short_message == b"\x05\x00\x03\x01\x02\x01hi" and sm.registered_delivery == 1


# --- deliver_sm_resp / data_sm_resp --------------------------------------------------------


def test_empty_id_resp_equals_encode() -> None:
    commands = ["deliver_sm_resp", "data_sm_resp", "submit_sm_resp", "generic_nack", "bogus"]
    sequences = [0, 1, 77, MAX_SEQUENCE, 0xFFFFFFFF, 0x100000000, -1, True, 5.0, None]
    statuses = [0, 0x08, 0x64, 0xFFFFFFFF, 0x100000000, -1, False, True, None, "0"]
    fast = 0
    for command in commands:
        for seq in sequences:
            for status in statuses:
                got = _outcome(lambda: empty_id_resp(command, seq, status))
                want = _outcome(lambda: encode(command, seq, status=status, message_id=""))
                assert got == want, (command, seq, status)
                fast += got[0] == "ok"
    assert fast > 20
    assert empty_id_resp("data_sm_resp", 3, 0x64) == struct.pack(">LLLL", 16, 0x80000103, 0x64, 3)
    assert empty_id_resp("deliver_sm_resp", 3, 0x64) == struct.pack(">LLLL", 17, 0x80000005, 0x64, 3) + b"\0"
