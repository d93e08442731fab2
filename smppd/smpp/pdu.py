"""SMPP 3.4 PDUs: the protocol's constants, framing, the header and the field walker.

The codec is three modules: this one (what a PDU is and how to cut and read one),
``encode`` (building PDUs) and ``receipts`` (what a deliver_sm says).  Every SMPP
constant (command ids, command_status values, TLV tags, esm_class bits) lives here
and nowhere else.

smpplib 2.2.4 parses the PDU bodies here and builds the rare ones in ``encode``; it
is wrong in ways that matter on a live bind (reference/smpp.md §9), so these two
modules are the only ones that import it, and every workaround lives in them:

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

import struct
from dataclasses import dataclass
from typing import Any, Final

import smpplib.consts
import smpplib.smpp

MAX_PDU_LENGTH: Final[int] = 65536
HEADER: Final = struct.Struct(">LLLL")
HEADER_LENGTH: Final[int] = HEADER.size
RESPONSE_BIT: Final[int] = 0x80000000
MAX_SEQUENCE: Final[int] = 0x7FFFFFFF
MAX_SHORT_MESSAGE: Final[int] = 254  # sm_length is one octet, and 255 breaks smpplib (defect 9)

_LENGTH = struct.Struct(">L")
LENGTH_ID = struct.Struct(">LL")
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
BIND_RECEIVER_RESP: Final = COMMAND_IDS["bind_receiver_resp"]
BIND_TRANSMITTER_RESP: Final = COMMAND_IDS["bind_transmitter_resp"]
BIND_TRANSCEIVER_RESP: Final = COMMAND_IDS["bind_transceiver_resp"]
QUERY_SM: Final = COMMAND_IDS["query_sm"]
QUERY_SM_RESP: Final = COMMAND_IDS["query_sm_resp"]
SUBMIT_SM_RESP: Final = COMMAND_IDS["submit_sm_resp"]
DELIVER_SM_RESP: Final = COMMAND_IDS["deliver_sm_resp"]
DATA_SM_RESP: Final = COMMAND_IDS["data_sm_resp"]
UNBIND_RESP: Final = COMMAND_IDS["unbind_resp"]
ENQUIRE_LINK_RESP: Final = COMMAND_IDS["enquire_link_resp"]
ALERT_NOTIFICATION: Final = COMMAND_IDS["alert_notification"]

# What smpplib's factory can build and parse; anything else (cancel_sm, replace_sm,
# submit_multi, outbind, ...) raises UnknownCommandError inside it (defect 15).
SMPPLIB_COMMANDS: Final = frozenset({
    "bind_transmitter", "bind_transmitter_resp", "bind_receiver", "bind_receiver_resp",
    "bind_transceiver", "bind_transceiver_resp", "data_sm", "data_sm_resp", "generic_nack",
    "submit_sm", "submit_sm_resp", "deliver_sm", "deliver_sm_resp", "query_sm",
    "query_sm_resp", "unbind", "unbind_resp", "enquire_link", "enquire_link_resp",
    "alert_notification",
})

# SMPP 3.4 §4.1.2, §4.4.2: these responses carry no body when command_status != 0.
NO_BODY_ON_ERROR: Final = frozenset({
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


# Bind refusals that retrying cannot fix (reference §4: stop and alert).
CREDENTIAL_STATUSES: Final[frozenset[int]] = frozenset({ESME_RINVPASWD, ESME_RINVSYSID})


def status_name(status: int) -> str:
    """A command_status for logs and the store: ``ESME_RTHROTTLED (0x58)`` or ``0x000000AB``."""
    name = STATUS_NAMES.get(status)
    return f"{name} (0x{status:02X})" if name else f"0x{status:08X}"


def is_temporary(status: int) -> bool:
    """True when a failed submit should be requeued rather than failed for good."""
    return status in TEMPORARY_STATUSES


# --- esm_class bits (SMPP 3.4 §5.2.12) ---------------------------------------------

ESM_CLASS_TYPE_MASK: Final = 0x3C  # the message-type bits
ESM_CLASS_RECEIPT_TYPES: Final = frozenset({0x04, 0x08, 0x20})  # SMSC receipt, SME ack, intermediate
ESM_CLASS_UDHI: Final = 0x40

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

CSTR, INT1, SM = "cstr", "int1", "sm"

_BIND_BODY = (
    ("system_id", CSTR), ("password", CSTR), ("system_type", CSTR),
    ("interface_version", INT1), ("addr_ton", INT1), ("addr_npi", INT1),
    ("address_range", CSTR),
)
_SM_BODY = (
    ("service_type", CSTR), ("source_addr_ton", INT1), ("source_addr_npi", INT1),
    ("source_addr", CSTR), ("dest_addr_ton", INT1), ("dest_addr_npi", INT1),
    ("destination_addr", CSTR), ("esm_class", INT1), ("protocol_id", INT1),
    ("priority_flag", INT1), ("schedule_delivery_time", CSTR), ("validity_period", CSTR),
    ("registered_delivery", INT1), ("replace_if_present_flag", INT1),
    ("data_coding", INT1), ("sm_default_msg_id", INT1), ("short_message", SM),
)
_DATA_SM_BODY = (
    ("service_type", CSTR), ("source_addr_ton", INT1), ("source_addr_npi", INT1),
    ("source_addr", CSTR), ("dest_addr_ton", INT1), ("dest_addr_npi", INT1),
    ("destination_addr", CSTR), ("esm_class", INT1), ("registered_delivery", INT1),
    ("data_coding", INT1),
)
_MESSAGE_ID_BODY = (("message_id", CSTR),)
_BIND_RESP_BODY = (("system_id", CSTR),)

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


def checked_header(raw: bytes) -> Header:
    header = read_header(raw)
    if header.length != len(raw):
        raise decode_error(
            header, f"command_length {header.length} but {len(raw)} octets", ESME_RINVCMDLEN
        )
    return header


def decode_error(header: Header, message: str, nack_status: int) -> PduDecodeError:
    return PduDecodeError(
        f"{header.command} seq={header.sequence}: {message}",
        command_id=header.command_id,
        status=header.status,
        sequence=header.sequence,
        nack_status=nack_status,
    )


def walk_mandatory(raw: bytes, header: Header) -> tuple[dict[str, Any], int]:
    """The mandatory fields (C-strings as bytes, without NUL) and where the TLVs start."""
    layout = _LAYOUTS.get(header.command_id)
    if layout is None:
        raise decode_error(header, "no body layout for this command", ESME_RINVCMDID)
    fields: dict[str, Any] = {}
    pos, end = HEADER_LENGTH, len(raw)
    if header.is_response and pos == end:
        return fields, pos  # an error resp, or a peer that omits the empty message_id
    for name, kind in layout:
        if kind == CSTR:
            nul = raw.find(b"\0", pos, end)
            if nul < 0:
                raise decode_error(header, f"{name} runs past the PDU", ESME_RINVCMDLEN)
            fields[name], pos = raw[pos:nul], nul + 1
        elif pos >= end:
            raise decode_error(header, f"PDU ends before {name}", ESME_RINVCMDLEN)
        elif kind == INT1:
            fields[name], pos = raw[pos], pos + 1
        else:  # sm_length + short_message
            length, pos = raw[pos], pos + 1
            if pos + length > end:
                raise decode_error(header, f"sm_length {length} runs past the PDU", ESME_RINVMSGLEN)
            fields[name], pos = raw[pos:pos + length], pos + length
    return fields, pos


def walk_tlvs(raw: bytes, pos: int, header: Header | None) -> dict[int, bytes]:
    """Tag → value for the optional part; the first occurrence of a tag wins.

    ``header`` None: read from ``raw`` only if an error needs it (the hot receipt path).
    """
    tlvs: dict[int, bytes] = {}
    end = len(raw)
    while pos < end:
        if end - pos < _TLV_HEADER.size:
            raise decode_error(header or read_header(raw), "truncated TLV header", ESME_RINVOPTPARSTREAM)
        tag, length = _TLV_HEADER.unpack_from(raw, pos)
        pos += _TLV_HEADER.size
        if pos + length > end:
            raise decode_error(header or read_header(raw), f"TLV 0x{tag:04X} runs past the PDU",
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
    header = checked_header(raw)
    _, pos = walk_mandatory(raw, header)
    return walk_tlvs(raw, pos, header)


# --- decode ----------------------------------------------------------------------


class _NoSequence:
    """The sequence source smpplib insists on (defect 1) that never counts.

    smpplib draws a number for every request PDU it constructs, even when parsing
    (defect 3); ours come from the session, so this one always answers 0.
    """

    sequence = 0

    def next_sequence(self) -> int:
        return 0


NO_SEQUENCE: Final = _NoSequence()


def decode(raw: bytes) -> Any:
    """One framed PDU as an smpplib PDU object (C-string fields come back as bytes).

    The structure is checked by our walker first, because smpplib parses a
    truncated PDU "successfully" (defect 8).  Any failure, smpplib's included, is a
    PduDecodeError that still carries the header, so the caller can answer.
    """
    header = checked_header(raw)
    name = COMMAND_NAMES.get(header.command_id)
    if name not in SMPPLIB_COMMANDS:
        raise decode_error(header, "unsupported command", ESME_RINVCMDID)
    if header.command_id in _LAYOUTS:
        _, pos = walk_mandatory(raw, header)
        walk_tlvs(raw, pos, header)
    try:
        return smpplib.smpp.parse_pdu(raw, client=NO_SEQUENCE, allow_unknown_opt_params=True)
    except Exception as exc:  # smpplib raises KeyError, struct.error, IndexError, ... (defects 4, 7)
        raise decode_error(header, f"smpplib: {type(exc).__name__}: {exc}", ESME_RSYSERR) from exc


def response_message_id(raw: bytes) -> str:
    """The message_id of a submit_sm_resp (or deliver/data_sm_resp), read by our walker.

    The hot path of every submit: smpplib's full parse costs ~25 µs for one C-string.
    Same checks as ``decode`` (length, C-string inside the PDU, TLV stream); "" when
    the resp has no body.
    """
    end = len(raw)
    if end > HEADER_LENGTH:
        # The usual resp: the id and its NUL end the PDU, no TLVs; same answer, no walk.
        length, command_id = LENGTH_ID.unpack_from(raw)
        if (length == end and command_id in _MESSAGE_ID_RESPONSES
                and raw.find(b"\0", HEADER_LENGTH) == end - 1):
            return raw[HEADER_LENGTH:end - 1].decode("latin-1")
    header = checked_header(raw)
    fields, pos = walk_mandatory(raw, header)
    walk_tlvs(raw, pos, header)
    value = fields.get("message_id")
    return value.decode("latin-1") if value else ""


_MESSAGE_ID_RESPONSES: Final = frozenset(
    COMMAND_IDS[name] for name in ("submit_sm_resp", "deliver_sm_resp", "data_sm_resp")
)
