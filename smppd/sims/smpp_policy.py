"""The simulated SMSC's decisions, apart from its sockets: what it was sent, what it answers
to each submit_sm (``SubmitPolicy``: the fault modes), and which outcomes get a receipt.

The SMSC's configurable faults (``SimulatorConfig``) and the text of its receipts
(``receipt_fields``) are decisions too and live here.

Why a module of its own: tests and benches script these (``ScriptedPolicy``,
``QueueFullBursts``) and measure with them (``part_of``, ``max_in_any_second``) without
caring how the SMSC frames its PDUs.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from smppd import text as sms_text

from ..smpp.pdu import ESME_RMSGQFUL, ESME_ROK, parse_tlvs

_RECEIPT_PREVIEW_CHARS: Final = 20

# stat word → message_state (reference §7)
MESSAGE_STATES: Final[dict[str, int]] = {
    "ENROUTE": 1, "DELIVRD": 2, "EXPIRED": 3, "DELETED": 4,
    "UNDELIV": 5, "ACCEPTD": 6, "UNKNOWN": 7, "REJECTD": 8,
}
INTERMEDIATE: Final = frozenset({"ENROUTE", "ACCEPTD"})
_ERR_CODES: Final[dict[str, str]] = {
    "ENROUTE": "000", "DELIVRD": "000", "ACCEPTD": "000", "EXPIRED": "001",
    "DELETED": "002", "UNDELIV": "003", "UNKNOWN": "004", "REJECTD": "005",
}


@dataclass
class SubmittedSm:
    """One submit_sm as the SMSC saw it; ``smsc_id`` is set once it is accepted."""

    raw: bytes
    sequence: int
    system_id: str  # of the bind it came on
    service_type: str
    source_addr: str
    source_addr_ton: int
    source_addr_npi: int
    destination_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    esm_class: int
    data_coding: int
    registered_delivery: int
    short_message: bytes
    message_payload: bytes | None = None
    sar_msg_ref_num: int | None = None
    sar_total_segments: int | None = None
    sar_segment_seqnum: int | None = None
    tlvs: dict[int, bytes] = field(default_factory=dict)
    smsc_id: str | None = None
    submitted_at: float = field(default_factory=time.time)
    received_at: float = field(default_factory=time.monotonic)  # for rate measurements

    @property
    def text(self) -> str:
        """The message text without UDH; for assertions and the receipt preview."""
        payload = self.short_message or self.message_payload or b""
        _, body = sms_text.strip_udh(self.esm_class, payload)
        return sms_text.decode(self.data_coding, body)


def _submitted_sm(raw: bytes, pdu: Any, system_id: str) -> SubmittedSm:
    def text(value: bytes | None) -> str:
        return (value or b"").decode("latin-1")

    return SubmittedSm(
        raw=raw,
        sequence=pdu.sequence,
        system_id=system_id,
        service_type=text(pdu.service_type),
        source_addr=text(pdu.source_addr),
        source_addr_ton=pdu.source_addr_ton,
        source_addr_npi=pdu.source_addr_npi,
        destination_addr=text(pdu.destination_addr),
        dest_addr_ton=pdu.dest_addr_ton,
        dest_addr_npi=pdu.dest_addr_npi,
        esm_class=pdu.esm_class,
        data_coding=pdu.data_coding,
        registered_delivery=pdu.registered_delivery,
        short_message=pdu.short_message or b"",
        message_payload=pdu.message_payload,
        sar_msg_ref_num=pdu.sar_msg_ref_num,
        sar_total_segments=pdu.sar_total_segments,
        sar_segment_seqnum=pdu.sar_segment_seqnum,
        tlvs=parse_tlvs(raw),
    )


@dataclass(frozen=True)
class SubmitVerdict:
    """What the SMSC does with one submit_sm.

    ``status`` non-zero: answer submit_sm_resp with it (e.g. ESME_RTHROTTLED).
    ``respond`` False: swallow the PDU (no resp, no receipt), as a lossy SMSC does.
    """

    status: int = ESME_ROK
    respond: bool = True
    delay: float = 0.0  # seconds before the resp: a slow SMSC
    nack: bool = False  # answer generic_nack(status) instead of submit_sm_resp
    disconnect: bool = False  # drop the TCP connection instead of answering (mid-window)


ACCEPT: Final = SubmitVerdict()


class SubmitPolicy:
    """Decides each submit_sm before it is accepted; subclass it for fault modes."""

    def decide(self, sm: SubmittedSm) -> SubmitVerdict:
        return ACCEPT


class ScriptedPolicy(SubmitPolicy):
    """The given verdicts for the first submits, in order, then ``then`` for the rest."""

    def __init__(self, verdicts: list[SubmitVerdict], then: SubmitVerdict = ACCEPT) -> None:
        self.verdicts = deque(verdicts)
        self.then = then

    def decide(self, sm: SubmittedSm) -> SubmitVerdict:
        return self.verdicts.popleft() if self.verdicts else self.then


class ThrottlePolicy(SubmitPolicy):
    """An operator's rate cap: more than ``tps`` accepted in any sliding second gets ``status``.

    ESME_RTHROTTLED (0x58) by default, ESME_RMSGQFUL (0x14) for a "queue full" SMSC.
    """

    def __init__(self, tps: int, status: int = 0x58, *, clock: Any = time.monotonic) -> None:
        self.tps = tps
        self.status = status
        self.clock = clock
        self._accepted: deque[float] = deque()
        self.refused = 0

    def decide(self, sm: SubmittedSm) -> SubmitVerdict:
        now = self.clock()
        while self._accepted and self._accepted[0] <= now - 1.0:
            self._accepted.popleft()
        if len(self._accepted) >= self.tps:
            self.refused += 1
            return SubmitVerdict(status=self.status)
        self._accepted.append(now)
        return ACCEPT


class QueueFullBursts(SubmitPolicy):
    """Every ``every``-th submit finds the SMSC's queue full: it and every submit for the next
    ``blocked`` seconds get ESME_RMSGQFUL (0x14), then the queue drains and all is accepted."""

    def __init__(self, every: int = 20, blocked: float = 0.5, *, clock: Any = time.monotonic) -> None:
        self.every = every
        self.blocked = blocked
        self.clock = clock
        self.blocked_until = 0.0
        self.bursts = 0
        self.refused = 0
        self._count = 0

    def decide(self, sm: SubmittedSm) -> SubmitVerdict:
        now = self.clock()
        if now < self.blocked_until:
            self.refused += 1
            return SubmitVerdict(status=ESME_RMSGQFUL)
        self._count += 1
        if self._count % self.every == 0:
            self.blocked_until = now + self.blocked
            self.bursts += 1
            self.refused += 1
            return SubmitVerdict(status=ESME_RMSGQFUL)
        return ACCEPT


def part_of(sm: SubmittedSm) -> tuple[int, int] | None:
    """(total, 1-based seqnum) of a concatenated part, from its UDH or sar_* TLVs; None if whole."""
    if sm.sar_total_segments:
        return sm.sar_total_segments, sm.sar_segment_seqnum or 1
    if sm.esm_class & 0x40 and sm.short_message:
        udh = sm.short_message[1:1 + sm.short_message[0]]
        i = 0
        while i + 2 <= len(udh):
            iei, length = udh[i], udh[i + 1]
            data = udh[i + 2:i + 2 + length]
            if iei == 0x00 and length == 3:
                return data[1], data[2]
            if iei == 0x08 and length == 4:
                return data[2], data[3]
            i += 2 + length
    return None


def max_in_any_second(times: list[float], period: float = 1.0) -> int:
    """The most events inside any window of ``period`` seconds (what an operator's meter sees)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - period:
            start += 1
        best = max(best, end - start + 1)
    return best


def _wants_receipt(registered_delivery: int, outcome: str) -> bool:
    """registered_delivery bits 1-0: 01 every final outcome, 10 failures only (11 as 01)."""
    mode = registered_delivery & 0x03
    if outcome in INTERMEDIATE:
        return bool(registered_delivery & 0x10) or mode in (0x01, 0x03)
    if outcome == "DELIVRD":
        return mode in (0x01, 0x03)
    return mode != 0


def _preview(sm: SubmittedSm) -> str:
    """The first characters of the message, ASCII-safe as receipt texts are."""
    try:
        words = sm.text
    except ValueError:
        return ""
    return words[:_RECEIPT_PREVIEW_CHARS].encode("ascii", "replace").decode("ascii")


@dataclass
class SimulatorConfig:
    system_id: str = "SIMSMSC"
    accounts: dict[str, str] = field(default_factory=lambda: {"smppd": "secret"})
    receipt_delay: float = 0.05  # seconds after the submit_sm_resp
    outcomes: dict[str, float] = field(default_factory=lambda: {"DELIVRD": 1.0})  # weights
    id_format: str = "hex"  # "hex" (upper case) or "dec"
    receipt_tlvs: bool = True  # receipted_message_id + message_state besides the text
    seed: int | None = None  # makes the outcome of each submit reproducible
    first_smsc_id: int = 0x5A000000
    receipt_first: bool = False  # send the receipt before the submit_sm_resp (routine under load)
    id_leading_zeros: int = 0  # pad resp ids with zeros ("0E999F21"), receipts drop them
    id_lower_case_in_receipt: bool = False  # hex ids lower-case in the receipt only
    receipt_ids_decimal: bool = False  # hex resp ids, the same ids in decimal in receipts
    # statuses for the first binds, in order (e.g. ESME_RALYBND while an old bind lingers)
    bind_refusals: list[int] = field(default_factory=list)
    # every bind within this many seconds of start() gets ESME_RALYBND (our old session lingers)
    stale_session: float = 0.0
    unbind_every: float = 0.0  # SMSC-initiated unbind of every bind this often (0: never)
    receipts: bool = True  # False: accepts everything and never sends a receipt
    long_receipts: str = "all"  # "all" | "first" | "last": the parts of a long message that get one
    query_sm: bool = True  # answer query_sm (False: generic_nack RINVCMDID, as many SMSCs do)

    def __post_init__(self) -> None:
        unknown = set(self.outcomes) - set(MESSAGE_STATES)
        if unknown:
            raise ValueError(f"outcomes: unknown stat words {sorted(unknown)}")
        if any(w < 0 for w in self.outcomes.values()) or sum(self.outcomes.values()) <= 0:
            raise ValueError("outcomes: weights must be >= 0 and not all 0")
        if self.id_format not in ("hex", "dec"):
            raise ValueError(f"id_format must be 'hex' or 'dec', not {self.id_format!r}")
        if self.receipt_delay < 0:
            raise ValueError("receipt_delay must be >= 0")
        if self.long_receipts not in ("all", "first", "last"):
            raise ValueError(f"long_receipts must be all, first or last, not {self.long_receipts!r}")


def receipt_fields(sm: SubmittedSm, outcome: str, config: SimulatorConfig) -> dict[str, Any]:
    """The deliver_sm fields of the receipt of ``sm``, as ``config`` has the SMSC spell it."""
    assert sm.smsc_id is not None
    submit_date = time.strftime("%y%m%d%H%M", time.gmtime(sm.submitted_at))
    done_date = time.strftime("%y%m%d%H%M", time.gmtime())
    delivered = "001" if outcome == "DELIVRD" else "000"
    receipt_id = sm.smsc_id.lower() if config.id_lower_case_in_receipt else sm.smsc_id
    if config.receipt_ids_decimal and config.id_format == "hex":
        receipt_id = str(int(sm.smsc_id, 16))
    text = (
        f"id:{receipt_id} sub:001 dlvrd:{delivered} submit date:{submit_date} "
        f"done date:{done_date} stat:{outcome} err:{_ERR_CODES[outcome]} "
        f"text:{_preview(sm)}"
    )
    fields: dict[str, Any] = dict(
        service_type="",
        source_addr_ton=sm.dest_addr_ton, source_addr_npi=sm.dest_addr_npi,
        source_addr=sm.destination_addr,
        dest_addr_ton=sm.source_addr_ton, dest_addr_npi=sm.source_addr_npi,
        destination_addr=sm.source_addr,
        esm_class=0x04, data_coding=0x00,
        short_message=text.encode("ascii", "replace"),
    )
    if config.receipt_tlvs:
        fields.update(receipted_message_id=receipt_id, message_state=MESSAGE_STATES[outcome])
    return fields
