"""SMPP 3.4 PDUs: framing, encoding, decoding, TLVs and delivery receipts.

smpplib 2.2.4 builds and parses the PDU bodies (it is fast enough and covers the
PDUs an ESME needs), but it is wrong in ways that matter on a live bind
(reference/smpp.md §9).  This module is the only one that imports smpplib, and it
is where every workaround lives:

* framing and the ``command_length`` check are ours (defect 8: smpplib parses a
  truncated PDU into garbage);
* sequence numbers are set after construction and parsing never consumes one
  (defects 1-3);
* fields are validated before encoding, so nothing is truncated silently
  (defects 9, 14);
* TLVs and receipts are read by our own walker over the raw bytes, so a receipt
  is understood even when smpplib cannot parse the PDU (defects 4, 6, 7).

Everything here is pure: no sockets, no clocks.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, Final

import smpplib.command
import smpplib.consts
import smpplib.smpp
import structlog

log = structlog.get_logger(__name__)

MAX_PDU_LENGTH: Final[int] = 65536
HEADER: Final = struct.Struct(">LLLL")
HEADER_LENGTH: Final[int] = HEADER.size
RESPONSE_BIT: Final[int] = 0x80000000
MAX_SEQUENCE: Final[int] = 0x7FFFFFFF
MAX_SHORT_MESSAGE: Final[int] = 254  # sm_length is one octet, and 255 breaks smpplib (defect 9)

_LENGTH = struct.Struct(">L")
_LENGTH_ID = struct.Struct(">LL")
_TLV_HEADER = struct.Struct(">HH")

# --- command ids -----------------------------------------------------------------

COMMAND_IDS: Final[dict[str, int]] = {
    "generic_nack": 0x80000000,
    "bind_receiver": 0x00000001,
    "bind_receiver_resp": 0x80000001,
    "bind_transmitter": 0x00000002,
    "bind_transmitter_resp": 0x80000002,
    "query_sm": 0x00000003,
    "query_sm_resp": 0x80000003,
    "submit_sm": 0x00000004,
    "submit_sm_resp": 0x80000004,
    "deliver_sm": 0x00000005,
    "deliver_sm_resp": 0x80000005,
    "unbind": 0x00000006,
    "unbind_resp": 0x80000006,
    "replace_sm": 0x00000007,
    "replace_sm_resp": 0x80000007,
    "cancel_sm": 0x00000008,
    "cancel_sm_resp": 0x80000008,
    "bind_transceiver": 0x00000009,
    "bind_transceiver_resp": 0x80000009,
    "outbind": 0x0000000B,
    "enquire_link": 0x00000015,
    "enquire_link_resp": 0x80000015,
    "submit_multi": 0x00000021,
    "submit_multi_resp": 0x80000021,
    "alert_notification": 0x00000102,
    "data_sm": 0x00000103,
    "data_sm_resp": 0x80000103,
}
COMMAND_NAMES: Final[dict[int, str]] = {v: k for k, v in COMMAND_IDS.items()}

GENERIC_NACK: Final = COMMAND_IDS["generic_nack"]
BIND_RECEIVER: Final = COMMAND_IDS["bind_receiver"]
BIND_TRANSMITTER: Final = COMMAND_IDS["bind_transmitter"]
BIND_TRANSCEIVER: Final = COMMAND_IDS["bind_transceiver"]
SUBMIT_SM: Final = COMMAND_IDS["submit_sm"]
DELIVER_SM: Final = COMMAND_IDS["deliver_sm"]
DATA_SM: Final = COMMAND_IDS["data_sm"]
UNBIND: Final = COMMAND_IDS["unbind"]
ENQUIRE_LINK: Final = COMMAND_IDS["enquire_link"]

# What smpplib's factory can build and parse; anything else (cancel_sm, replace_sm,
# submit_multi, outbind, ...) raises UnknownCommandError inside it (defect 15).
_SMPPLIB_COMMANDS: Final = frozenset({
    "bind_transmitter", "bind_transmitter_resp", "bind_receiver", "bind_receiver_resp",
    "bind_transceiver", "bind_transceiver_resp", "data_sm", "data_sm_resp", "generic_nack",
    "submit_sm", "submit_sm_resp", "deliver_sm", "deliver_sm_resp", "query_sm",
    "query_sm_resp", "unbind", "unbind_resp", "enquire_link", "enquire_link_resp",
    "alert_notification",
})

# SMPP 3.4 §4.1.2, §4.4.2: these responses carry no body when command_status != 0.
_NO_BODY_ON_ERROR: Final = frozenset({
    "bind_transmitter_resp", "bind_receiver_resp", "bind_transceiver_resp",
    "submit_sm_resp", "data_sm_resp",
})

# --- command_status --------------------------------------------------------------

ESME_ROK: Final = 0x00
ESME_RINVMSGLEN: Final = 0x01
ESME_RINVCMDLEN: Final = 0x02
ESME_RINVCMDID: Final = 0x03
ESME_RINVBNDSTS: Final = 0x04
ESME_RALYBND: Final = 0x05
ESME_RSYSERR: Final = 0x08
ESME_RINVSRCADR: Final = 0x0A
ESME_RINVDSTADR: Final = 0x0B
ESME_RBINDFAIL: Final = 0x0D
ESME_RINVPASWD: Final = 0x0E
ESME_RINVSYSID: Final = 0x0F
ESME_RMSGQFUL: Final = 0x14
ESME_RTHROTTLED: Final = 0x58
ESME_RX_T_APPN: Final = 0x64
ESME_RINVOPTPARSTREAM: Final = 0xC0
ESME_RUNKNOWNERR: Final = 0xFF

STATUS_NAMES: Final[dict[int, str]] = {
    value: name.removeprefix("SMPP_")
    for name, value in vars(smpplib.consts).items()
    if name.startswith("SMPP_ESME_")
}

# Kannel's classes (reference §4): requeue the same part and keep the bind.
TEMPORARY_STATUSES: Final[frozenset[int]] = frozenset(
    {ESME_RSYSERR, ESME_RMSGQFUL, ESME_RTHROTTLED, ESME_RX_T_APPN}
)


def status_name(status: int) -> str:
    """A command_status for logs and the store: ``ESME_RTHROTTLED (0x58)`` or ``0x000000AB``."""
    name = STATUS_NAMES.get(status)
    return f"{name} (0x{status:02X})" if name else f"0x{status:08X}"


def is_temporary(status: int) -> bool:
    """True when a failed submit should be requeued rather than failed for good."""
    return status in TEMPORARY_STATUSES


# --- TLV tags --------------------------------------------------------------------

TAG_ADDITIONAL_STATUS_INFO_TEXT: Final = 0x001D
TAG_RECEIPTED_MESSAGE_ID: Final = 0x001E
TAG_SAR_MSG_REF_NUM: Final = 0x020C
TAG_SAR_TOTAL_SEGMENTS: Final = 0x020E
TAG_SAR_SEGMENT_SEQNUM: Final = 0x020F
TAG_SC_INTERFACE_VERSION: Final = 0x0210
TAG_NETWORK_ERROR_CODE: Final = 0x0423
TAG_MESSAGE_PAYLOAD: Final = 0x0424
TAG_DELIVERY_FAILURE_REASON: Final = 0x0425
TAG_MESSAGE_STATE: Final = 0x0427

# --- errors ----------------------------------------------------------------------


class FramingError(Exception):
    """The byte stream cannot be cut into PDUs any more: the connection must be dropped."""


class PduDecodeError(Exception):
    """A well-framed PDU that cannot be decoded.

    It keeps the header so that the caller can still answer: a ``deliver_sm`` must
    be acknowledged even when it is unreadable (reference §8), anything else gets a
    ``generic_nack`` with ``nack_status``.
    """

    def __init__(
        self,
        message: str,
        *,
        command_id: int,
        status: int,
        sequence: int,
        nack_status: int = ESME_RSYSERR,
    ) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.status = status
        self.sequence = sequence
        self.nack_status = nack_status


# --- header and framing ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    length: int
    command_id: int
    status: int
    sequence: int

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    @property
    def command(self) -> str:
        """The command name, or the id in hex when it is not an SMPP 3.4 command."""
        return COMMAND_NAMES.get(self.command_id, f"0x{self.command_id:08X}")


def read_header(raw: bytes) -> Header:
    """The four header fields of a framed PDU (no check that the body matches)."""
    if len(raw) < HEADER_LENGTH:
        raise FramingError(f"{len(raw)} octets is shorter than an SMPP header")
    return Header(*HEADER.unpack_from(raw))


class Framer:
    """Accumulates bytes from the socket and yields whole raw PDUs.

    The length is checked as soon as its four octets arrive: a peer that speaks
    something else (HTTP, TLS) is caught at once instead of after 64 KiB.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.error: FramingError | None = None

    @property
    def pending(self) -> int:
        """Octets of an incomplete PDU held back; non-zero at EOF means a cut PDU."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Whole PDUs from the stream so far.

        When a bad length follows good PDUs in the same read, the good ones are
        still returned (a receipt before the garbage must be answered, a resp
        must be matched) and ``error`` is set; the caller drops the connection
        after handling them.  With nothing good to return, or on any later
        call, the error is raised.
        """
        if self.error is not None:
            raise self.error
        self._buffer += data
        pdus: list[bytes] = []
        pos, size = 0, len(self._buffer)
        while size - pos >= 4:
            (length,) = _LENGTH.unpack_from(self._buffer, pos)
            if length < HEADER_LENGTH or length > MAX_PDU_LENGTH:
                self.error = FramingError(f"command_length {length} outside 16..{MAX_PDU_LENGTH}")
                del self._buffer[:]
                if pdus:
                    return pdus
                raise self.error
            if size - pos < length:
                break
            pdus.append(bytes(self._buffer[pos:pos + length]))
            pos += length
        if pos:
            del self._buffer[:pos]
        return pdus


# --- our own walker over the body -----------------------------------------------

_CSTR, _INT1, _SM = "cstr", "int1", "sm"

_BIND_BODY = (
    ("system_id", _CSTR), ("password", _CSTR), ("system_type", _CSTR),
    ("interface_version", _INT1), ("addr_ton", _INT1), ("addr_npi", _INT1),
    ("address_range", _CSTR),
)
_SM_BODY = (
    ("service_type", _CSTR), ("source_addr_ton", _INT1), ("source_addr_npi", _INT1),
    ("source_addr", _CSTR), ("dest_addr_ton", _INT1), ("dest_addr_npi", _INT1),
    ("destination_addr", _CSTR), ("esm_class", _INT1), ("protocol_id", _INT1),
    ("priority_flag", _INT1), ("schedule_delivery_time", _CSTR), ("validity_period", _CSTR),
    ("registered_delivery", _INT1), ("replace_if_present_flag", _INT1),
    ("data_coding", _INT1), ("sm_default_msg_id", _INT1), ("short_message", _SM),
)
_DATA_SM_BODY = (
    ("service_type", _CSTR), ("source_addr_ton", _INT1), ("source_addr_npi", _INT1),
    ("source_addr", _CSTR), ("dest_addr_ton", _INT1), ("dest_addr_npi", _INT1),
    ("destination_addr", _CSTR), ("esm_class", _INT1), ("registered_delivery", _INT1),
    ("data_coding", _INT1),
)
_MESSAGE_ID_BODY = (("message_id", _CSTR),)
_BIND_RESP_BODY = (("system_id", _CSTR),)

# Mandatory parameters of the PDUs we exchange; the optional (TLV) part follows.
_LAYOUTS: Final[dict[int, tuple[tuple[str, str], ...]]] = {
    BIND_RECEIVER: _BIND_BODY,
    BIND_TRANSMITTER: _BIND_BODY,
    BIND_TRANSCEIVER: _BIND_BODY,
    COMMAND_IDS["bind_receiver_resp"]: _BIND_RESP_BODY,
    COMMAND_IDS["bind_transmitter_resp"]: _BIND_RESP_BODY,
    COMMAND_IDS["bind_transceiver_resp"]: _BIND_RESP_BODY,
    SUBMIT_SM: _SM_BODY,
    DELIVER_SM: _SM_BODY,
    DATA_SM: _DATA_SM_BODY,
    COMMAND_IDS["submit_sm_resp"]: _MESSAGE_ID_BODY,
    COMMAND_IDS["deliver_sm_resp"]: _MESSAGE_ID_BODY,
    COMMAND_IDS["data_sm_resp"]: _MESSAGE_ID_BODY,
    GENERIC_NACK: (),
    UNBIND: (),
    COMMAND_IDS["unbind_resp"]: (),
    ENQUIRE_LINK: (),
    COMMAND_IDS["enquire_link_resp"]: (),
}


def _checked_header(raw: bytes) -> Header:
    header = read_header(raw)
    if header.length != len(raw):
        raise _decode_error(
            header, f"command_length {header.length} but {len(raw)} octets", ESME_RINVCMDLEN
        )
    return header


def _decode_error(header: Header, message: str, nack_status: int) -> PduDecodeError:
    return PduDecodeError(
        f"{header.command} seq={header.sequence}: {message}",
        command_id=header.command_id,
        status=header.status,
        sequence=header.sequence,
        nack_status=nack_status,
    )


def _walk_mandatory(raw: bytes, header: Header) -> tuple[dict[str, Any], int]:
    """The mandatory fields (C-strings as bytes, without NUL) and where the TLVs start."""
    layout = _LAYOUTS.get(header.command_id)
    if layout is None:
        raise _decode_error(header, "no body layout for this command", ESME_RINVCMDID)
    fields: dict[str, Any] = {}
    pos, end = HEADER_LENGTH, len(raw)
    if header.is_response and pos == end:
        return fields, pos  # an error resp, or a peer that omits the empty message_id
    for name, kind in layout:
        if kind == _CSTR:
            nul = raw.find(b"\0", pos, end)
            if nul < 0:
                raise _decode_error(header, f"{name} runs past the PDU", ESME_RINVCMDLEN)
            fields[name], pos = raw[pos:nul], nul + 1
        elif pos >= end:
            raise _decode_error(header, f"PDU ends before {name}", ESME_RINVCMDLEN)
        elif kind == _INT1:
            fields[name], pos = raw[pos], pos + 1
        else:  # sm_length + short_message
            length, pos = raw[pos], pos + 1
            if pos + length > end:
                raise _decode_error(header, f"sm_length {length} runs past the PDU", ESME_RINVMSGLEN)
            fields[name], pos = raw[pos:pos + length], pos + length
    return fields, pos


def _walk_tlvs(raw: bytes, pos: int, header: Header | None) -> dict[int, bytes]:
    """Tag → value for the optional part; the first occurrence of a tag wins.

    ``header`` None: read from ``raw`` only if an error needs it (the hot receipt path).
    """
    tlvs: dict[int, bytes] = {}
    end = len(raw)
    while pos < end:
        if end - pos < _TLV_HEADER.size:
            raise _decode_error(header or read_header(raw), "truncated TLV header", ESME_RINVOPTPARSTREAM)
        tag, length = _TLV_HEADER.unpack_from(raw, pos)
        pos += _TLV_HEADER.size
        if pos + length > end:
            raise _decode_error(header or read_header(raw), f"TLV 0x{tag:04X} runs past the PDU",
                                ESME_RINVOPTPARSTREAM)
        tlvs.setdefault(tag, raw[pos:pos + length])
        pos += length
    return tlvs


def parse_tlvs(raw: bytes) -> dict[int, bytes]:
    """The optional parameters of a raw PDU, tag → raw value, whatever their tags or widths.

    smpplib refuses TLVs it knows but does not expect in a PDU (defect 4), cuts the
    last character of a C-string TLV sent without NUL (defect 6) and reads integer
    TLVs at their declared width (defect 7); this walker only trusts the lengths.
    """
    header = _checked_header(raw)
    _, pos = _walk_mandatory(raw, header)
    return _walk_tlvs(raw, pos, header)


# --- decode ----------------------------------------------------------------------


class _NoSequence:
    """The sequence source smpplib insists on (defect 1) that never counts.

    smpplib draws a number for every request PDU it constructs, even when parsing
    (defect 3); ours come from the session, so this one always answers 0.
    """

    sequence = 0

    def next_sequence(self) -> int:
        return 0


_NO_SEQUENCE: Final = _NoSequence()


def decode(raw: bytes) -> Any:
    """One framed PDU as an smpplib PDU object (C-string fields come back as bytes).

    The structure is checked by our walker first, because smpplib parses a
    truncated PDU "successfully" (defect 8).  Any failure, smpplib's included, is a
    PduDecodeError that still carries the header, so the caller can answer.
    """
    header = _checked_header(raw)
    name = COMMAND_NAMES.get(header.command_id)
    if name not in _SMPPLIB_COMMANDS:
        raise _decode_error(header, "unsupported command", ESME_RINVCMDID)
    if header.command_id in _LAYOUTS:
        _, pos = _walk_mandatory(raw, header)
        _walk_tlvs(raw, pos, header)
    try:
        return smpplib.smpp.parse_pdu(raw, client=_NO_SEQUENCE, allow_unknown_opt_params=True)
    except Exception as exc:  # smpplib raises KeyError, struct.error, IndexError, ... (defects 4, 7)
        raise _decode_error(header, f"smpplib: {type(exc).__name__}: {exc}", ESME_RSYSERR) from exc


def response_message_id(raw: bytes) -> str:
    """The message_id of a submit_sm_resp (or deliver/data_sm_resp), read by our walker.

    The hot path of every submit: smpplib's full parse costs ~25 µs for one C-string.
    Same checks as ``decode`` (length, C-string inside the PDU, TLV stream); "" when
    the resp has no body.
    """
    end = len(raw)
    if end > HEADER_LENGTH:
        # The usual resp: the id and its NUL end the PDU, no TLVs; same answer, no walk.
        length, command_id = _LENGTH_ID.unpack_from(raw)
        if (length == end and command_id in _MESSAGE_ID_RESPONSES
                and raw.find(b"\0", HEADER_LENGTH) == end - 1):
            return raw[HEADER_LENGTH:end - 1].decode("latin-1")
    header = _checked_header(raw)
    fields, pos = _walk_mandatory(raw, header)
    _walk_tlvs(raw, pos, header)
    value = fields.get("message_id")
    return value.decode("latin-1") if value else ""


_MESSAGE_ID_RESPONSES: Final = frozenset(
    COMMAND_IDS[name] for name in ("submit_sm_resp", "deliver_sm_resp", "data_sm_resp")
)


# --- encode ----------------------------------------------------------------------

_TIME_FIELDS: Final = frozenset({"schedule_delivery_time", "validity_period"})


def _check_sequence(command: str, command_id: int, sequence: int) -> None:
    if not isinstance(sequence, int) or isinstance(sequence, bool):
        raise TypeError(f"{command}: sequence must be an int")
    if command_id & RESPONSE_BIT:
        ok = 0 <= sequence <= 0xFFFFFFFF  # a response echoes whatever the peer used
    else:
        ok = 1 <= sequence <= MAX_SEQUENCE
    if not ok:
        raise ValueError(f"{command}: sequence {sequence} out of range")


def _check_cstring(command: str, name: str, value: Any, max_with_nul: int, tlv: bool) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{command}.{name} must be str, not {type(value).__name__}")
    # smpplib encodes mandatory C-strings as latin-1 but C-string TLVs as UTF-8 with a
    # length counted in characters, so only ASCII is safe there.
    charset = "ascii" if tlv else "latin-1"
    try:
        encoded = value.encode(charset)
    except UnicodeEncodeError:
        raise ValueError(f"{command}.{name} must be {charset} text") from None
    if b"\0" in encoded:
        raise ValueError(f"{command}.{name} contains NUL")
    if len(encoded) > max_with_nul - 1:
        # never echo the value: it may be the password
        raise ValueError(
            f"{command}.{name} is {len(encoded)} octets, SMPP allows {max_with_nul - 1}"
        )
    if name in _TIME_FIELDS and len(encoded) not in (0, 16):
        raise ValueError(f"{command}.{name} must be empty or 16 characters (YYMMDDhhmmsstnnp)")


def _check_field(command: str, name: str, param: Any, value: Any, tlv: bool) -> Any:
    """Validate one field against SMPP (not smpplib, which truncates) and normalise it."""
    kind = param.type
    if kind is str:
        _check_cstring(command, name, value, getattr(param, "max", 256), tlv)
        return value
    if kind is int:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{command}.{name} must be int, not {type(value).__name__}")
        if not 0 <= value < 1 << (8 * param.size):
            raise ValueError(f"{command}.{name}={value} does not fit {param.size} octet(s)")
        return value
    if kind is smpplib.command.ostr:
        if value is None:
            return None
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{command}.{name} must be bytes, not {type(value).__name__}")
        value = bytes(value)
        limit = MAX_SHORT_MESSAGE if name == "short_message" else 0xFFFF
        if len(value) > limit:
            raise ValueError(f"{command}.{name} is {len(value)} octets, at most {limit} allowed")
        if tlv and hasattr(param, "size") and len(value) != param.size:
            raise ValueError(f"{command}.{name} must be exactly {param.size} octets")
        return value
    raise ValueError(f"{command}.{name}: smpplib cannot encode this field type")


def encode(command: str, sequence: int, **fields: Any) -> bytes:
    """A raw PDU built by smpplib, after checking every field against SMPP.

    ``status=`` sets command_status (default ESME_ROK).  Error responses that SMPP
    sends without a body (bind_*_resp, submit_sm_resp, data_sm_resp) are encoded
    header-only and their other fields are ignored.  TLVs are plain keywords
    (``sar_msg_ref_num=``, ``message_payload=``, ``receipted_message_id=``, ...).
    Addresses and other C-strings are ``str``; ``short_message`` and
    ``message_payload`` are ``bytes``.  Raises TypeError/ValueError naming the field.
    """
    command_id = COMMAND_IDS.get(command)
    if command_id is None or command not in _SMPPLIB_COMMANDS:
        raise ValueError(f"cannot encode {command!r}")
    status = fields.pop("status", ESME_ROK)
    _check_sequence(command, command_id, sequence)
    if not isinstance(status, int) or not 0 <= status <= 0xFFFFFFFF:
        raise ValueError(f"{command}: bad command_status {status!r}")
    if status != ESME_ROK and command in _NO_BODY_ON_ERROR:
        return HEADER.pack(HEADER_LENGTH, command_id, status, sequence)
    if fields.get("short_message") and fields.get("message_payload"):
        raise ValueError(f"{command}: short_message and message_payload are exclusive")
    fast = _encode_fast(command, command_id, sequence, status, fields)
    if fast is not None:
        return fast
    return _encode_smpplib(command, sequence, status, fields)


def _encode_smpplib(command: str, sequence: int, status: int, fields: dict[str, Any]) -> bytes:
    """smpplib's encoder: every PDU and TLV it knows, at ~100 µs a PDU."""
    pdu = smpplib.smpp.make_pdu(command, client=_NO_SEQUENCE)
    for name, value in fields.items():
        param = pdu.params.get(name)
        if param is None or name == "sm_length":
            raise ValueError(f"{command} has no field {name!r}")
        tlv = pdu.field_is_optional(name)
        setattr(pdu, name, _check_field(command, name, param, value, tlv))
    pdu.sequence = sequence  # the sequence= kwarg is ignored by smpplib (defect 2)
    pdu.status = status
    raw: bytes = pdu.generate()
    if len(raw) > MAX_PDU_LENGTH:
        raise ValueError(f"{command} is {len(raw)} octets, more than {MAX_PDU_LENGTH}")
    return raw


# The hot PDUs, built by hand: submit_sm without TLVs, the message_id responses and the
# bodyless PDUs are most of the traffic, and smpplib spends ~100 µs on each (profile of
# bench/smpp_throughput.py).  Same checks, same bytes (tests/test_smpp_hardening.py
# compares both encoders field by field); anything else goes to smpplib.
_SM_FAST: Final = (
    ("service_type", _CSTR, 6), ("source_addr_ton", _INT1, 0), ("source_addr_npi", _INT1, 0),
    ("source_addr", _CSTR, 21), ("dest_addr_ton", _INT1, 0), ("dest_addr_npi", _INT1, 0),
    ("destination_addr", _CSTR, 21), ("esm_class", _INT1, 0), ("protocol_id", _INT1, 0),
    ("priority_flag", _INT1, 0), ("schedule_delivery_time", _CSTR, 17),
    ("validity_period", _CSTR, 17), ("registered_delivery", _INT1, 0),
    ("replace_if_present_flag", _INT1, 0), ("data_coding", _INT1, 0),
    ("sm_default_msg_id", _INT1, 0), ("short_message", _SM, MAX_SHORT_MESSAGE),
)
_SM_FAST_NAMES: Final = frozenset(name for name, _, _ in _SM_FAST)
_FAST_SM_COMMANDS: Final = frozenset({"submit_sm", "deliver_sm"})
_FAST_ID_RESPONSES: Final = frozenset({"submit_sm_resp", "deliver_sm_resp", "data_sm_resp"})
_FAST_BODYLESS: Final = frozenset({"enquire_link", "enquire_link_resp", "unbind", "unbind_resp",
                                   "generic_nack"})


def _encode_fast(command: str, command_id: int, sequence: int, status: int,
                 fields: dict[str, Any]) -> bytes | None:
    if command in _FAST_SM_COMMANDS:
        if not fields.keys() <= _SM_FAST_NAMES:
            return None  # TLVs: smpplib
        out = bytearray(HEADER_LENGTH)
        for name, kind, limit in _SM_FAST:
            value = fields.get(name)
            if kind == _CSTR:
                if value is not None:
                    _check_cstring(command, name, value, limit, False)
                    out += value.encode("latin-1")
                out += b"\0"
            elif kind == _INT1:
                if value is None:
                    value = 0
                elif not isinstance(value, int) or isinstance(value, bool):
                    raise TypeError(f"{command}.{name} must be int, not {type(value).__name__}")
                elif not 0 <= value <= 0xFF:
                    raise ValueError(f"{command}.{name}={value} does not fit 1 octet(s)")
                out.append(value)
            else:
                if value is None:
                    value = b""
                elif not isinstance(value, (bytes, bytearray, memoryview)):
                    raise TypeError(f"{command}.{name} must be bytes, not {type(value).__name__}")
                if len(value) > limit:
                    raise ValueError(f"{command}.{name} is {len(value)} octets, at most {limit} allowed")
                out.append(len(value))
                out += value
    elif command in _FAST_ID_RESPONSES:
        if not fields.keys() <= {"message_id"}:
            return None
        value = fields.get("message_id")
        out = bytearray(HEADER_LENGTH)
        if value is not None:
            _check_cstring(command, "message_id", value, 65, False)
            out += value.encode("latin-1")
        out += b"\0"
    elif command in _FAST_BODYLESS and not fields:
        return HEADER.pack(HEADER_LENGTH, command_id, status, sequence)
    else:
        return None
    HEADER.pack_into(out, 0, len(out), command_id, status, sequence)
    return bytes(out)


def encode_submit_sm(
    sequence: int,
    source_addr_ton: int,
    source_addr_npi: int,
    source_addr: str,
    dest_addr_ton: int,
    dest_addr_npi: int,
    destination_addr: str,
    esm_class: int,
    registered_delivery: int,
    data_coding: int,
    short_message: bytes,
) -> bytes:
    """The submit_sm of every segment without TLVs: ``encode("submit_sm", ...)`` in one step.

    The same bytes as ``encode`` with these fields (service_type and the times empty,
    the other fields 0), at a third of its cost: the one PDU sent per segment.  Only
    values that are plainly valid take this path; anything else (None, bool, an int
    subclass, too long, not latin-1, a NUL) goes to ``encode``, which builds it or
    raises the same error as before.
    """
    src = destination = b""
    if type(source_addr) is str and type(destination_addr) is str:
        try:
            src = source_addr.encode("latin-1")
            destination = destination_addr.encode("latin-1")
        except UnicodeEncodeError:
            src = b"\0"  # let encode() name the field
    small = (source_addr_ton, source_addr_npi, dest_addr_ton, dest_addr_npi, esm_class,
             registered_delivery, data_coding)
    if (
        type(sequence) is not int or not 1 <= sequence <= MAX_SEQUENCE
        or type(source_addr) is not str or type(destination_addr) is not str
        or len(src) > 20 or len(destination) > 20 or b"\0" in src or b"\0" in destination
        or type(short_message) is not bytes or len(short_message) > MAX_SHORT_MESSAGE
        or not all(type(v) is int and 0 <= v <= 0xFF for v in small)
    ):
        return encode(
            "submit_sm", sequence, service_type="", source_addr_ton=source_addr_ton,
            source_addr_npi=source_addr_npi, source_addr=source_addr, dest_addr_ton=dest_addr_ton,
            dest_addr_npi=dest_addr_npi, destination_addr=destination_addr, esm_class=esm_class,
            registered_delivery=registered_delivery, data_coding=data_coding,
            short_message=short_message,
        )
    sm_length = len(short_message)
    return b"".join((
        HEADER.pack(33 + len(src) + len(destination) + sm_length, SUBMIT_SM, ESME_ROK, sequence),
        b"\0",  # service_type
        bytes((source_addr_ton, source_addr_npi)), src, b"\0",
        bytes((dest_addr_ton, dest_addr_npi)), destination, b"\0",
        # esm_class, protocol_id, priority_flag, schedule_delivery_time and validity_period
        # (empty C-strings), registered_delivery, replace_if_present_flag, data_coding,
        # sm_default_msg_id, sm_length
        bytes((esm_class, 0, 0, 0, 0, registered_delivery, 0, data_coding, 0, sm_length)),
        short_message,
    ))


_EMPTY_ID_RESPONSES: Final = {
    "deliver_sm_resp": COMMAND_IDS["deliver_sm_resp"],
    "data_sm_resp": COMMAND_IDS["data_sm_resp"],
}


def empty_id_resp(command: str, sequence: int, status: int = ESME_ROK) -> bytes:
    """A deliver_sm_resp or data_sm_resp with an empty message_id: the answer to every receipt.

    The bytes of ``encode(command, sequence, status=status, message_id="")`` without its
    generic field loop; anything but plainly valid arguments goes to ``encode``.
    """
    command_id = _EMPTY_ID_RESPONSES.get(command)
    if (command_id is None or type(sequence) is not int or type(status) is not int
            or not 0 <= sequence <= 0xFFFFFFFF or not 0 <= status <= 0xFFFFFFFF):
        return encode(command, sequence, status=status, message_id="")
    if status != ESME_ROK and command in _NO_BODY_ON_ERROR:
        return HEADER.pack(HEADER_LENGTH, command_id, status, sequence)
    return HEADER.pack(HEADER_LENGTH + 1, command_id, status, sequence) + b"\0"


def generic_nack(sequence: int, status: int) -> bytes:
    """The answer to a PDU we cannot or will not handle; it has no body."""
    return HEADER.pack(HEADER_LENGTH, GENERIC_NACK, status, sequence)


# --- receipts and MO -------------------------------------------------------------

_RECEIPT_TYPES: Final = frozenset({0x04, 0x08, 0x20})


def is_receipt(esm_class: int) -> bool:
    """True for SMSC receipts, SME delivery acks and intermediate notifications.

    Tests the message-type bits only: SMSCs send 0x44 (receipt + UDHI), so never ``== 4``.
    """
    return (esm_class & 0x3C) in _RECEIPT_TYPES


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivery receipt, TLVs preferred over the vendor-specific text.

    ``error`` is the text ``err:`` value as received (e.g. ``"000"``); when the
    text has none it is the network_error_code TLV rendered as
    ``<network type>:0x<code>``, e.g. ``GSM:0x0001`` (see ``network_error``).
    """

    message_id: str  # canonical, see canonical_message_id
    raw_message_id: str  # as received: TLV preferred over the text id:
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


def canonical_message_id(raw: str, base: str = "as-is") -> str:
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
# same dict at a fraction of the cost of scanning for every key (tests/
# test_codec_fast_paths.py compares both over many texts).  Anything else takes the
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
    header = _checked_header(raw)
    if header.command_id not in (DELIVER_SM, DATA_SM):
        raise ValueError(f"expected deliver_sm or data_sm, got {header.command}")
    fields, pos = _walk_mandatory(raw, header)
    if not fields:
        raise _decode_error(header, "empty body", ESME_RINVCMDLEN)
    return header, fields, _walk_tlvs(raw, pos, header)


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
    length, command_id = _LENGTH_ID.unpack_from(raw)
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
        tlvs = _walk_tlvs(raw, pos, None)
    tlv_id = _tlv_cstring(tlvs.get(TAG_RECEIPTED_MESSAGE_ID))
    if not is_receipt(esm_class) and tlv_id is None:
        return None
    body = short_message or tlvs.get(TAG_MESSAGE_PAYLOAD, b"")
    text = _parse_receipt_text(_receipt_text(body, data_coding))
    raw_id = tlv_id or text.get("id")
    if not raw_id:
        raise _decode_error(header or read_header(raw), "receipt without a message id", ESME_RSYSERR)
    try:
        message_id = canonical_message_id(raw_id, id_base)
    except ValueError as exc:
        raise _decode_error(header or read_header(raw), f"receipt id: {exc}", ESME_RSYSERR) from exc
    stat = text.get("stat")
    if stat is not None:
        word = _LEADING_WORD.match(stat)
        stat = word.group(0).upper() if word else None
    network_error = _network_error(tlvs.get(TAG_NETWORK_ERROR_CODE))
    return Receipt(
        message_id=message_id,
        raw_message_id=raw_id,
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
