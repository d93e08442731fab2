"""Hand-built SMPP PDUs for the codec's tests: what smpplib cannot produce (TLVs without NUL,
2-octet message_state, TLVs it refuses in deliver_sm, truncated bodies), built with struct.
Shared by tests/smpp/test_codec.py and any test that feeds the codec raw bytes."""

from __future__ import annotations

import struct

from smppd.smpp.pdu import DELIVER_SM


def pdu(command_id: int, sequence: int, body: bytes = b"", status: int = 0) -> bytes:
    return struct.pack(">LLLL", 16 + len(body), command_id, status, sequence) + body


def cstr(text: str) -> bytes:
    return text.encode("latin-1") + b"\0"


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def sm_body(
    *,
    esm_class: int = 0x04,
    short_message: bytes = b"",
    data_coding: int = 0,
    source_addr: str = "375291234567",
    destination_addr: str = "MyBrand",
) -> bytes:
    """Mandatory part of a deliver_sm / submit_sm."""
    return (
        cstr("")  # service_type
        + bytes([1, 1]) + cstr(source_addr)
        + bytes([5, 0]) + cstr(destination_addr)
        + bytes([esm_class, 0, 0])  # esm_class, protocol_id, priority_flag
        + cstr("") + cstr("")  # schedule_delivery_time, validity_period
        + bytes([0, 0, data_coding, 0])  # registered_delivery, replace, data_coding, default id
        + bytes([len(short_message)]) + short_message
    )


def receipt_text(msg_id: str = "5A000001", stat: str = "DELIVRD", err: str = "000") -> bytes:
    return (
        f"id:{msg_id} sub:001 dlvrd:001 submit date:2403011200 done date:2403011201 "
        f"stat:{stat} err:{err} text:Hello"
    ).encode()


def deliver(body: bytes, sequence: int = 77) -> bytes:
    return pdu(DELIVER_SM, sequence, body)
