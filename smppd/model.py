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


# A stored status word to its Status: a dict lookup, where ``Status(word)`` goes through the
# enum's call machinery (~1 µs); the store converts several per status change. A word that is
# not a status raises KeyError, as ``Status(word)`` raises ValueError: never a guess.
STATUS_OF: dict[str, Status] = {s.value: s for s in Status}
# And back, for binding to SQL: sqlite3 binds an exact str directly, but for a str subclass
# (a Status) it first looks for an adapter, ~0.5 µs a parameter, three per status change.
STATUS_WORD: dict[Status, str] = {s: s.value for s in Status}

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


# --- HTTP providers -----------------------------------------------------------------

# SMS.ru message status codes (reference/providers.md §1.4).  -1 "not found" is
# not a status at all: it is absent here and handled by the caller.
SMSRU_STATUS: dict[int, Status] = {
    100: Status.ACCEPTED,  # in the SMS.ru queue: they took it, like a submit_sm_resp
    101: Status.ACCEPTED,
    102: Status.ACCEPTED,
    103: Status.DELIVERED,
    104: Status.EXPIRED,
    105: Status.UNDELIVERED,
    106: Status.UNDELIVERED,
    107: Status.UNDELIVERED,
    108: Status.UNDELIVERED,
    110: Status.DELIVERED,  # read (Viber)
    150: Status.UNDELIVERED,
}

# SMS.ru request/number error codes (§1.5) that are worth another try later;
# everything else is final for the message.  206 is the daily limit: Bitrix
# defers it, and so do we.
SMSRU_RETRY = frozenset({206, 220, 500})
# Account-level codes: not the message's fault, the admin has to act.  They are
# counted and logged as alerts.  Balance and credentials are fixed without
# touching the message, so it waits (requeued); a sender the operator did not
# approve (204, 221) cannot carry this message at all, so it fails.
SMSRU_ACCOUNT_WAIT = frozenset({200, 201, 300, 301, 302})
SMSRU_ACCOUNT = SMSRU_ACCOUNT_WAIT | {204, 221}

# SMSC.ru status codes (§2.4).  -1 and 0 both mean "they have it".
SMSC_STATUS: dict[int, Status] = {
    -3: Status.FAILED,  # not found
    -2: Status.FAILED,  # stopped before sending
    -1: Status.ACCEPTED,
    0: Status.ACCEPTED,
    1: Status.DELIVERED,
    2: Status.DELIVERED,  # read
    3: Status.EXPIRED,
    4: Status.DELIVERED,  # link clicked
    20: Status.UNDELIVERED,
    22: Status.UNDELIVERED,
    23: Status.UNDELIVERED,
    24: Status.FAILED,  # insufficient funds
    25: Status.UNDELIVERED,
}

# SMSC.ru send errors (§2.3): 4 (IP blocked for a while) and 9 (duplicate or too
# many concurrent requests) mean "wait and retry"; the others are final.
SMSC_RETRY = frozenset({4, 9})
# Wrong credentials (2) and no money (3) wait like SMS.ru's, alerting the admin.
SMSC_ACCOUNT_WAIT = frozenset({2, 3})
SMSC_ACCOUNT = SMSC_ACCOUNT_WAIT | {4}


class UnknownProviderStatus(ValueError):
    """A provider status code we cannot map: recorded and counted, never guessed."""


def smsru_status(code: int) -> Status:
    if code in SMSRU_STATUS:
        return SMSRU_STATUS[code]
    raise UnknownProviderStatus(f"SMS.ru status {code}")


def smsc_status(code: int) -> Status:
    if code in SMSC_STATUS:
        return SMSC_STATUS[code]
    raise UnknownProviderStatus(f"SMSC status {code}")
