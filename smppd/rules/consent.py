"""Marketing consent, read from the CRM entity a message is bound to.

Integrators keep consent in a contact field (default ``UF_CRM_SMS_CONSENT``, a
yes/no user field). We read it through the portal's REST API with ``batch``
calls (one request answers up to 50 entities, and the portal allows ~2 requests
per second) and cache the answers, because a broadcast sends many messages to
the same few thousand contacts and Bitrix24 is the slow side.

Which entity is asked: the contact when the post binds one; else a lead or a
company (their own field of the same name); else a deal's contact
(``CONTACT_ID``). A post that binds nothing (CRM marketing and robots may not)
is matched by its number with ``crm.duplicate.findbycomm``: every contact with
that number must have said yes (else every lead, else every company). A
missing entity, a missing field, an unreadable one or any value other than yes
is "no consent": marketing without proof is not sent.

Lookups happen after the message is stored (``holds.py``), never while
Bitrix24 waits for the HANDLER answer: a REST outage delays marketing, it does
not fail it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import structlog

from ..bitrix24.rest import BATCH_MAX_COMMANDS, RestClient, RestError
from . import COMPANY, CONTACT, DEAL, LEAD, REASON_NO_BINDING, Entity

log = structlog.get_logger(__name__)

GET_METHODS = {CONTACT: "crm.contact.get", LEAD: "crm.lead.get", COMPANY: "crm.company.get",
               DEAL: "crm.deal.get"}
# Preference when a post binds several entities: the person first.
_PREFERENCE = (CONTACT, LEAD, COMPANY, DEAL)
# How a Bitrix24 yes/no user field reads back over REST (and what people type in string fields).
_YES = frozenset({"1", "y", "yes", "true", "да"})
# Per-item errors that are answers about the entity, not outages: cached like a "no".
_NOT_FOUND_ERRORS = frozenset({"", "ERROR_NOT_FOUND", "NOT_FOUND"})
# Errors that say the app may not read the CRM at all: no retry changes them, only the
# portal's admin can (issue 14 item 11). What to tell the admin, once per portal and code.
PERMISSION_HINTS = {
    "insufficient_scope": "grant the app the crm scope (the app's settings in Bitrix24), then update the app",
    "ERROR_METHOD_NOT_FOUND": "the portal answers no CRM method: enable the CRM, and give the app the crm scope",
    "ACCESS_DENIED": "the user the app acts as may not read CRM contacts, leads and companies: grant read access",
}
_PERMANENT_ITEM_ERRORS = _NOT_FOUND_ERRORS | frozenset(PERMISSION_HINTS)


def permanent(error: RestError) -> bool:
    """An error that is an answer (the app may not read the CRM), not an outage to wait out."""
    return error.code in PERMISSION_HINTS


def permission_reason(error: RestError, what: str = "the CRM") -> str:
    """The message's reason when consent cannot be read for good: the code and what to grant."""
    return f"no consent: cannot read {what} ({error.code}: {PERMISSION_HINTS[error.code]})"


def granted(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _YES


@dataclass(frozen=True)
class Verdict:
    consent: bool
    reason: str | None = None  # why not, for the store, the log and Bitrix24 (no personal data)


class ConsentReader:
    """Cached consent lookups for the portals of one daemon."""

    def __init__(self, client_for: Callable[[str], RestClient | None], field: str, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client_for = client_for
        self.field = field
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[tuple[str, int, int], tuple[float, Any]] = {}  # -> (expires, Verdict | contact id)
        # findbycomm answers, or the refusal when the app may not ask
        self._numbers: dict[tuple[str, str], tuple[float, tuple[Entity, ...] | Verdict]] = {}
        self.lookups = 0  # entities read over REST, for tests and status
        self._warned: set[tuple[str, str]] = set()  # (member_id, code) told to the admin once

    def warn_permission(self, member_id: str, error: RestError) -> None:
        """One warning per portal and error code: a missing permission fails every marketing
        message of the portal, and one line telling the admin what to grant is enough."""
        if (member_id, error.code) in self._warned:
            return
        self._warned.add((member_id, error.code))
        log.warning("consent_permission_missing", member_id=member_id, error=error.code,
                    hint=PERMISSION_HINTS[error.code])

    async def check(self, member_id: str, messages: Iterable[tuple[tuple[Entity, ...], str | None]]) -> list[Verdict]:
        """One verdict per (bound entities, E.164 number); raises RestError when Bitrix24 is out of reach."""
        msgs = list(messages)
        unbound = sorted({number for entities, number in msgs if not entities and number})
        await self._find_by_number(member_id, unbound)
        by_number = {i: self._cached_number(member_id, number)
                     for i, (entities, number) in enumerate(msgs) if not entities and number}
        await self._fetch(member_id, {e for found in by_number.values() if not isinstance(found, Verdict)
                                      for e in found})
        picked = [_pick(entities) for entities, _ in msgs]
        deals = {e for e in picked if e is not None and e.type_id == DEAL}
        await self._fetch(member_id, deals)
        targets: list[Entity | Verdict | None] = []
        for e in picked:
            if e is not None and e.type_id == DEAL:
                contact = self._cached(member_id, e)
                targets.append(contact if not isinstance(contact, int)
                               else (Entity(CONTACT, contact) if contact > 0
                                     else Verdict(False, f"no consent: deal {e.id} has no contact")))
            else:
                targets.append(e)
        await self._fetch(member_id, {t for t in targets if isinstance(t, Entity)})
        out = []
        for i, t in enumerate(targets):
            if i in by_number:
                found = by_number[i]
                out.append(found if isinstance(found, Verdict) else self._all_agree(member_id, found))
            elif t is None:
                out.append(Verdict(False, REASON_NO_BINDING))
            elif isinstance(t, Verdict):
                out.append(t)
            else:
                out.append(self._cached(member_id, t))
        return out

    def forget(self, member_id: str | None = None) -> None:
        self._cache = {k: v for k, v in self._cache.items() if member_id is not None and k[0] != member_id}
        self._numbers = {k: v for k, v in self._numbers.items() if member_id is not None and k[0] != member_id}

    def _all_agree(self, member_id: str, found: list[Entity]) -> Verdict:
        if not found:
            return Verdict(False, "no consent: no CRM contact, lead or company has this number")
        for e in found:
            v = self._cached(member_id, e)
            if not isinstance(v, Verdict) or not v.consent:
                return v if isinstance(v, Verdict) else Verdict(False, f"no consent: {e.name} {e.id} unreadable")
        return Verdict(True)

    # --- cache and REST ---------------------------------------------------------

    def _cached_number(self, member_id: str, number: str) -> list[Entity] | Verdict:
        hit = self._numbers.get((member_id, number))
        if hit is None or hit[0] < self.clock():
            return []
        return hit[1] if isinstance(hit[1], Verdict) else list(hit[1])

    async def _find_by_number(self, member_id: str, numbers: list[str]) -> None:
        """Which CRM entities hold each number: one findbycomm per number (its answer does not say which
        of several values matched), 50 to a batch."""
        missing = [n for n in numbers if (member_id, n) not in self._numbers
                   or self._numbers[(member_id, n)][0] < self.clock()]
        if not missing:
            return
        client = self._client_for(member_id)
        if client is None:
            raise RestError("no_client", "no REST client for this portal")
        for start in range(0, len(missing), BATCH_MAX_COMMANDS):
            chunk = missing[start:start + BATCH_MAX_COMMANDS]
            commands = {f"n{i}": ("crm.duplicate.findbycomm", {"type": "PHONE", "values": [n]})
                        for i, n in enumerate(chunk)}
            results, errors = await client.batch(commands)
            expires = self.clock() + self.ttl
            for i, n in enumerate(chunk):
                key = f"n{i}"
                if key in errors:
                    if not permanent(errors[key]):
                        raise errors[key]  # an outage: the hold waits and asks again
                    self.warn_permission(member_id, errors[key])
                    found: tuple[Entity, ...] | Verdict = Verdict(
                        False, permission_reason(errors[key], "the CRM contacts with this number"))
                else:
                    found = _matches(results.get(key))
                self._numbers[(member_id, n)] = (expires, found)
                self.lookups += 1

    def _cached(self, member_id: str, e: Entity) -> Any:
        hit = self._cache.get((member_id, e.type_id, e.id))
        if hit is None or hit[0] < self.clock():
            return None
        return hit[1]

    async def _fetch(self, member_id: str, wanted: set[Entity]) -> None:
        missing = sorted((e for e in wanted if self._cached(member_id, e) is None), key=lambda e: (e.type_id, e.id))
        if not missing:
            return
        client = self._client_for(member_id)
        if client is None:
            raise RestError("no_client", "no REST client for this portal")
        for start in range(0, len(missing), BATCH_MAX_COMMANDS):
            chunk = missing[start:start + BATCH_MAX_COMMANDS]
            commands = {f"e{e.type_id}_{e.id}": (GET_METHODS[e.type_id], {"id": e.id}) for e in chunk}
            results, errors = await client.batch(commands)
            expires = self.clock() + self.ttl
            for e in chunk:
                key = f"e{e.type_id}_{e.id}"
                if key in results:
                    value = self._from_result(e, results[key])
                elif key in errors:
                    err = errors[key]
                    if err.code not in _PERMANENT_ITEM_ERRORS:
                        raise err  # an outage of one item: retry the lot later
                    if permanent(err):
                        self.warn_permission(member_id, err)
                    value = Verdict(False, _item_reason(e, err))
                else:
                    raise RestError("bad_response", f"batch answered nothing for {key}")
                self._cache[(member_id, e.type_id, e.id)] = (expires, value)
                self.lookups += 1

    def _from_result(self, e: Entity, result: Any) -> Any:
        if not isinstance(result, dict):
            return Verdict(False, f"no consent: {e.name} {e.id} unreadable")
        if e.type_id == DEAL:
            contact = str(result.get("CONTACT_ID") or "0")
            return int(contact) if contact.isdigit() else 0
        if self.field not in result:
            return Verdict(False, f"no consent: {e.name} {e.id} has no field {self.field}")
        if granted(result[self.field]):
            return Verdict(True)
        return Verdict(False, f"no consent: {self.field} of {e.name} {e.id} is not set")


def _matches(result: Any) -> tuple[Entity, ...]:
    """``{"CONTACT": [877], "LEAD": [12]}`` (or ``[]`` for none): the people first, as the binding order does."""
    if not isinstance(result, dict):
        return ()
    for name, type_id in (("CONTACT", CONTACT), ("LEAD", LEAD), ("COMPANY", COMPANY)):
        ids = result.get(name)
        if isinstance(ids, list) and ids:
            return tuple(Entity(type_id, int(i)) for i in ids if str(i).isdigit() and int(i) > 0)
    return ()


def _pick(entities: tuple[Entity, ...]) -> Entity | None:
    for type_id in _PREFERENCE:
        for e in entities:
            if e.type_id == type_id:
                return e
    return None


def _item_reason(e: Entity, err: RestError) -> str:
    if err.code in _NOT_FOUND_ERRORS:
        return f"no consent: {e.name} {e.id} not found"
    return permission_reason(err, f"{e.name} {e.id}")
