"""``[sender.CODE]`` and ``[rules]``: the provider CODEs Bitrix24 posts to, the sender IDs
they go out under, and the business rules the gateway enforces (issue 8)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .readers import ConfigError, choice, field_names, get, number, only, string

CODE_RE = re.compile(r"^[a-z0-9.\-_]+$")  # Bitrix24's rule for provider CODEs
ALNUM_SENDER_RE = re.compile(r"^[A-Za-z0-9 .\-_&!'+]{1,11}$")
NUMERIC_SENDER_RE = re.compile(r"^\+?[0-9]{1,15}$")
MESSAGE_TYPES = ("transactional", "marketing")
DUPLICATE_OUTCOMES = ("follow-first", "failed")


@dataclass(frozen=True)
class SenderConfig:
    """A Bitrix24 provider CODE: which route it goes out on and under which name."""

    code: str
    route: str
    sender_id: str
    name: str
    portal: str | None = None  # member_id, when the CODE belongs to one portal only
    type: str = "transactional"  # or "marketing": needs consent, obeys the stop list and quiet hours
    marketing_sender_id: str | None = None  # used for marketing posts on this CODE; default sender_id

    def sender_for(self, marketing: bool) -> str:
        """The sender ID a message goes out under: operators bill and filter by it."""
        return (self.marketing_sender_id or self.sender_id) if marketing else self.sender_id


@dataclass(frozen=True)
class RulesConfig:
    """Business rules the gateway enforces so no Bitrix24 robot can forget them (issue 8)."""

    consent_field: str = "UF_CRM_SMS_CONSENT"
    consent_cache_ttl: float = 600.0
    duplicate_window: float = 600.0  # seconds; 0 turns the check off
    duplicate_outcome: str = "follow-first"  # or "failed"
    quiet_hours: tuple[int, int] | None = (21 * 60, 9 * 60)  # minutes after midnight, [start, end)
    timezone: str = "Europe/Minsk"
    stop_words: frozenset[str] = frozenset({"STOP", "СТОП"})
    # issue 14 item 11: a message held longer than this (consent, quiet hours) fails with the hold's reason
    hold_max_age: float = 86400.0


def sender(code: str, t: Any) -> SenderConfig:
    key = f"sender.{code}"
    if not CODE_RE.match(code):
        raise ConfigError(key, "a CODE may only have a-z, 0-9, '.', '-' and '_' (Bitrix24's rule)")
    if not isinstance(t, dict):
        raise ConfigError(key, "must be a table")
    only(t, key, field_names(SenderConfig, but=frozenset({"code"})))
    marketing_sender_id = string(t, key, "marketing_sender_id", default=SenderConfig.marketing_sender_id)
    if marketing_sender_id is not None:
        _sender_id(f"{key}.marketing_sender_id", marketing_sender_id)
    return SenderConfig(
        code=code,
        route=string(t, key, "route"),
        sender_id=_sender_id(f"{key}.sender_id", string(t, key, "sender_id")),
        name=string(t, key, "name", default=code),
        portal=string(t, key, "portal", default=SenderConfig.portal),
        type=choice(t, key, "type", MESSAGE_TYPES, default=SenderConfig.type),
        marketing_sender_id=marketing_sender_id,
    )


def _sender_id(key: str, value: str) -> str:
    """A sender ID the operators will take, or an error saying exactly why not.

    Operators register alphanumeric names in Latin letters only (the source_addr of
    an SMS is GSM-7 at best), so a Cyrillic name would be rewritten or dropped by the
    SMSC long after Bitrix24 was told the message was sent.
    """
    if any(_is_cyrillic(c) for c in value):
        raise ConfigError(key, f"Cyrillic letters are not allowed in a sender ID (operators register "
                               f"Latin names only), got {value!r}")
    if NUMERIC_SENDER_RE.match(value) or ALNUM_SENDER_RE.match(value):
        return value
    if value.lstrip("+").isdigit():
        raise ConfigError(key, f"a numeric sender ID is at most 15 digits, got {len(value.lstrip('+'))}")
    if len(value) > 11 and ALNUM_SENDER_RE.match(value[:11]):
        raise ConfigError(key, f"an alphanumeric sender ID is at most 11 characters, got {len(value)}")
    raise ConfigError(key, "must be up to 11 Latin letters/digits, or a number of up to 15 digits")


def _is_cyrillic(char: str) -> bool:
    return "\u0400" <= char <= "\u052f"


def rules(t: Any) -> RulesConfig:
    key = "rules"
    if not isinstance(t, dict):
        raise ConfigError(key, "must be a table")
    only(t, key, field_names(RulesConfig))
    d = RulesConfig
    timezone = string(t, key, "timezone", default=d.timezone)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}.timezone", f"unknown time zone {timezone!r} (e.g. Europe/Minsk)") from None
    words = get(t, key, "stop_words", sorted(d.stop_words))
    if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
        raise ConfigError(f"{key}.stop_words", "must be a list of non-empty strings")
    field_name = string(t, key, "consent_field", default=d.consent_field)
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", field_name):
        raise ConfigError(f"{key}.consent_field",
                          f"must be a CRM field name like UF_CRM_SMS_CONSENT, got {field_name!r}")
    return RulesConfig(
        consent_field=field_name,
        consent_cache_ttl=number(t, key, "consent_cache_ttl", default=d.consent_cache_ttl, low=0.0),
        duplicate_window=number(t, key, "duplicate_window", default=d.duplicate_window, low=0.0),
        duplicate_outcome=choice(t, key, "duplicate_outcome", DUPLICATE_OUTCOMES, default=d.duplicate_outcome),
        quiet_hours=_quiet_hours(t, key, d.quiet_hours),
        timezone=timezone,
        stop_words=frozenset(w.strip().upper() for w in words),
        hold_max_age=number(t, key, "hold_max_age", default=d.hold_max_age, low=60.0),
    )


def _quiet_hours(t: Mapping[str, Any], key: str, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """``"21:00-09:00"`` (may wrap midnight) or ``""`` for none."""
    v = t.get("quiet_hours")
    if v is None:
        return default
    if v == "":
        return None
    m = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])-([01]?[0-9]|2[0-3]):([0-5][0-9])", v) \
        if isinstance(v, str) else None
    if m is None:
        raise ConfigError(f"{key}.quiet_hours", f'must be "HH:MM-HH:MM" or "" for none, got {v!r}')
    start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if start == end:
        raise ConfigError(f"{key}.quiet_hours", "start and end are equal; use \"\" to turn quiet hours off")
    return start, end
