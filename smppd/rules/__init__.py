"""Business rules that decide whether, when and under which name a message goes out.

Pure functions and small values, no I/O: intake, the hold worker and the route's
MO handling ask this module, so each rule is written down once and tested on
plain values. The rules exist because integrators configure them by hand in
Bitrix24 robots today (a condition on a consent field, a "sent already" flag),
and a robot that forgets one sends an ad at night to someone who said STOP.

- A message is **marketing** when its CODE is declared marketing, or whatever the
  CODE says when CRM marketing posted it (``module_id=sender``, bitrix24.md §4).
- Marketing needs **consent** (a CRM field, see ``consent.py``), is refused for
  numbers on the **stop list**, and waits out **quiet hours**.
- A repeat of the same text to the same number within the **duplicate window**
  is not sent again (the store finds it; ``DUPLICATE_*`` name the outcomes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping
from zoneinfo import ZoneInfo

from ..config import RulesConfig, SenderConfig

MARKETING_MODULE = "sender"  # Bitrix24's CRM marketing module posts with this module_id

# Held messages wait in the store with one of these, never in memory only.
HOLD_CONSENT = "consent"  # the CRM consent field is still to be read
HOLD_QUIET = "quiet"  # marketing during quiet hours, released when they end

# Refusal reasons: short, free of the number, shown in the store and the log; the
# counters in RuleStats are keyed by the part before the first ':'.
REASON_STOPLIST = "stop list: the number opted out of marketing"
REASON_NO_BINDING = "no consent: no contact, lead, company or deal bound to the message"

# CRM entity type ids (OWNER_TYPE_ID of bindings, crm.enum.ownertype).
LEAD, DEAL, CONTACT, COMPANY = 1, 2, 3, 4
ENTITY_NAMES = {LEAD: "lead", DEAL: "deal", CONTACT: "contact", COMPANY: "company"}
# Robot posts carry document_id instead of bindings: ["crm", "CCrmDocumentLead", "LEAD_98"].
_DOCUMENT_TYPES = {"CCrmDocumentLead": LEAD, "CCrmDocumentDeal": DEAL,
                   "CCrmDocumentContact": CONTACT, "CCrmDocumentCompany": COMPANY}


def is_marketing(sender: SenderConfig, module_id: str) -> bool:
    """CRM marketing is marketing whatever the CODE was declared as."""
    return sender.type == "marketing" or module_id == MARKETING_MODULE


@dataclass(frozen=True)
class Entity:
    """A CRM entity a message is bound to, as (type id, id)."""

    type_id: int
    id: int

    @property
    def name(self) -> str:
        return ENTITY_NAMES.get(self.type_id, f"entity type {self.type_id}")


def entities(bindings: Any, document_id: Any = None) -> tuple[Entity, ...]:
    """The CRM entities of a post: its ``bindings``, else what a robot's ``document_id`` names.

    Junk in either is ignored rather than refused: the message is still valid, it
    only cannot prove consent, and that is decided (and explained) by the caller.
    """
    out: list[Entity] = []
    if isinstance(bindings, list):
        for b in bindings:
            if isinstance(b, Mapping):
                t, i = b.get("owner_type_id"), b.get("owner_id")
                if isinstance(t, int) and isinstance(i, int) and i > 0:
                    out.append(Entity(t, i))
    if not out and isinstance(document_id, list) and len(document_id) == 3:
        type_id = _DOCUMENT_TYPES.get(document_id[1])
        _, _, number = str(document_id[2]).rpartition("_")
        if type_id is not None and number.isdigit() and int(number) > 0:
            out.append(Entity(type_id, int(number)))
    return tuple(out)


def is_stop_word(text: str, words: Iterable[str]) -> bool:
    """An MO message that is just a stop word ("stop", "СТОП!"), in any case.

    Only the whole message counts: "не стоп-кран" or "STOP the delivery at 5" are
    replies for a manager, not an opt-out.
    """
    word = text.strip().strip(".!?,;:\"'()").strip().upper()
    return word in set(words)


class QuietHours:
    """The daily window in which marketing waits, in the configured time zone.

    Works on wall-clock seconds (``time.time()``) because the window is a local
    time of day; daylight-saving shifts are handled by zoneinfo.
    """

    def __init__(self, window: tuple[int, int] | None, timezone: str) -> None:
        self.window = window
        self.tz = ZoneInfo(timezone)

    def release_at(self, now: float) -> float | None:
        """When a marketing message posted at ``now`` may go: None = now, else the window's end."""
        if self.window is None:
            return None
        start, end = self.window
        local = datetime.fromtimestamp(now, self.tz)
        minute = local.hour * 60 + local.minute
        inside = start <= minute < end if start < end else (minute >= start or minute < end)
        if not inside:
            return None
        day = local.date() if minute < end else local.date() + timedelta(days=1)
        opens = datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=self.tz)
        return opens.timestamp()


@dataclass
class RuleStats:
    """Counters for ``smppd status`` (and the metrics of issue 6): what the rules did."""

    refused: dict[str, int]
    held: dict[str, int]
    released: int = 0
    duplicates: int = 0
    stop_words: int = 0
    multi_segment: int = 0

    @classmethod
    def new(cls) -> "RuleStats":
        return cls(refused={}, held={})

    def refuse(self, reason: str) -> None:
        kind = reason.split(":", 1)[0]
        self.refused[kind] = self.refused.get(kind, 0) + 1

    def hold(self, kind: str) -> None:
        self.held[kind] = self.held.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"refused": dict(self.refused), "held": dict(self.held), "released": self.released,
                "duplicates": self.duplicates, "stop_words": self.stop_words,
                "multi_segment": self.multi_segment}


class Rules:
    """The rules of one config, with the clock they judge by."""

    def __init__(self, cfg: RulesConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.quiet = QuietHours(cfg.quiet_hours, cfg.timezone)
        self.stats = RuleStats.new()

    def quiet_release_at(self) -> float | None:
        return self.quiet.release_at(self.clock())
