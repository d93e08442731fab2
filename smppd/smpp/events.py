"""What the SMPP session reports to its caller, as h11's ``_events.py``.

``Session.receive_data`` and ``Session.handle_timers`` return these; the asyncio
shell (``connection.py``) and the route act on them.  Plain immutable data: no I/O,
no behaviour.  NamedTuples, not frozen dataclasses: two are built per message (a
``SubmitAccepted``, a ``ReceiptReceived``), and a frozen dataclass's ``__init__`` cost
0.46 µs against 0.24.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple

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


class Bound(NamedTuple):
    system_id: str  # the SMSC's system_id from bind_resp ("" if absent)
    status: int = ESME_ROK


class BindRejected(NamedTuple):
    """Terminal, like Terminated: the caller closes the socket and backs off.

    0x0E/0x0F (bad password/system_id): stop and alert, never loop.
    """

    status: int


class SubmitAccepted(NamedTuple):
    ref: Hashable
    smsc_id: str  # canonical, comparable with Receipt.smsc_id ("" if the SMSC sent none)
    raw_smsc_id: str  # as the SMSC sent it


class SubmitRejected(NamedTuple):
    ref: Hashable
    status: int
    temporary: bool  # requeue the same part (0x08, 0x14, 0x58, 0x64 and our 0x04 rule)


class SubmitUnconfirmed(NamedTuple):
    """No verdict: resp timeout or link gone. The caller requeues (at-least-once)."""

    ref: Hashable
    reason: str


class ReceiptReceived(NamedTuple):
    """The caller stores it, then MUST call ``session.acknowledge(sequence)``."""

    sequence: int
    receipt: Receipt


class MessageReceived(NamedTuple):
    """MO message. The caller stores it, then MUST call ``session.acknowledge(sequence)``."""

    sequence: int
    message: ShortMessage


class QueryAnswered(NamedTuple):
    """query_sm_resp: the SMSC's message_state (SMPP 3.4 §5.2.28) for the queried id."""

    ref: Hashable
    message_state: int
    error_code: int


class QueryFailed(NamedTuple):
    """No state for the queried id: an error status (0 for a timeout or a lost link)."""

    ref: Hashable
    status: int


class Terminated(NamedTuple):
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
