"""How one message becomes its submit_sm segments on a route.

The route's profile decides the long-message method (concatenation UDH with an
8- or 16-bit reference, SAR TLVs, or one ``message_payload``), the data_coding
of Latin text and the source TON/NPI.  Intake counts segments with the same
function the route sends them with, so the count shown to the user is the
number of submit_sm that go out.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import phone, text
from ..config import LONG_METHODS, SmppRouteConfig
from ..model import OpenMessage
from .pdu import ESM_CLASS_UDHI
from .session import Submit

UDH8, UDH16, SAR, PAYLOAD = LONG_METHODS  # the names config accepts for long_method


class SegmentJob(NamedTuple):
    """One segment's submit_sm for the route's queue; a NamedTuple: one per segment."""

    row_id: int
    seq: int
    submit: Submit
    b24_id: str = ""  # for the log lines about this segment


def route_encoding(cfg: object, body: str) -> text.EncodedText:
    """The parts of ``body`` as an SMPP route ``cfg`` sends them (the default split otherwise)."""
    if not isinstance(cfg, SmppRouteConfig):
        return text.encode(body)
    return text.encode(
        body,
        ref16=cfg.long_method == UDH16,
        latin_coding=cfg.latin_data_coding,
        split=cfg.long_method != PAYLOAD,
    )


def concat_ref(message: OpenMessage, ref16: bool) -> int:
    """The stored per-destination reference; messages stored before it existed use their id."""
    ref = message.concat_ref if message.concat_ref is not None else message.id
    return ref & (0xFFFF if ref16 else 0xFF)


def build_segments(message: OpenMessage, cfg: SmppRouteConfig) -> list[SegmentJob]:
    """The submit_sm of each open segment of a message.

    The concatenation reference is stored with the message, so a segment resent
    after a restart carries the same reference as its already-delivered
    siblings and the handset can still join them.
    """
    encoded = route_encoding(cfg, message.text)
    method = cfg.long_method
    total = encoded.segments
    sender = message.sender
    numeric = sender.lstrip("+").isdigit()
    ton, npi = (cfg.numeric_ton, cfg.numeric_npi) if numeric else (cfg.alpha_ton, cfg.alpha_npi)
    ref = concat_ref(message, method == UDH16)
    source_addr = sender.lstrip("+") if numeric else sender
    destination_addr = phone.digits(message.phone) if message.open_segments else ""  # once, not per part
    jobs = []
    for seq in message.open_segments:
        body = encoded.parts[seq]
        esm_class = 0
        tlvs: dict[str, object] = {}
        if method == PAYLOAD:
            tlvs["message_payload"] = body
            body = b""
        elif total > 1 and method == SAR:
            tlvs.update(sar_msg_ref_num=ref, sar_total_segments=total, sar_segment_seqnum=seq + 1)
        elif total > 1:
            body = text.udh_concat(ref, total, seq + 1, ref16=method == UDH16) + body
            esm_class = ESM_CLASS_UDHI
        jobs.append(
            SegmentJob(
                message.id,
                seq,
                Submit(
                    ref=(message.id, seq),
                    source_addr=source_addr,
                    source_addr_ton=ton,
                    source_addr_npi=npi,
                    destination_addr=destination_addr,
                    esm_class=esm_class,
                    data_coding=encoded.data_coding,
                    registered_delivery=cfg.registered_delivery,
                    short_message=body,
                    tlvs=tlvs,
                ),
                message.b24_id,
            )
        )
    return jobs
