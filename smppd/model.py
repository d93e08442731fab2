"""Message statuses, the order they may move in, and every mapping of codes to them.

This is the one place to look for "which receipt word means what" and "what does
Bitrix24 see for each of our statuses". Everything else asks this module.

The records that describe a message on its way (``NewMessage`` in, ``OpenMessage`` to
send, ``OutboxItem`` owed to Bitrix24, ...) live here too: the store keeps them, the
routes, the pusher and intake pass them around, and none of those is their home.

A message has three ids, and each has one name everywhere (records, store columns, RPC
parameters, log fields):

* ``b24_id``: Bitrix24's 32-hex id (the form's and the REST API's ``message_id``), the key
  of idempotent intake and of every status update owed to Bitrix24;
* the row id: our ``message.id``; ``row_id`` wherever something else refers to it (a
  segment, an event, a Python name);
* ``smsc_id``: the id the SMSC (``submit_sm_resp``) or HTTP provider gave a part, which
  its receipts and callbacks name. ``message_id`` is left to the SMPP codec, where it is
  the PDU field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NamedTuple


class Status(StrEnum):
    """Our status of a message or of one of its segments.

    queued → submitted → accepted → one of the finals.  ``submitted`` means a
    submit_sm is on the wire without its resp; ``accepted`` means the operator
    took it (has an smsc_id).
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


# Not final yet: the message is still on its way.
OPEN = frozenset(s for s in Status if s not in FINAL)
# The finals other than delivered, in the two kinds an admin tells apart: the operator's word
# that the phone never got it, and a refusal (the operator's, or ours: an invalid number).
UNDELIVERED_FINALS = frozenset({Status.UNDELIVERED, Status.EXPIRED})
FAILED_FINALS = frozenset({Status.REJECTED, Status.FAILED})


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


# --- the records that describe messages on their way (stored and read by ``store``) ------------

class NewMessage(NamedTuple):
    """A post that passed intake's checks, for the store. A NamedTuple like ``IntakeResult``:
    built once per message, and a frozen dataclass's ``__init__`` of these fields cost 1.9 µs
    against 0.6."""

    member_id: str
    b24_id: str
    code: str
    route: str
    sender: str
    phone: str | None
    text: str
    encoding: str
    segments: int
    module_id: str = ""
    reason: str | None = None  # set when the message fails at intake (invalid number, a rule)
    hold: str | None = None  # a business rule holds it (rules.HOLD_*): stored, not dispatched
    hold_until: float | None = None
    entities: str | None = None  # JSON of the bound CRM entities, for the consent lookup
    duplicate_window: float = 0.0  # seconds; a same-number same-text message within it is a repeat
    duplicate_fails: bool = False  # a repeat fails, instead of following the first's status


class IntakeResult(NamedTuple):
    """What intake stored (or found). A NamedTuple like ``OutboxItem``: the writer thread
    builds one per message, and a frozen dataclass's ``__init__`` with these keywords costs
    1.6 µs against 0.7."""

    id: int
    status: Status
    duplicate: bool
    duplicate_of: int | None = None  # a repeat of this earlier message (rules.py): not sent
    reason: str | None = None
    concat_ref: int | None = None  # per destination (issue 3), for multi-segment messages


class OpenMessage(NamedTuple):
    """A message that still has segments to submit, for the route's queue.

    A NamedTuple like ``IntakeResult``: one per message (at intake, and per reload of a
    route's queue); the frozen dataclass's ``__init__`` cost 1.3 µs against 0.4."""

    id: int
    route: str
    sender: str
    phone: str
    text: str
    open_segments: tuple[int, ...]
    concat_ref: int | None = None  # per destination, stored: resent parts join their siblings
    b24_id: str = ""  # Bitrix24's id of the message, for the log lines about it


@dataclass(frozen=True)
class ReceiptRules:
    """How an SMPP route's receipts find their parts (issue 14.6, 14.7)."""

    # receipt_id_base = "auto": when the id as-is matches nothing, try its hex<->decimal
    # readings against the parts still waiting for a receipt
    id_readings: bool = False
    # "all": every part has its own receipt; "first" / "last" / "any": the receipt of that
    # part is the whole message's (operators that send one receipt per long message)
    multipart: str = "all"


NO_RULES = ReceiptRules()


@dataclass(frozen=True)
class Unreceipted:
    """A part the operator accepted and never sent a receipt for."""

    row_id: int
    seq: int
    smsc_id: str
    sender: str
    accepted_at: float


@dataclass(frozen=True)
class PollItem:
    """A message an HTTP provider accepted and never gave a final status for."""

    id: int
    smsc_id: str
    phone: str
    channel: str | None
    sender: str
    text: str
    created_at: float = 0.0


class OutboxItem(NamedTuple):
    """An update owed to Bitrix24. A NamedTuple, not a frozen dataclass: the writer thread
    builds one per due row (up to 50 per read, a read per batch or more), and a frozen
    dataclass's ``__init__`` costs 0.9 µs against 0.2."""

    member_id: str
    b24_id: str
    code: str
    status: str
    attempts: int
    row_id: int | None = None  # ours, for the log lines; None if the message row is gone


@dataclass(frozen=True)
class PortalRecord:
    """One Bitrix24 portal (one install of our local app), keyed by ``member_id``: its only record.

    Why one: the store keeps it, an install event proves and builds it, a ``[[portal]]`` of the
    config is one (``config.PortalConfig``), the REST client talks with it and hands back the
    refreshed one to be stored before it is used. Nothing converts between shapes, so a field
    cannot be dropped on the way (the ``application_token`` a refresh must keep, say).
    Secrets and tokens stay out of ``repr``: a record in a log line or a traceback leaks none.
    """

    member_id: str
    domain: str
    client_endpoint: str
    server_endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    application_token: str = field(repr=False)
    access_token: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)

    def with_tokens(self, access_token: str, refresh_token: str) -> PortalRecord:
        """The same portal with another OAuth pair (a refresh rotated it, an event brought it)."""
        return replace(self, access_token=access_token, refresh_token=refresh_token)


@dataclass
class StoredAppEvent:
    """An app event as kept until it is proven and applied, or refused (bitrix24/events.py)."""

    id: int
    event: str
    member_id: str
    domain: str
    auth: dict[str, str] = field(repr=False)  # the auth[...] block; tokens rotate as the proof spends them
    stage: str  # 'received', or 'refreshed' once the event's refresh token was spent
    received_at: float
    attempts: int
    next_at: float
    last_error: str | None


# --- what the store's reader hands the journal and ``smppd report`` (store/reader.py) ----------
# NamedTuples: the journal reads thousands of events a second in its thread, and a NamedTuple
# costs ~0.15 µs a row where a dataclass costs ~1.


class TailEvent(NamedTuple):
    """A new status event, lean: what counting it and judging it needs."""

    event_id: int
    row_id: int
    status: str
    applied: bool
    route: str
    latency: float | None  # seconds from the segment's accepted to this final, for an applied final
    settles: bool  # its status and time are the message's: it may be the event that settled it


class SettledRow(NamedTuple):
    """A settled message and one of its segments' SMSC ids (None when no segment has one):
    the rows behind one ``message_final`` line."""

    row_id: int
    b24_id: str
    route: str
    status: str
    reason: str | None
    seconds: float  # from intake to the final status
    smsc_id: str | None


class IgnoredEvent(NamedTuple):
    """An event that was recorded but not applied (a late or duplicated resp or receipt)."""

    event_id: int
    row_id: int
    b24_id: str
    route: str
    seq: int
    status: str
    message_status: str
    detail: str | None


class StoreFigures(NamedTuple):
    """The figures behind the store's metrics, read in one view."""

    messages: dict[tuple[str, str], int]  # per (route, status)
    outbox: dict[str, tuple[int, float]]  # per portal: updates owed, oldest created_at
    receipts_pending: int  # receipts waiting for their resp


class DayCount(NamedTuple):
    """Messages received on a day by route and status, and their segments."""

    day: str
    route: str
    status: str
    messages: int
    segments: int


class DeliveryTime(NamedTuple):
    """A delivered message's day, route and seconds from intake to delivered."""

    day: str
    route: str
    seconds: float
