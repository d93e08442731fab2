"""What a deliver_sm or data_sm says: a receipt (text and TLVs) or a mobile-originated message.

Read by our walker over the raw bytes, not by smpplib, so a receipt is understood
even when smpplib cannot parse its PDU (reference/smpp.md §9, defects 4, 6, 7), and
with the SMSC's message id in one canonical spelling so a resp and its receipt match
(``canonical_smsc_id``, reference §8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from .pdu import (
    DATA_SM,
    DELIVER_SM,
    ESM_CLASS_RECEIPT_TYPES,
    ESM_CLASS_TYPE_MASK,
    ESME_RINVCMDLEN,
    ESME_RSYSERR,
    HEADER_LENGTH,
    LENGTH_ID,
    TAG_MESSAGE_PAYLOAD,
    TAG_MESSAGE_STATE,
    TAG_NETWORK_ERROR_CODE,
    TAG_RECEIPTED_MESSAGE_ID,
    Header,
    checked_header,
    decode_error,
    read_header,
    walk_mandatory,
    walk_tlvs,
)

def is_receipt(esm_class: int) -> bool:
    """True for SMSC receipts, SME delivery acks and intermediate notifications.

    Tests the message-type bits only: SMSCs send 0x44 (receipt + UDHI), so never ``== 4``.
    """
    return (esm_class & ESM_CLASS_TYPE_MASK) in ESM_CLASS_RECEIPT_TYPES


class Receipt(NamedTuple):
    """A delivery receipt, TLVs preferred over the vendor-specific text.

    A NamedTuple, not a frozen dataclass: one is built per message, and the frozen
    ``__init__`` of these eight fields (by keyword) cost 1.5 µs against 0.65.

    ``error`` is the text ``err:`` value as received (e.g. ``"000"``); when the
    text has none it is the network_error_code TLV rendered as
    ``<network type>:0x<code>``, e.g. ``GSM:0x0001`` (see ``network_error``).
    """

    smsc_id: str  # canonical, see canonical_smsc_id
    raw_smsc_id: str  # as received: TLV preferred over the text id:
    state: int | None  # message_state TLV (any width 1..4 octets)
    stat: str | None  # text stat: word upper-cased (DELIVRD, UNDELIVERABLE, ...)
    error: str | None
    submit_date: str | None
    done_date: str | None
    network_error: str | None = None  # network_error_code TLV rendered, e.g. GSM:0x0001


_NETWORK_TYPES: Final = {
    1: "ANSI-136-ADR", 2: "IS-95-ADR", 3: "GSM", 4: "ANSI-136",
    5: "IS-95", 6: "ANSI-41", 7: "SMPP", 8: "SMSC",
}

_RECEIPT_KEY = re.compile(
    r"(?<![A-Za-z_])(id|sub|dlvrd|submit[ _]date|done[ _]date|stat|err|text)\s*:", re.I
)
_LEADING_WORD = re.compile(r"[A-Za-z_]+")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_DEC = re.compile(r"[0-9]+")


def canonical_smsc_id(raw: str, base: str = "as-is") -> str:
    """One spelling for an SMSC message id, so that a resp and its receipt match.

    SMSCs render one id differently in the resp and the receipt: case, leading
    zeros, hex vs decimal (reference §8).  ``as-is``: strip NULs and spaces,
    upper-case, drop leading zeros; ``hex``/``dec``: parse in that base and return
    the decimal string.  ValueError on an empty id or one the base cannot parse.
    """
    text = raw.replace("\0", "").strip()
    if not text:
        raise ValueError("empty message id")
    if base == "as-is":
        return text.upper().lstrip("0") or "0"
    if base == "hex":
        if not _HEX.fullmatch(text):
            raise ValueError(f"message id {text!r} is not hexadecimal")
        return str(int(text, 16))
    if base == "dec":
        if not _DEC.fullmatch(text):
            raise ValueError(f"message id {text!r} is not decimal")
        return str(int(text, 10))
    raise ValueError(f"unknown message id base {base!r} (as-is, hex, dec)")


def _receipt_text(payload: bytes, data_coding: int) -> str:
    """Receipt text is ASCII in practice, but some SMSCs send it as UCS-2."""
    if data_coding == 0x08 and len(payload) % 2 == 0 and payload[:1] == b"\0":
        return payload.decode("utf-16-be", "replace")
    return payload.decode("latin-1")


# The Appendix B layout as the SMSCs we know send it: lower-case keys in the spec's order,
# one space between pairs, values of printable ASCII without spaces or colons, then
# ``text:`` or the end.  In such a text the only colons are the keys' own, so the general
# parser below finds exactly these keys and these values: one anchored match gives the
# same dict at a fraction of the cost of scanning for every key (tests/test_codec.py
# compares both over many texts).  Anything else takes the
# general parser.
_VALUE = r"([!-9;-~]+)"
_RECEIPT_CANONICAL = re.compile(
    rf"id:{_VALUE} sub:{_VALUE} dlvrd:{_VALUE} submit date:{_VALUE} done date:{_VALUE} stat:{_VALUE}"
    rf" err:{_VALUE}(?: text:|\Z)"
)
_CANONICAL_KEYS: Final = ("id", "sub", "dlvrd", "submit date", "done date", "stat", "err")


def _parse_receipt_text(text: str) -> dict[str, str]:
    """``key:value`` pairs of the Appendix B text up to ``text:`` (the user's words follow)."""
    match = _RECEIPT_CANONICAL.match(text)
    if match is not None:
        return dict(zip(_CANONICAL_KEYS, match.groups()))
    return _parse_receipt_text_general(text)


def _parse_receipt_text_general(text: str) -> dict[str, str]:
    """Any spelling: keys in any case and order, ``submit_date``, spaces before the colon."""
    matches = list(_RECEIPT_KEY.finditer(text))
    values: dict[str, str] = {}
    for i, match in enumerate(matches):
        key = match.group(1).lower().replace("_", " ")
        if key == "text":
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        words = text[match.end():end].split()
        if words:
            values.setdefault(key, words[0])
    return values


def _tlv_int(value: bytes | None) -> int | None:
    if value is None or not 1 <= len(value) <= 4:
        return None
    return int.from_bytes(value, "big")


def _tlv_cstring(value: bytes | None) -> str | None:
    if value is None:
        return None
    text = value.split(b"\0", 1)[0].decode("latin-1").strip()
    return text or None


def _network_error(value: bytes | None) -> str | None:
    if value is None:
        return None
    if len(value) != 3:
        return f"RAW:0x{value.hex().upper()}"
    kind = _NETWORK_TYPES.get(value[0], f"TYPE{value[0]}")
    return f"{kind}:0x{int.from_bytes(value[1:], 'big'):04X}"


def _message_fields(raw: bytes) -> tuple[Header, dict[str, Any], dict[int, bytes]]:
    header = checked_header(raw)
    if header.command_id not in (DELIVER_SM, DATA_SM):
        raise ValueError(f"expected deliver_sm or data_sm, got {header.command}")
    fields, pos = walk_mandatory(raw, header)
    if not fields:
        raise decode_error(header, "empty body", ESME_RINVCMDLEN)
    return header, fields, walk_tlvs(raw, pos, header)


def _deliver_sm_fast(raw: bytes) -> tuple[int, int, bytes, int] | None:
    """esm_class, data_coding, short_message and where the TLVs start, of a well-formed deliver_sm.

    The receipt hot path: the same field walk as ``_message_fields`` without building a
    dict of all seventeen fields.  None for anything it does not take (another command,
    a wrong length, a field that runs past the end): the general walker then reads the
    PDU and raises the precise error, so errors stay exactly what they were.
    """
    end = len(raw)
    if end < HEADER_LENGTH:
        return None
    length, command_id = LENGTH_ID.unpack_from(raw)
    if length != end or command_id != DELIVER_SM:
        return None
    find = raw.find
    pos = find(b"\0", HEADER_LENGTH, end)  # service_type
    if pos < 0:
        return None
    pos = find(b"\0", pos + 3, end)  # source_addr_ton, source_addr_npi, source_addr
    if pos < 0:
        return None
    pos = find(b"\0", pos + 3, end)  # dest_addr_ton, dest_addr_npi, destination_addr
    if pos < 0:
        return None
    esm_at = pos + 1  # then protocol_id, priority_flag
    pos = find(b"\0", pos + 4, end)  # schedule_delivery_time
    if pos < 0:
        return None
    pos = find(b"\0", pos + 1, end)  # validity_period
    # registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id, sm_length
    if pos < 0 or pos + 5 >= end:
        return None
    start = pos + 6
    stop = start + raw[pos + 5]
    if stop > end:
        return None
    return raw[esm_at], raw[pos + 3], raw[start:stop], stop


def parse_receipt(raw: bytes, *, id_base: str = "as-is") -> Receipt | None:
    """The receipt in a raw deliver_sm or data_sm, or None when it is an MO message.

    Works on the bytes, so it succeeds where smpplib fails (defects 4, 6, 7).  A PDU
    is a receipt when its esm_class says so or when it carries
    receipted_message_id (some SMSCs forget the esm_class bits).  Raises
    PduDecodeError for a receipt without a usable id, and for a malformed PDU.
    """
    fast = _deliver_sm_fast(raw)
    header: Header | None
    if fast is None:
        header, fields, tlvs = _message_fields(raw)
        esm_class, data_coding, short_message = (
            fields["esm_class"], fields["data_coding"], fields.get("short_message"))
    else:
        header = None  # read only for an error
        esm_class, data_coding, short_message, pos = fast
        tlvs = walk_tlvs(raw, pos, None)
    tlv_id = _tlv_cstring(tlvs.get(TAG_RECEIPTED_MESSAGE_ID))
    if not is_receipt(esm_class) and tlv_id is None:
        return None
    body = short_message or tlvs.get(TAG_MESSAGE_PAYLOAD, b"")
    text = _parse_receipt_text(_receipt_text(body, data_coding))
    raw_id = tlv_id or text.get("id")
    if not raw_id:
        raise decode_error(header or read_header(raw), "receipt without a message id", ESME_RSYSERR)
    try:
        smsc_id = canonical_smsc_id(raw_id, id_base)
    except ValueError as exc:
        raise decode_error(header or read_header(raw), f"receipt id: {exc}", ESME_RSYSERR) from exc
    stat = text.get("stat")
    if stat is not None:
        word = _LEADING_WORD.match(stat)
        stat = word.group(0).upper() if word else None
    network_error = _network_error(tlvs.get(TAG_NETWORK_ERROR_CODE))
    return Receipt(
        smsc_id=smsc_id,
        raw_smsc_id=raw_id,
        state=_tlv_int(tlvs.get(TAG_MESSAGE_STATE)),
        stat=stat,
        error=text.get("err") or network_error,
        submit_date=text.get("submit date"),
        done_date=text.get("done date"),
        network_error=network_error,
    )


@dataclass(frozen=True, slots=True)
class ShortMessage:
    """A mobile-originated message, or any deliver_sm that is not a receipt.

    ``short_message`` still holds the UDH when esm_class has UDHI (0x40); when the
    PDU carries message_payload instead (sm_length 0, or data_sm) it holds that.
    """

    source_addr: str
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes


def parse_deliver(raw: bytes) -> ShortMessage:
    """The message in a raw deliver_sm (or data_sm), read by our walker, not smpplib."""
    _, fields, tlvs = _message_fields(raw)
    return ShortMessage(
        source_addr=fields["source_addr"].decode("latin-1"),
        destination_addr=fields["destination_addr"].decode("latin-1"),
        esm_class=fields["esm_class"],
        data_coding=fields["data_coding"],
        short_message=fields.get("short_message") or tlvs.get(TAG_MESSAGE_PAYLOAD, b""),
    )
