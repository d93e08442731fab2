"""``smppd contacts``: read and clean the phone numbers of a portal's CRM before a campaign.

Why in the daemon and not in the CLI: the daemon owns each portal's tokens (a refresh rotates
them, one owner only) and its REST budget (~2 requests a second shared with the status
pusher). A job here uses the same `RestClient` at ``PRIORITY_BULK``, so it only takes what
the pusher leaves (rest.py), and a 429/503 slows it down instead of failing it.

How a base of tens of thousands is read within that budget (b24-rest-docs):
* ``crm.<entity>.list`` with ``start=-1``, ``order[ID]=ASC`` and an ``ID`` filter skips the
  count a normal page pays for (api-reference/performance/huge-data.md); a page is 50 rows.
* ``batch`` runs 50 commands as one request (bitrix24.md §9), so each request reads 50
  *windows of ids* at once (``>ID`` lo, ``<=ID`` hi); a window that comes back full (50 rows)
  goes round again from its last id. One counted call per entity (``start=0``: ``total``) and
  one ``order[ID]=DESC`` call (highest id) size the windows and the progress bar.
* ``PHONE`` is a multiple field: only read when named in ``select`` and written back by its
  value ``ID`` with ``VALUE`` and ``VALUE_TYPE`` (api-reference/crm/contacts/crm-contact-update.md,
  "Working with Multiple Fields"), so other numbers of the entity are left alone.
* ``UF_CRM_SMS_INVALID`` is created with ``crm.<entity>.userfield.add`` (``FIELD_NAME`` without
  the ``UF_CRM_`` prefix, which the core adds; crm-contact-userfield-add.md) when
  ``crm.<entity>.userfield.list`` does not have it.

The job logic is plain code over three small pieces: `classify` (phone.py's verdict on a
stored value), `ScanReport` (what a scan found) and `plan_update` (what normalize writes for
one row). Nothing here logs a phone number.
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

from .. import phone
from .rest import BATCH_MAX_COMMANDS, PRIORITY_BULK, RestError

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

    async def _batch(self, commands: dict[str, tuple[str, Mapping[str, Any]]]
                     ) -> tuple[dict[str, Any], dict[str, RestError], dict[str, Any]]:
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
        ok, errors, paging = await self._batch(commands)
        _raise_first(errors)
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
        ok, errors, _ = await self._batch(listed)
        _raise_first(errors)
        kinds = {name: (type_id, label) for name, type_id, label in specs}
        missing = {key: (f"crm.{key.split('.')[0]}.userfield.add", {"fields": {
            "FIELD_NAME": key.split(".")[1].removeprefix("UF_CRM_"), "USER_TYPE_ID": kinds[key.split(".")[1]][0],
            "LABEL": kinds[key.split(".")[1]][1], "SHOW_FILTER": "Y", "EDIT_IN_LIST": "N"}})
            for key in listed if not ok.get(key)}
        if not missing:
            return
        added, errors, _ = await self._batch(missing)
        for key, err in errors.items():
            # Someone made it between our list and add: fine if it is there now.
            again, _, _ = await self._batch({key: listed[key]})
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
            ok, errors, _ = await self._batch(commands)
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
        for chunk in _chunks(updates, BATCH_MAX_COMMANDS):
            pending = {f"u{entity_id}": (f"crm.{entity}.update", {
                "id": entity_id, "fields": fields, "params": {"REGISTER_SONET_EVENT": "N"}})
                for entity_id, fields in chunk}
            while pending:
                ok, errors, _ = await self._batch(pending)
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


# ---------------------------------------------------------------------------- HLR


HLR_FIELDS = [("UF_CRM_OPERATOR", "string", "SMS: operator (HLR)"), ("UF_CRM_REGION", "string", "SMS: region (HLR)"),
              ("UF_CRM_SMS_REACHABLE", "boolean", "SMS: reachable (HLR)")]
HLR_CHUNK = 100  # numbers per send.php request (the route's batch size, providers.md §2)


@dataclass(frozen=True)
class HlrResult:
    reachable: bool
    operator: str
    region: str


class HttpPoster(Protocol):
    """What SMSC.ru HLR needs of `providers.smsc.SmscRoute`: its POST and its URLs."""

    async def post(self, url: str, form: Mapping[str, str]) -> Any: ...

    def url(self, script: str) -> str: ...


class HlrFailed(Exception):
    pass


# Request ids of HLR requests, unique in this process and unlikely to meet a previous run's
# (SMSC.ru refuses a request identical to one of the last minute, error 9).
_HLR_IDS = itertools.count(int(time.time()) % 10_000_000 * 10)


class SmscHlr:
    """SMSC.ru HLR over HTTP (providers.md §2.5, https://smscentre.com/api/smpp/send/hlr/):
    ``send.php`` with ``hlr=1`` (``mes`` may be empty) answers the usual ``id``/``cnt``; with
    ``cost=1`` only the price. The result is a status: ``status.php`` with ``all=1`` adds
    ``imsi``, ``mcc``, ``mnc``, ``cn`` (country), ``net`` (operator), ``rcn``/``rnet`` (roaming).
    Status 1 (delivered) is a reachable subscriber; a final failure (20, 25, -3...) is not."""

    PENDING = {-1, 0}

    def __init__(self, route: HttpPoster, auth: Mapping[str, str], *, poll: float = 2.0, timeout: float = 600.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.route, self.auth = route, dict(auth)
        self.poll, self.timeout, self.sleep = poll, timeout, sleep
        self._ids = _HLR_IDS

    async def _send(self, form: dict[str, str]) -> Any:
        answer = await self.route.post(self.route.url("send.php"), {**self.auth, "fmt": "3", "hlr": "1", **form})
        if isinstance(answer, dict) and "error_code" in answer:
            raise HlrFailed(f"SMSC.ru error {answer['error_code']}: {answer.get('error', '')}")
        return answer

    async def price(self, numbers: list[str]) -> float:
        total = 0.0
        for chunk in _chunks(numbers, HLR_CHUNK):
            # an id of its own: SMSC.ru refuses a request identical to one of the last minute (error 9)
            answer = await self._send({"phones": ",".join(chunk), "cost": "1", "id": str(next(self._ids))})
            total += float(answer.get("cost") or 0)
        return round(total, 2)

    async def check(self, numbers: list[str], done: Callable[[int], None] = lambda n: None) -> dict[str, HlrResult]:
        """Send every request first, then poll them all: the lookups run side by side at
        SMSC.ru, so a base takes the send time plus a few polls, not a wait per hundred."""
        results: dict[str, HlrResult] = {}
        pending: dict[str, dict[str, str]] = {}  # request id -> digits -> E.164
        for chunk in _chunks(numbers, HLR_CHUNK):
            rid = str(next(self._ids))
            await self._send({"phones": ",".join(chunk), "id": rid})
            pending[rid] = {phone.digits(n): n for n in chunk}
        deadline = time.monotonic() + self.timeout
        while pending and time.monotonic() < deadline:
            await self.sleep(self.poll)
            for rid, waiting in list(pending.items()):
                answer = await self.route.post(self.route.url("status.php"), {
                    **self.auth, "fmt": "3", "all": "1", "phone": ",".join(waiting) + ",",
                    "id": ",".join([rid] * len(waiting)) + ","})
                for item in answer if isinstance(answer, list) else ():
                    number = waiting.get(str(item.get("phone", "")))
                    status = int(item.get("status", -1))
                    if number is None or status in self.PENDING:
                        continue
                    results[number] = HlrResult(status == 1 and str(item.get("err", "0")) in ("0", "000"),
                                                str(item.get("net") or ""), str(item.get("cn") or ""))
                    del waiting[phone.digits(number)]
                    done(1)
                if not waiting:
                    del pending[rid]
        return results


def hlr_fields(results: Iterable[HlrResult]) -> dict[str, str]:
    """One entity's HLR fields from its numbers' results: reachable if any number is, and
    the operator and region of the first reachable one (else of the first)."""
    ordered = sorted(results, key=lambda r: not r.reachable)
    first = ordered[0]
    return {"UF_CRM_OPERATOR": first.operator, "UF_CRM_REGION": first.region,
            "UF_CRM_SMS_REACHABLE": "1" if first.reachable else "0"}


def _raise_first(errors: Mapping[str, RestError]) -> None:
    for err in errors.values():
        raise err


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


# ---------------------------------------------------------------------------- daemon side


class ProgressTable(Protocol):
    """The store's ``contacts_progress`` table (migration 8)."""

    async def contacts_progress(self, member_id: str) -> dict[str, int]: ...

    async def contacts_progress_save(self, member_id: str, entity: str, after_id: int) -> None: ...

    async def contacts_progress_clear(self, member_id: str) -> None: ...

    async def hlr_cached(self, phones: list[str], since: float) -> dict[str, tuple[bool, str, str]]: ...

    async def hlr_save(self, results: Iterable[tuple[str, bool, str, str]]) -> None: ...


class HlrSource(Protocol):
    async def price(self, numbers: list[str]) -> float: ...

    async def check(self, numbers: list[str], done: Callable[[int], None] = ...) -> dict[str, HlrResult]: ...


#: CODE -> (HLR source, its closer), or a message saying why that CODE cannot do HLR.
HlrFor = Callable[[str], "tuple[HlrSource, Callable[[], Awaitable[None]]] | str"]
HLR_TTL = 30 * 86400.0


class RpcRefused(Exception):
    """A request the caller must fix: (field, message); the daemon maps it to ``bad_request``."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass
class _Running:
    member_id: str
    action: str
    job: ContactsJob
    task: asyncio.Task[ScanReport]
    resumed: dict[str, int]
    quote: dict[str, Any] | None = None  # hlr: what it would check and cost, before the go-ahead
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class ContactsJobs:
    """The ``contacts.*`` RPC methods: start a job in the background, watch it, page its lists.

    Why jobs and not one long call: a scan of 50,000 contacts takes minutes at the portal's
    limit, longer than any socket timeout, and the CLI wants a progress bar meanwhile.
    One job per portal at a time: two would only split the same budget.
    """

    def __init__(self, clients: Callable[[], Mapping[str, BulkClient]], store: ProgressTable,
                 hlr_for: HlrFor | None = None, clock: Callable[[], float] = time.time) -> None:
        self._clients = clients
        self._store = store
        self._hlr_for = hlr_for
        self._clock = clock
        self._jobs: dict[str, _Running] = {}
        self._ids = itertools.count(1)

    def methods(self) -> dict[str, Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]]:
        return {"contacts.start": self.start, "contacts.job": self.status, "contacts.rows": self.rows,
                "contacts.confirm": self.confirm, "contacts.cancel": self.cancel}

    async def start(self, params: Mapping[str, Any]) -> dict[str, Any]:
        action = params.get("action")
        if action not in ("scan", "normalize", "hlr"):
            raise RpcRefused("action", "action: must be scan, normalize or hlr")
        apply = params.get("apply") is True
        clients = self._clients()
        member_id = params.get("portal")
        if member_id is None:
            if len(clients) != 1:
                raise RpcRefused("portal", f"portal: {len(clients)} portals installed, name one (member_id)")
            member_id = next(iter(clients))
        if not isinstance(member_id, str) or member_id not in clients:
            raise RpcRefused("portal", f"portal: no installed portal {member_id!r}")
        entities = params.get("entities", list(ENTITIES))
        if not isinstance(entities, list) or not entities or any(e not in ENTITIES for e in entities):
            raise RpcRefused("entities", f"entities: a list of {', '.join(ENTITIES)}")
        where = params.get("filter", {})
        if not isinstance(where, dict) or not all(isinstance(k, str) and isinstance(v, str) and k
                                                  and k.lstrip("<>=!@%").upper() != "ID" for k, v in where.items()):
            raise RpcRefused("filter", "filter: a map of field to value (not ID: the job pages by ID)")
        if any(r.member_id == member_id and not r.task.done() for r in self._jobs.values()):
            raise RpcRefused("portal", "portal: a contacts job is already running there")
        hlr = None
        if action == "hlr":
            code = params.get("code")
            made = self._hlr_for(code) if self._hlr_for is not None and isinstance(code, str) else "no HLR here"
            if isinstance(made, str):
                raise RpcRefused("code", f"code: {made}")
            hlr = made
            ttl = params.get("cache_ttl", HLR_TTL)
            if not isinstance(ttl, (int, float)) or ttl < 0:
                raise RpcRefused("cache_ttl", "cache_ttl: seconds, 0 or more")
        resume = await self._store.contacts_progress(member_id) if apply else {}

        async def save(entity: str, after_id: int) -> None:
            await self._store.contacts_progress_save(member_id, entity, after_id)

        job = ContactsJob(clients[member_id], normalize=action == "normalize", apply=apply, entities=entities,
                          resume=resume, save=save, where=where)
        job_id = str(next(self._ids))
        if hlr is not None:
            running = _Running(member_id, action, job, None, resume)  # type: ignore[arg-type]
            running.task = asyncio.create_task(self._run_hlr(running, *hlr, float(ttl)), name=f"contacts-{job_id}")
        else:
            running = _Running(member_id, action, job,
                               asyncio.create_task(self._run(member_id, job, apply), name=f"contacts-{job_id}"),
                               resume)
        self._jobs[job_id] = running
        log.info("contacts.job_started", job=job_id, portal=member_id, action=action, apply=apply,
                 resumed=bool(resume))
        return {"job": job_id, "portal": member_id, "resumed": resume}

    async def _run(self, member_id: str, job: ContactsJob, apply: bool) -> ScanReport:
        report = await job.run()
        if apply:
            await self._store.contacts_progress_clear(member_id)  # done: the next run starts over
        log.info("contacts.job_done", portal=member_id, **{k: v for k, v in report.summary().items()
                                                          if isinstance(v, int)})
        return report

    async def _run_hlr(self, running: _Running, hlr: HlrSource, close: Callable[[], Awaitable[None]],
                       ttl: float) -> ScanReport:
        """Scan, price what the cache does not know, wait for the go-ahead, check, write back."""
        job = running.job
        try:
            report = await job.run()
            numbers = sorted(report.owners)
            cached = await self._store.hlr_cached(numbers, self._clock() - ttl)
            todo = [n for n in numbers if n not in cached]
            job.progress.phase = "pricing"
            running.quote = {"numbers": len(numbers), "cached": len(cached), "to_check": len(todo),
                             "price": await hlr.price(todo) if todo else 0.0}
            job.progress.phase = "confirm"
            await running.confirmed.wait()
            job.progress.phase = "hlr"
            job.progress.total, job.progress.done = len(todo), 0
            job.progress.started = time.monotonic()

            def done(n: int) -> None:
                job.progress.done += n

            fresh = await hlr.check(todo, done)
            await self._store.hlr_save((n, r.reachable, r.operator, r.region) for n, r in fresh.items())
        finally:
            await close()
        job.progress.phase = "writing"
        owners: dict[tuple[str, int], list[HlrResult]] = {}
        for number, result in fresh.items():
            for owner in report.owners[number]:
                owners.setdefault(owner, []).append(result)
        if owners:
            await job.ensure_fields(sorted({e for e, _ in owners}), HLR_FIELDS)
            await job.write({owner: hlr_fields(results) for owner, results in owners.items()})
        report.hlr = {"checked": len(fresh), "reachable": sum(r.reachable for r in fresh.values()),
                      "unanswered": len(todo) - len(fresh), "cached": len(cached),
                      "price": running.quote["price"] if running.quote else 0.0}
        job.progress.phase = "done"
        return report

    async def confirm(self, params: Mapping[str, Any]) -> dict[str, Any]:
        running = self._job(params)
        if running.quote is None:
            raise RpcRefused("job", "job: not waiting for a confirmation")
        running.confirmed.set()
        return {"confirmed": True}

    async def cancel(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Stop a job (an hlr not confirmed, a scan no longer wanted); a normalize keeps its progress."""
        running = self._job(params)
        running.task.cancel()
        await asyncio.gather(running.task, return_exceptions=True)
        return {"cancelled": True}

    def _job(self, params: Mapping[str, Any]) -> _Running:
        running = self._jobs.get(str(params.get("job")))
        if running is None:
            raise RpcRefused("job", f"job: no job {params.get('job')!r}")
        return running

    async def status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        running = self._job(params)
        out: dict[str, Any] = {"action": running.action, "portal": running.member_id, "resumed": running.resumed,
                               "progress": running.job.progress.as_dict(), "waits": running.job.waits,
                               "apply": running.job.apply}
        if not running.task.done():
            out["state"] = "confirm" if running.quote is not None and not running.confirmed.is_set() else "running"
            if running.quote is not None:
                out["quote"] = running.quote
        elif running.task.cancelled():
            out["state"] = "failed"
            out["error"] = "cancelled"
        elif running.task.exception() is not None:
            exc = running.task.exception()
            out["state"] = "failed"
            out["error"] = (f"{exc.code}: {exc.description}" if isinstance(exc, RestError)
                            else f"{type(exc).__name__}: {exc}")
            if isinstance(exc, RestError) and exc.code == "insufficient_scope":
                out["error"] += " (give the local app the crm scope besides messageservice, then reinstall it)"
            elif isinstance(exc, RestError) and exc.code == "ACCESS_DENIED":
                out["error"] += " (user fields need an administrator's token: install the app as an admin)"
        else:
            out["state"] = "done"
        out["summary"] = running.job.report.summary()
        return out

    async def rows(self, params: Mapping[str, Any]) -> dict[str, Any]:
        running = self._job(params)
        kind = params.get("kind")
        if kind not in ("invalid", "changes", "shared", "failed", "numbers"):
            raise RpcRefused("kind", "kind: invalid, changes, shared, failed or numbers")
        offset, limit = params.get("offset", 0), params.get("limit", 1000)
        if not isinstance(offset, int) or not isinstance(limit, int) or offset < 0 or not 0 < limit <= 5000:
            raise RpcRefused("limit", "offset/limit: integers, limit 1..5000")
        everything = running.job.report.rows(kind)
        return {"rows": everything[offset:offset + limit], "total": len(everything)}

    async def close(self) -> None:
        for running in self._jobs.values():
            running.task.cancel()
        await asyncio.gather(*(r.task for r in self._jobs.values()), return_exceptions=True)


# ---------------------------------------------------------------------------- preferred channel


CHANNEL_FIELD = "UF_CRM_SMS_CHANNEL"
CHANNEL_FLUSH = 5.0  # seconds marks gather before they go to Bitrix24 together
FIND_MAX = 20  # values per crm.duplicate.findbycomm (its documented limit)


class ChannelTable(Protocol):
    async def channel_marks(self) -> dict[str, str]: ...

    async def channel_mark(self, phone: str, channel: str) -> bool: ...


class PreferredChannel:
    """How the Viber cascade of a Viber-first SMSC.ru route ended, per number (issue 16 §4).

    Viber delivered: ``viber``; Viber failed and the SMS went out: ``sms``. Kept in the store
    (so ``skip_viber_for_sms_contacts`` routes send SMS at once to those numbers) and written
    to ``UF_CRM_SMS_CHANNEL`` of the contacts with that number (``crm.duplicate.findbycomm``,
    20 numbers a command, then ``crm.contact.update``), at bulk priority, a few seconds' worth
    of marks at a time. Only a change is written: the same ending again costs nothing.
    """

    def __init__(self, store: ChannelTable, clients: Callable[[], Mapping[str, BulkClient]],
                 flush: float = CHANNEL_FLUSH) -> None:
        self._store = store
        self._clients = clients
        self._flush = flush
        self._sms: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._fields_made: set[str] = set()
        self.written = 0

    async def load(self) -> None:
        self._sms = {p for p, c in (await self._store.channel_marks()).items() if c == "sms"}

    def prefers_sms(self, phone_e164: str) -> bool:
        return phone_e164 in self._sms

    def note(self, phone_e164: str, channel: str) -> None:
        """Called by the route, synchronously: the work happens in `run`."""
        if channel == "sms":
            self._sms.add(phone_e164)
        else:
            self._sms.discard(phone_e164)
        self._queue.put_nowait((phone_e164, channel))

    async def run(self) -> None:
        while True:
            first = await self._queue.get()
            await asyncio.sleep(self._flush)
            marks = dict([first])
            while not self._queue.empty():
                number, channel = self._queue.get_nowait()
                marks[number] = channel
            changed = {n: c for n, c in marks.items() if await self._store.channel_mark(n, c)}
            if changed:
                try:
                    await self.write(changed)
                except RestError as e:  # the mark is stored; the CRM field waits for the next change
                    log.warning("contacts.channel_write_failed", error=e.code, numbers=len(changed))
                except Exception as e:  # never let one bad answer end the marks for the daemon's life
                    log.error("contacts.channel_write_failed", error=type(e).__name__, numbers=len(changed))

    async def write(self, marks: Mapping[str, str]) -> None:
        for member_id, client in self._clients().items():
            job = ContactsJob(client)
            if member_id not in self._fields_made:
                await job.ensure_fields(["contact"], [(CHANNEL_FIELD, "string", "SMS: preferred channel")])
                self._fields_made.add(member_id)
            updates: dict[tuple[str, int], dict[str, Any]] = {}
            for channel in ("viber", "sms"):
                numbers = sorted(n for n, c in marks.items() if c == channel)
                chunks = {f"f{i}": ("crm.duplicate.findbycomm", {"type": "PHONE", "values": chunk})
                          for i, chunk in enumerate(_chunks(numbers, FIND_MAX))}
                for part in _chunks(list(chunks.items()), BATCH_MAX_COMMANDS):
                    found, _, _ = await job._batch(dict(part))
                    for answer in found.values():
                        ids = answer.get("CONTACT", []) if isinstance(answer, dict) else []
                        for contact_id in ids:
                            updates[("contact", int(contact_id))] = {CHANNEL_FIELD: channel}
            await job.write(updates)
            self.written += job.report.updated


__all__ = ["ContactsJobs", "PreferredChannel", "RpcRefused", "BY_CODES", "ContactsJob", "ENTITIES", "INVALID_FIELD", "Progress", "ScanReport", "Verdict",
           "classify", "plan_update"]
