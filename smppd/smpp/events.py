"""What the SMPP session reports to its caller, as h11's ``_events.py``.

``Session.receive_data`` and ``Session.handle_timers`` return these; the asyncio
shell (``connection.py``) and the route act on them.  Plain frozen data: no I/O,
no behaviour.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from .pdu import ESME_ROK
from .receipts import Receipt, ShortMessage

__all__ = [
    "BindRejected",
    "Bound",
    "Event",
    "MessageReceived",
    "QueryAnswered",
    "QueryFailed",
    "ReceiptReceived",
    "SubmitAccepted",
    "SubmitRejected",
    "SubmitUnconfirmed",
    "Terminated",
]


@dataclass(frozen=True, slots=True)
class Bound:
    system_id: str  # the SMSC's system_id from bind_resp ("" if absent)
    status: int = ESME_ROK


@dataclass(frozen=True, slots=True)
class BindRejected:
    """Terminal, like Terminated: the caller closes the socket and backs off.

    0x0E/0x0F (bad password/system_id): stop and alert, never loop.
    """

    status: int


@dataclass(frozen=True, slots=True)
class SubmitAccepted:
    ref: Hashable
    smsc_id: str  # canonical, comparable with Receipt.smsc_id ("" if the SMSC sent none)
    raw_smsc_id: str  # as the SMSC sent it


@dataclass(frozen=True, slots=True)
class SubmitRejected:
    ref: Hashable
    status: int
    temporary: bool  # requeue the same part (0x08, 0x14, 0x58, 0x64 and our 0x04 rule)


@dataclass(frozen=True, slots=True)
class SubmitUnconfirmed:
    """No verdict: resp timeout or link gone. The caller requeues (at-least-once)."""

    ref: Hashable
    reason: str


@dataclass(frozen=True, slots=True)
class ReceiptReceived:
    """The caller stores it, then MUST call ``session.acknowledge(sequence)``."""

    sequence: int
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """MO message. The caller stores it, then MUST call ``session.acknowledge(sequence)``."""

    sequence: int
    message: ShortMessage


@dataclass(frozen=True, slots=True)
class QueryAnswered:
    """query_sm_resp: the SMSC's message_state (SMPP 3.4 §5.2.28) for the queried id."""

    ref: Hashable
    message_state: int
    error_code: int


@dataclass(frozen=True, slots=True)
class QueryFailed:
    """No state for the queried id: an error status (0 for a timeout or a lost link)."""

    ref: Hashable
    status: int


@dataclass(frozen=True, slots=True)
class Terminated:
    """The caller writes ``data_to_send()`` (it may hold an unbind_resp), then closes."""

    reason: str


Event = (
    Bound
    | BindRejected
    | SubmitAccepted
    | SubmitRejected
    | SubmitUnconfirmed
    | ReceiptReceived
    | MessageReceived
    | QueryAnswered
    | QueryFailed
    | Terminated
)
