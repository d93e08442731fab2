"""Message statuses, the order they may move in, and every mapping of codes to them.

This is the one place to look for "which receipt word means what" and "what does
Bitrix24 see for each of our statuses". Everything else asks this module.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Our status of a message or of one of its segments.

    queued → submitted → accepted → one of the finals.  ``submitted`` means a
    submit_sm is on the wire without its resp; ``accepted`` means the operator
    took it (has a message id).
    """

    QUEUED = "queued"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"


FINAL = frozenset(
    {Status.DELIVERED, Status.UNDELIVERED, Status.EXPIRED, Status.REJECTED, Status.FAILED}
)

# A status may only move to a higher rank: a late ``accepted`` after ``delivered``
# (receipts overtake resps all the time) is recorded but never applied.
RANK: dict[Status, int] = {
    Status.QUEUED: 0,
    Status.SUBMITTED: 1,
    Status.ACCEPTED: 2,
    **{s: 3 for s in FINAL},
}


def may_advance(current: Status, new: Status) -> bool:
    """True when ``new`` is a forward move from ``current``.

    Two different finals never replace each other: the first final word wins.
    """
    return RANK[new] > RANK[current]


# --- Bitrix24 -----------------------------------------------------------------

# messageservice.message.status.update accepts queued, sent, delivered,
# undelivered, failed (reference/bitrix24.md §7).  ``None``: nothing to push,
# because Bitrix24 already shows SENT after the hand-off, and a ``queued`` push
# would only cost a request.
BITRIX24_STATUS: dict[Status, str | None] = {
    Status.QUEUED: None,
    Status.SUBMITTED: None,
    Status.ACCEPTED: "sent",
    Status.DELIVERED: "delivered",
    Status.UNDELIVERED: "undelivered",
    Status.EXPIRED: "undelivered",
    Status.REJECTED: "failed",
    Status.FAILED: "failed",
}

BITRIX24_RANK: dict[str, int] = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}


def bitrix24_status(status: Status) -> str | None:
    """The STATUS value Bitrix24 gets for ours, or None when nothing is pushed."""
    return BITRIX24_STATUS[status]


# --- SMPP receipts ----------------------------------------------------------------

# Receipt ``stat:`` words, the 7-letter DLR forms and the full message_state
# names (A1 sends those), reference/smpp.md §7 and providers.md §3.
RECEIPT_WORDS: dict[str, Status] = {
    "DELIVRD": Status.DELIVERED,
    "DELIVERED": Status.DELIVERED,
    "EXPIRED": Status.EXPIRED,
    "DELETED": Status.UNDELIVERED,
    "UNDELIV": Status.UNDELIVERED,
    "UNDELIVERABLE": Status.UNDELIVERED,
    "REJECTD": Status.REJECTED,
    "REJECTED": Status.REJECTED,
    "ACCEPTD": Status.ACCEPTED,
    "ACCEPTED": Status.ACCEPTED,
    "ENROUTE": Status.ACCEPTED,
    "SCHEDLD": Status.ACCEPTED,
    "SCHEDULED": Status.ACCEPTED,
    # MTS documents UNKNOWN as "sent, status unknown; keep waiting".
    "UNKNOWN": Status.ACCEPTED,
    "SKIPPED": Status.UNDELIVERED,
}

# message_state TLV values (SMPP 3.4 §5.2.28, plus 0 and 9 from SMPP 5.0).
MESSAGE_STATES: dict[int, Status] = {
    0: Status.ACCEPTED,  # SCHEDULED
    1: Status.ACCEPTED,  # ENROUTE
    2: Status.DELIVERED,
    3: Status.EXPIRED,
    4: Status.UNDELIVERED,  # DELETED
    5: Status.UNDELIVERED,  # UNDELIVERABLE
    6: Status.ACCEPTED,  # ACCEPTED
    7: Status.ACCEPTED,  # UNKNOWN
    8: Status.REJECTED,
    9: Status.UNDELIVERED,  # SKIPPED
}


class UnknownReceiptState(ValueError):
    """A receipt whose state we cannot map: recorded and counted, never guessed."""


def receipt_status(state: int | None, stat: str | None) -> Status:
    """Our status for a receipt: the message_state TLV wins over the text word."""
    if state is not None and state in MESSAGE_STATES:
        return MESSAGE_STATES[state]
    if stat:
        word = stat.strip().upper()
        if word in RECEIPT_WORDS:
            return RECEIPT_WORDS[word]
    raise UnknownReceiptState(f"receipt state {state!r} / stat {stat!r}")


def aggregate(segment_statuses: list[Status]) -> Status:
    """The status of a message from the statuses of its segments.

    Delivered only when every segment is; the first failing segment decides the
    failure kind; otherwise the least advanced segment sets the pace.
    """
    finals = [s for s in segment_statuses if s in FINAL and s != Status.DELIVERED]
    if finals:
        return finals[0]
    return min(segment_statuses, key=RANK.__getitem__)
