"""Building SMPP PDUs: our table-driven encoder for the hot PDUs, smpplib for the rest.

submit_sm and deliver_sm without TLVs, the message_id responses and the bodyless PDUs
are built from one table of fields (``_SM_FAST``), the same bytes as smpplib's
(tests/test_smpp_hardening.py compares them field by field) at a small part of its
cost; anything else goes to smpplib.  Every field is checked against SMPP first, so
nothing is truncated silently (reference/smpp.md §9, defects 9 and 14).
"""

from __future__ import annotations

from typing import Any, Final

import smpplib.command
import smpplib.smpp

from .pdu import (
    COMMAND_IDS,
    CSTR,
    ESME_ROK,
    GENERIC_NACK,
    HEADER,
    HEADER_LENGTH,
    INT1,
    MAX_PDU_LENGTH,
    MAX_SEQUENCE,
    MAX_SHORT_MESSAGE,
    NO_BODY_ON_ERROR,
    NO_SEQUENCE,
    RESPONSE_BIT,
    SM,
    SMPPLIB_COMMANDS,
)

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
    if command_id is None or command not in SMPPLIB_COMMANDS:
        raise ValueError(f"cannot encode {command!r}")
    status = fields.pop("status", ESME_ROK)
    _check_sequence(command, command_id, sequence)
    if not isinstance(status, int) or not 0 <= status <= 0xFFFFFFFF:
        raise ValueError(f"{command}: bad command_status {status!r}")
    if status != ESME_ROK and command in NO_BODY_ON_ERROR:
        return HEADER.pack(HEADER_LENGTH, command_id, status, sequence)
    if fields.get("short_message") and fields.get("message_payload"):
        raise ValueError(f"{command}: short_message and message_payload are exclusive")
    fast = _encode_fast(command, command_id, sequence, status, fields)
    if fast is not None:
        return fast
    return _encode_smpplib(command, sequence, status, fields)


def _encode_smpplib(command: str, sequence: int, status: int, fields: dict[str, Any]) -> bytes:
    """smpplib's encoder: every PDU and TLV it knows, at ~100 µs a PDU."""
    pdu = smpplib.smpp.make_pdu(command, client=NO_SEQUENCE)
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
    ("service_type", CSTR, 6), ("source_addr_ton", INT1, 0), ("source_addr_npi", INT1, 0),
    ("source_addr", CSTR, 21), ("dest_addr_ton", INT1, 0), ("dest_addr_npi", INT1, 0),
    ("destination_addr", CSTR, 21), ("esm_class", INT1, 0), ("protocol_id", INT1, 0),
    ("priority_flag", INT1, 0), ("schedule_delivery_time", CSTR, 17),
    ("validity_period", CSTR, 17), ("registered_delivery", INT1, 0),
    ("replace_if_present_flag", INT1, 0), ("data_coding", INT1, 0),
    ("sm_default_msg_id", INT1, 0), ("short_message", SM, MAX_SHORT_MESSAGE),
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
        get = fields.get
        for name, kind, limit in _SM_FAST:
            value = get(name)
            if value is None:
                out.append(0)  # each kind's absence is one zero octet: 0, an empty C-string, sm_length 0
            elif kind is INT1:
                # ``type(...) is int`` first: the usual field, one check (a bool or an int
                # subclass goes the long way, to the same verdict as before)
                if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
                    raise TypeError(f"{command}.{name} must be int, not {type(value).__name__}")
                if not 0 <= value <= 0xFF:
                    raise ValueError(f"{command}.{name}={value} does not fit 1 octet(s)")
                out.append(value)
            elif kind is CSTR:
                _check_cstring(command, name, value, limit, False)
                out += value.encode("latin-1")
                out += b"\0"
            else:
                if not isinstance(value, (bytes, bytearray, memoryview)):
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
    if status != ESME_ROK and command in NO_BODY_ON_ERROR:
        return HEADER.pack(HEADER_LENGTH, command_id, status, sequence)
    return HEADER.pack(HEADER_LENGTH + 1, command_id, status, sequence) + b"\0"


def generic_nack(sequence: int, status: int) -> bytes:
    """The answer to a PDU we cannot or will not handle; it has no body."""
    return HEADER.pack(HEADER_LENGTH, GENERIC_NACK, status, sequence)
