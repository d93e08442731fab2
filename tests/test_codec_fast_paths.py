"""The codec's fast paths give exactly what the general code gives, or step aside.

Each fast path (the canonical receipt text, the deliver_sm field walk) must either
produce the very result of the general code or decline, so that the general code
decides, errors included.  These tests run both over many inputs, generated
deterministically: canonical receipts, every spelling variant we know of, texts
mutated character by character, and PDUs truncated or corrupted at every octet.
"""

from __future__ import annotations

import random
import struct
from typing import Any, Callable

import pytest

from smppd.smpp import receipts
from smppd.smpp.encode import _check_sequence, _encode_smpplib, empty_id_resp, encode
from smppd.smpp.pdu import (
    DATA_SM,
    MAX_SEQUENCE,
    SUBMIT_SM,
    PduDecodeError,
    checked_header,
    decode,
    read_header,
    response_message_id,
    walk_mandatory,
    walk_tlvs,
)
from smppd.smpp.receipts import (
    _RECEIPT_CANONICAL,
    _deliver_sm_fast,
    _parse_receipt_text,
    _parse_receipt_text_general,
    parse_receipt,
)
from tests.test_codec import deliver, pdu, receipt_text, sm_body, tlv

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
