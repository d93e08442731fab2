"""Reading and cleaning a portal's CRM phone numbers: verdicts, the scan report, the job.

`classify` (phone.py's verdict on a stored value), `ScanReport` (what a scan found),
`plan_update` (what normalize writes for one row) and `ContactsJob`, which pages a portal's
CRM within its REST budget (the package docstring says how). Nothing here logs a phone number.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol

import phonenumbers
import structlog

from ... import phone
from ..rest import BATCH_MAX_COMMANDS, PRIORITY_BULK, RestError


log = structlog.get_logger(__name__)

ENTITIES = ("contact", "lead", "company")
PAGE = 50  # rows per list page, fixed by Bitrix24 (crm-contact-list.md, ``start``)
INVALID_FIELD = "UF_CRM_SMS_INVALID"
#: Errors that only mean "later": the job waits and asks again, however long that takes.
TRANSIENT = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", "network", "token_persist_failed"})
PAUSE_MIN, PAUSE_MAX = 1.0, 60.0
#: The usual assignment of the Belarusian mobile codes (providers.md §5, [unconfirmed]);
#: numbers move between operators since 2012, so this is the prefix, not the operator.
BY_CODES = {"25": "life:)", "29": "A1/MTS", "33": "MTS", "44": "A1"}


class BulkClient(Protocol):
    """What a job needs of `rest.RestClient`."""

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *,
                   priority: int = ...) -> Any: ...

    async def batch_answer(
        self, commands: Mapping[str, tuple[str, Mapping[str, Any]]], *, halt: bool = False, priority: int = ...
    ) -> tuple[dict[str, Any], dict[str, RestError], dict[str, Any]]: ...


# ---------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    e164: str | None
    reason: str = ""  # why invalid
    country: str = ""  # ISO region of a valid number
    by_code: str = ""  # 25/29/33/44 for a Belarusian mobile


def classify(raw: str, default_region: str = "BY") -> Verdict:
    try:
        e164 = phone.normalize(raw, default_region=default_region)
    except phone.InvalidNumber as e:
        return Verdict(None, e.reason)
    region = phonenumbers.region_code_for_number(phonenumbers.parse(e164)) or "ZZ"
    return Verdict(e164, "", region, e164[4:6] if e164.startswith("+375") else "")


# ---------------------------------------------------------------------------- scan report


@dataclass
class ScanReport:
    """Everything ``scan`` prints; ``normalize`` fills the same one plus its own counts."""

    entities: Counter[str] = field(default_factory=Counter)  # rows read per entity
    numbers: int = 0
    valid: int = 0
    by_country: Counter[str] = field(default_factory=Counter)
    by_prefix: Counter[str] = field(default_factory=Counter)
    differs: int = 0  # valid, but stored in another form than E.164
    invalid: list[tuple[str, int, str, str]] = field(default_factory=list)  # entity, id, value, reason
    owners: dict[str, set[tuple[str, int]]] = field(default_factory=dict)  # e164 -> entities
    changes: list[tuple[str, int, str, str]] = field(default_factory=list)  # entity, id, old, new
    hlr: dict[str, Any] = field(default_factory=dict)  # hlr: checked, reachable, unanswered, cached, price
    updated: int = 0  # entities written (normalize --apply)
    failed: list[tuple[str, int, str]] = field(default_factory=list)  # entity, id, error

    def add(self, entity: str, row: Mapping[str, Any]) -> None:
        entity_id = int(row["ID"])
        self.entities[entity] += 1
        for value in row.get("PHONE") or ():
            raw = str(value.get("VALUE", ""))
            self.numbers += 1
            verdict = classify(raw)
            if verdict.e164 is None:
                self.invalid.append((entity, entity_id, raw, verdict.reason))
                continue
            self.valid += 1
            self.by_country[verdict.country] += 1
            if verdict.by_code:
                self.by_prefix[verdict.by_code] += 1
            if raw != verdict.e164:
                self.differs += 1
            self.owners.setdefault(verdict.e164, set()).add((entity, entity_id))

    def shared(self) -> list[tuple[str, list[tuple[str, int]]]]:
        return sorted((n, sorted(o)) for n, o in self.owners.items() if len(o) > 1)

    def summary(self) -> dict[str, Any]:
        return {
            "entities": dict(self.entities), "numbers": self.numbers, "valid": self.valid,
            "invalid": len(self.invalid), "differs_from_e164": self.differs,
            "by_country": dict(self.by_country.most_common()),
            "by_prefix": {f"+375 {code} ({BY_CODES.get(code, '?')})": n for code, n in sorted(self.by_prefix.items())},
            "shared_numbers": sum(1 for o in self.owners.values() if len(o) > 1),
            "changes": len(self.changes), "updated": self.updated, "failed": len(self.failed),
            **({"hlr": self.hlr} if self.hlr else {}),
        }

    def rows(self, kind: str) -> list[list[Any]]:
        if kind == "invalid":
            return [list(r) for r in self.invalid]
        if kind == "changes":
            return [list(r) for r in self.changes]
        if kind == "failed":
            return [list(r) for r in self.failed]
        if kind == "numbers":  # every valid number once, E.164 (what ``contacts cost`` prices)
            return [[n] for n in sorted(self.owners)]
        if kind == "shared":
            return [[n, " ".join(f"{e}:{i}" for e, i in o)] for n, o in self.shared()]
        raise ValueError(kind)


def plan_update(row: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The ``fields`` of ``crm.<entity>.update`` that make one row clean, and the (old, new)
    number changes; empty when the row is clean already (so a second run writes nothing).

    Each changed value is named by its multi-field ``ID`` and keeps its ``VALUE_TYPE``;
    ``UF_CRM_SMS_INVALID`` says whether any number of the row cannot receive an SMS, and is
    only written when that differs from what it holds.
    """
    phones: list[dict[str, str]] = []
    changes: list[tuple[str, str]] = []
    invalid = False
    for value in row.get("PHONE") or ():
        raw = str(value.get("VALUE", ""))
        verdict = classify(raw)
        if verdict.e164 is None:
            invalid = True
        elif verdict.e164 != raw:
            phones.append({"ID": str(value["ID"]), "VALUE": verdict.e164,
                           "VALUE_TYPE": str(value.get("VALUE_TYPE") or "WORK")})
            changes.append((raw, verdict.e164))
    fields: dict[str, Any] = {}
    if phones:
        fields["PHONE"] = phones
    held = str(row.get(INVALID_FIELD) or "0")
    if invalid and held != "1":
        fields[INVALID_FIELD] = "1"
    elif not invalid and held == "1":
        fields[INVALID_FIELD] = "0"
    return fields, changes


# ---------------------------------------------------------------------------- progress


@dataclass
class Progress:
    total: int = 0  # entities to read (from the counted calls)
    done: int = 0
    requests: int = 0
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"

    def as_dict(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = max(0, self.total - self.done)
        return {"phase": self.phase, "total": self.total, "done": self.done, "requests": self.requests,
                "elapsed": round(elapsed, 1), "per_minute": round(rate * 60),
                "eta": round(left / rate, 1) if rate > 0 and self.total else None}


# ---------------------------------------------------------------------------- the job


ProgressStore = Callable[[str, int], Awaitable[None]]  # (entity, all ids up to here are done)


class ContactsJob:
    """One ``scan`` or ``normalize`` over one portal.

    ``resume``: per entity, the id up to which an interrupted ``normalize --apply`` was done
    (from the store); ``save``: called after each round with the new such id.
    """

    def __init__(self, client: BulkClient, *, apply: bool = False, normalize: bool = False,
                 entities: Iterable[str] = ENTITIES, resume: Mapping[str, int] | None = None,
                 save: ProgressStore | None = None, where: Mapping[str, str] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.client = client
        self.normalize = normalize
        self.apply = apply and normalize
        self.entities = tuple(entities)
        self.resume = dict(resume or {})
        self.where = dict(where or {})  # extra list filter (``--filter``), e.g. {"TYPE_ID": "CLIENT"}
        self.save = save
        self.sleep = sleep
        self.report = ScanReport()
        self.progress = Progress()
        self.waits = 0  # transient refusals waited out

    async def run(self) -> ScanReport:
        self.progress.phase = "counting"
        tops, totals = await self._size()
        self.progress.total = sum(totals.values())
        if self.apply and any(totals.values()):
            self.progress.phase = "user fields"
            await self._ensure_field([e for e in self.entities if totals.get(e)])
        self.progress.phase = "normalizing" if self.normalize else "scanning"
        for entity in self.entities:
            if totals.get(entity):
                await self._walk(entity, tops[entity], totals[entity])
        self.progress.phase = "done"
        return self.report

    # --- REST, with the waiting -------------------------------------------------

    async def batch(self, commands: dict[str, tuple[str, Mapping[str, Any]]]
                    ) -> tuple[dict[str, Any], dict[str, RestError], dict[str, Any]]:
        """A bulk ``batch`` that waits out rate limits and outages (``TRANSIENT``) however long they last."""
        pause = PAUSE_MIN
        while True:
            try:
                self.progress.requests += 1
                return await self.client.batch_answer(commands, priority=PRIORITY_BULK)
            except RestError as e:
                if e.code not in TRANSIENT:
                    raise
                self.waits += 1
                log.info("contacts.waiting", error=e.code, pause=pause)
                await self.sleep(pause)
                pause = min(PAUSE_MAX, pause * 2)

    async def _size(self) -> tuple[dict[str, int], dict[str, int]]:
        commands: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for e in self.entities:
            commands[f"top_{e}"] = (f"crm.{e}.list", {"order": {"ID": "DESC"}, "select": ["ID"], "start": -1})
            commands[f"count_{e}"] = (f"crm.{e}.list", {"select": ["ID"], "start": 0,
                                                        "filter": {**self.where, ">ID": self.resume.get(e, 0)}})
        ok, errors, paging = await self.batch(commands)
        raise_first(errors)
        tops = {e: int(ok[f"top_{e}"][0]["ID"]) if ok.get(f"top_{e}") else 0 for e in self.entities}
        totals = {e: int((paging.get(f"count_{e}") or {}).get("total") or len(ok.get(f"count_{e}") or ()))
                  for e in self.entities}
        return tops, totals

    async def _ensure_field(self, entities: list[str]) -> None:
        await self.ensure_fields(entities, [(INVALID_FIELD, "boolean", "SMS: invalid phone number")])

    async def ensure_fields(self, entities: list[str], specs: list[tuple[str, str, str]]) -> None:
        """Create the user fields (name, USER_TYPE_ID, label) that ``userfield.list`` lacks."""
        listed = {f"{e}.{name}": (f"crm.{e}.userfield.list", {"filter": {"FIELD_NAME": name}})
                  for e in entities for name, _, _ in specs}
        ok, errors, _ = await self.batch(listed)
        raise_first(errors)
        kinds = {name: (type_id, label) for name, type_id, label in specs}
        missing = {key: (f"crm.{key.split('.')[0]}.userfield.add", {"fields": {
            "FIELD_NAME": key.split(".")[1].removeprefix("UF_CRM_"), "USER_TYPE_ID": kinds[key.split(".")[1]][0],
            "LABEL": kinds[key.split(".")[1]][1], "SHOW_FILTER": "Y", "EDIT_IN_LIST": "N"}})
            for key in listed if not ok.get(key)}
        if not missing:
            return
        added, errors, _ = await self.batch(missing)
        for key, err in errors.items():
            # Someone made it between our list and add: fine if it is there now.
            again, _, _ = await self.batch({key: listed[key]})
            if not again.get(key):
                raise err
        log.info("contacts.user_fields_created", fields=sorted(added))

    async def write(self, updates: Mapping[tuple[str, int], dict[str, Any]]) -> None:
        """``crm.<entity>.update`` of many rows, 50 a request, transient refusals retried."""
        by_entity: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for (entity, entity_id), fields in sorted(updates.items()):
            by_entity.setdefault(entity, []).append((entity_id, fields))
        for entity, items in by_entity.items():
            await self._update(entity, items)

    # --- windows of ids -------------------------------------------------------------

    async def _walk(self, entity: str, top: int, total: int) -> None:
        """Read every row of ``entity`` with id in (resume, top], 50 windows a request."""
        cursor = self.resume.get(entity, 0)
        density = total / max(1, top - cursor)
        width = max(PAGE, int(PAGE * 0.9 / max(density, 1e-6)))
        leftovers: list[tuple[int, int]] = []
        select = ["ID", "PHONE"] + ([INVALID_FIELD] if self.normalize else [])
        while leftovers or cursor < top:
            windows: list[tuple[int, int]] = []
            while leftovers and len(windows) < BATCH_MAX_COMMANDS:
                windows.append(leftovers.pop(0))
            while cursor < top and len(windows) < BATCH_MAX_COMMANDS:
                windows.append((cursor, min(top, cursor + width)))
                cursor = windows[-1][1]
            commands = {f"w{i}": (f"crm.{entity}.list", {"order": {"ID": "ASC"},
                                                         "filter": {**self.where, ">ID": lo, "<=ID": hi},
                                                         "select": select, "start": -1})
                        for i, (lo, hi) in enumerate(windows)}
            ok, errors, _ = await self.batch(commands)
            rows: list[Mapping[str, Any]] = []
            for i, (lo, hi) in enumerate(windows):
                key = f"w{i}"
                if key in errors:
                    if errors[key].code not in TRANSIENT:
                        raise errors[key]
                    leftovers.append((lo, hi))
                    continue
                page = ok.get(key) or []
                rows.extend(page)
                if len(page) >= PAGE:
                    leftovers.append((int(page[-1]["ID"]), hi))
            for row in rows:
                self.report.add(entity, row)
            self.progress.done += len(rows)
            if self.normalize:
                await self._normalize(entity, rows)
            if self.apply and self.save is not None:
                await self.save(entity, min([lo for lo, _ in leftovers] + [cursor]))

    async def _normalize(self, entity: str, rows: list[Mapping[str, Any]]) -> None:
        updates: list[tuple[int, dict[str, Any]]] = []
        for row in rows:
            fields, changes = plan_update(row)
            entity_id = int(row["ID"])
            self.report.changes.extend((entity, entity_id, old, new) for old, new in changes)
            if fields:
                updates.append((entity_id, fields))
        if self.apply:
            await self._update(entity, updates)

    async def _update(self, entity: str, updates: list[tuple[int, dict[str, Any]]]) -> None:
        for chunk in chunks(updates, BATCH_MAX_COMMANDS):
            pending = {f"u{entity_id}": (f"crm.{entity}.update", {
                "id": entity_id, "fields": fields, "params": {"REGISTER_SONET_EVENT": "N"}})
                for entity_id, fields in chunk}
            while pending:
                ok, errors, _ = await self.batch(pending)
                retry = {}
                for key, command in pending.items():
                    err = errors.get(key)
                    if err is None and key in ok:
                        self.report.updated += 1
                    elif err is not None and err.code in TRANSIENT:
                        retry[key] = command
                    else:
                        self.report.failed.append((entity, int(key[1:]), err.description or err.code if err else
                                                   "not run"))
                pending = retry


def raise_first(errors: Mapping[str, RestError]) -> None:
    for err in errors.values():
        raise err


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
