"""SMSC.ru: ``send.php`` with batching, ``status.php``, HLR, callbacks, Viber cascade.

Wire format: reference/providers.md §2.  The sans-I/O part (forms, answers,
callbacks) is at the top; ``SmscRoute`` is the shell over ``HttpRoute``.

Ids.  SMSC lets us choose the request ``id`` (1..2147483647), and one request
carries up to ``batch_size`` numbers, so a message is known to SMSC as
``(id, phone)`` and our SMSC id is ``"<id>:<digits>"``.  The id of a batch
is the smallest row id in it; Viber attempts add ``VIBER_ID_BASE`` so the
Viber try and the SMS fallback of one message never share an id.  Choosing
the id ourselves is what makes an ambiguous send checkable: ``status.php``
with that id and number says whether SMSC has it, before anything is resent.

Viber cascade.  A route with ``viber = true`` sends ``viber=1`` first.  If
Viber reports a failure, or has not delivered within ``viber_fallback``
seconds (checked by the poller, so it survives a restart), the message is
marked ``viber_fallback`` in the store and goes out again as an SMS.  The
store's ``channel`` says how the message went: ``viber`` (delivered by
Viber), ``viber_fallback`` (fell back to SMS) or ``sms``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import aiohttp
import structlog

from .. import phone
from ..config import SmscRouteConfig
from ..model import (
    FINAL,
    SMSC_ACCOUNT,
    SMSC_ACCOUNT_WAIT,
    SMSC_RETRY,
    Status,
    UnknownProviderStatus,
    smsc_status,
)
from ..model import OpenMessage, PollItem
from ..http_client import Ambiguous, Unavailable
from .answers import Accepted, Duplicate, DuplicateRequest, Outcome, ProviderError, Refused, Retry
from ..store import Store
from .http import BadCallback, HttpRoute
from .policy.batch import Batch, Job
from .policy.resend import Ask, Keep

log = structlog.get_logger(__name__)

MAX_ID = 2_147_483_647
VIBER_ID_BASE = 1_000_000_000
DUPLICATE = 9  # "duplicate request": SMSC has an identical one (or 15+ concurrent requests, §2.3)
DUPLICATE_WAIT = 60.0  # error 9: "wait a minute" (§2.3)
STORE_CHANNEL = {"sms": "sms", "viber": "viber", "fallback": "viber_fallback"}


# --- sans-I/O ---------------------------------------------------------------------


def only_digits(number: str) -> str:
    number = str(number)
    if number.isascii() and number.isdigit():  # the usual forms first: this runs per number of every answer
        return number
    if number.startswith("+") and number.isascii() and number[1:].isdigit():
        return number[1:]
    return "".join(c for c in number if c.isdigit())


def smsc_id(request_id: int, number: str) -> str:
    return f"{request_id}:{only_digits(number)}"


def split_smsc_id(pid: str) -> tuple[int, str]:
    rid, _, number = pid.partition(":")
    return int(rid), number


def batch_request_id(row_ids: Sequence[int], channel: str) -> int:
    rid = min(row_ids) + (VIBER_ID_BASE if channel == "viber" else 0)
    if not 1 <= rid <= MAX_ID:
        raise ValueError(f"request id {rid} out of SMSC's range")
    return rid


def auth(cfg: SmscRouteConfig) -> dict[str, str]:
    if cfg.apikey:
        return {"apikey": cfg.apikey}
    return {"login": cfg.login, "psw": cfg.password}


def error_delay(code: int, cfg: SmscRouteConfig) -> float | None:
    """Seconds to wait before trying again after error ``code``; None when final."""
    if code not in SMSC_RETRY and code not in SMSC_ACCOUNT_WAIT:
        return None
    if code == 9:  # "wait a minute" (capped by retry_max so tests need not)
        return min(DUPLICATE_WAIT, cfg.retry_max)
    return cfg.retry_max  # 4: IP blocked for a while; 2, 3: the admin has to act


def send_form(cfg: SmscRouteConfig, numbers: Sequence[str], text: str, sender: str, request_id: int,
              *, viber: bool = False) -> dict[str, str]:
    """send.php body; numbers in E.164 with '+', which turns off SMSC's auto-correction."""
    if not 1 <= len(numbers) <= 100:
        raise ValueError("1 to 100 numbers per request")
    form = {**auth(cfg), "phones": ",".join(numbers), "mes": text, "sender": sender, "id": str(request_id),
            "fmt": "3", "charset": "utf-8", "op": "1", "cost": "3"}
    if cfg.valid:
        form["valid"] = f"{cfg.valid // 60:02d}:{cfg.valid % 60:02d}"
    if viber:
        form["viber"] = "1"
    return form


def _int(v: Any, what: str) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise Ambiguous(f"{what} is not a number: {v!r}") from None


def _raise_error(body: Any, cfg: SmscRouteConfig, *, sending: bool = False) -> None:
    if not isinstance(body, (dict, list)):
        raise Ambiguous("answer is not a JSON object")
    if isinstance(body, dict) and "error_code" in body:
        code = _int(body["error_code"], "error_code")
        if sending and code == DUPLICATE:  # SMSC has an identical request: never send it again
            raise DuplicateRequest(code, str(body.get("error", "")), retry_after=error_delay(code, cfg))
        raise ProviderError(code, str(body.get("error", "")), retry_after=error_delay(code, cfg),
                            account=code in SMSC_ACCOUNT)


def parse_send(body: Any, numbers: Sequence[str], request_id: int, cfg: SmscRouteConfig) -> dict[str, Outcome]:
    """Per-number outcome (keyed by the number's digits) of a send.php answer with op=1."""
    _raise_error(body, cfg, sending=True)
    if not isinstance(body, dict) or "id" not in body:
        raise Ambiguous("send answer without id")
    rid = _int(body["id"], "id")
    if rid != request_id:
        raise Ambiguous(f"answer id {rid} is not the request id {request_id}")
    wanted = {only_digits(n) for n in numbers}
    per = body.get("phones")
    if per is None:  # no op=1 part: the request as a whole was taken
        return {d: Accepted(smsc_id(rid, d)) for d in wanted}
    out: dict[str, Outcome] = {}
    for item in per:
        if not isinstance(item, dict):
            continue
        d = only_digits(item.get("phone", ""))
        if d not in wanted:
            continue
        err = _int(item.get("error") or 0, "error")
        if err == 0:
            out[d] = Accepted(smsc_id(rid, d))
            continue
        detail = f"smsc error {err}"
        if err == DUPLICATE:
            out[d] = Duplicate(detail)
            continue
        delay = error_delay(err, cfg)
        out[d] = Retry(delay, detail) if delay is not None else Refused(Status.FAILED, detail)
    return out


def _has(item: Mapping[str, Any] | None) -> bool:
    """Whether a status.php item says SMSC has the message (-3: "not found")."""
    return item is not None and _int(item["status"], "status") != -3


def status_form(cfg: SmscRouteConfig, pairs: Sequence[tuple[int, str]], *, full: bool = False) -> dict[str, str]:
    """status.php body for (id, digits) pairs; the trailing commas ask for the list format always."""
    form = {**auth(cfg), "phone": "".join(f"{d}," for _, d in pairs), "id": "".join(f"{i}," for i, _ in pairs),
            "fmt": "3", "charset": "utf-8"}
    if full:
        form["all"] = "1"
    return form


def parse_status(body: Any, cfg: SmscRouteConfig) -> dict[tuple[int, str], dict[str, Any]]:
    """(id, digits) → the status object of a status.php list answer."""
    _raise_error(body, cfg)
    if isinstance(body, dict):
        body = [body]
    out = {}
    for item in body:
        if isinstance(item, dict) and "id" in item and "status" in item:
            out[(_int(item["id"], "id"), only_digits(item.get("phone", "")))] = item
    return out


@dataclass(frozen=True)
class CallbackStatus:
    request_id: int
    phone: str  # digits
    code: int
    err: int


def _first_bad(f: Mapping[str, str]) -> str:
    """The first of id, status, err that is not an integer (the field a 400 names)."""
    for name in ("id", "status", "err"):
        try:
            int(f.get(name) or (0 if name == "err" else ""))
        except ValueError:
            return name
    return "id"


def parse_callback(form: Sequence[tuple[str, str]]) -> CallbackStatus | None:
    """One status push (§2.5): id, phone, status, err.  None for other kinds of
    push (incoming SMS, call confirmation) that carry no status."""
    f = dict(form)
    if "status" not in f:
        if "id" in f or "phone" in f:
            return None
        raise BadCallback("no id, phone or status field", field="status")
    try:
        rid = int(f["id"])
        code = int(f["status"])
        err = int(f.get("err") or 0)
    except (KeyError, ValueError):
        raise BadCallback("id, status and err must be integers", field=_first_bad(f)) from None
    digits = only_digits(f.get("phone", ""))
    if not digits:
        raise BadCallback("phone missing", field="phone")
    return CallbackStatus(rid, digits, code, err)


@dataclass(frozen=True)
class HlrResult:
    """What the home network says about a number (§2.5); None fields: not reported."""

    status: int
    err: int
    imsi: str | None
    msc: str | None
    mcc: str | None
    mnc: str | None
    network: str | None  # home network name (cn/net)
    roaming_network: str | None  # rnet, when roaming


def parse_hlr(item: Mapping[str, Any]) -> HlrResult:
    def s(k: str) -> str | None:
        v = item.get(k)
        return None if v in (None, "") else str(v)

    return HlrResult(_int(item.get("status"), "status"), _int(item.get("err") or 0, "err"), s("imsi"),
                     s("msc"), s("mcc"), s("mnc"), s("net") or s("cn"), s("rnet"))


# --- the route ------------------------------------------------------------------


class ChannelSink(Protocol):
    """Told how a Viber-first cascade ended per number (issue 16; bitrix24/contacts/channel.py
    `PreferredChannel`), and asked whether a number should skip Viber."""

    def note(self, phone_e164: str, channel: str) -> None: ...

    def prefers_sms(self, phone_e164: str) -> bool: ...


class SmscRoute(HttpRoute):
    kind = "smsc"
    can_confirm = True
    channel_sink: ChannelSink | None = None  # set by the daemon

    def __init__(self, cfg: SmscRouteConfig, store: Store, http: aiohttp.ClientSession | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(cfg, store, http, monotonic=monotonic)
        self.cfg: SmscRouteConfig = cfg
        self.stats.update({"viber_delivered": 0, "viber_fallbacks": 0})

    def first_channel(self) -> str:
        return "viber" if self.cfg.viber else "sms"

    def enqueue(self, message: OpenMessage) -> None:
        """``skip_viber_for_sms_contacts``: a number whose Viber last fell back to SMS gets
        the SMS at once, without waiting ``viber_fallback`` for a Viber that will not come."""
        channel = self.first_channel()
        if (channel == "viber" and self.cfg.skip_viber_for_sms_contacts and self.channel_sink is not None
                and self.channel_sink.prefers_sms(message.phone)):
            channel = "sms"
            self.stats["viber_skipped"] = self.stats.get("viber_skipped", 0) + 1
        self.add_job(Job(message, channel))

    async def _load_open(self, skip: set[int]) -> int:
        """Queue what the store says is unsent (``skip``: already in memory).  Messages
        whose request was on the wire at a crash or a reload are asked about first
        (``run``), not resent blindly."""
        unsure = [u for u in await self.store.submitted_unconfirmed(self.name) if u.id not in skip]
        skip = skip | {u.id for u in unsure}
        messages = [m for m in await self.store.open_messages(self.name) if m.id not in skip]
        for m in messages:
            self.enqueue(m)
        owed = [m for m in await self.store.fallbacks_owed(self.name) if m.id not in skip]
        for m in owed:
            self.add_job(Job(m, "fallback"))
        self._unsure = unsure
        return len(messages) + len(owed) + len(unsure)

    _unsure: list[PollItem] = []

    async def run(self) -> None:
        if self._unsure:
            self._spawn(self._confirm_unsure(self._unsure))
            self._unsure = []
        await super().run()

    async def _confirm_unsure(self, items: list[PollItem]) -> None:
        """After a crash: what SMSC has is accepted, the rest is sent (again).

        Their requests were on the wire when the daemon stopped, so their answers are lost:
        ``ResendPolicy.lost`` messages, asked about until SMSC answers (a blind resend is the
        duplicate SMS of issue 14), then kept or resent as the policy decides. A message a
        callback finished meanwhile is neither.
        """
        for start in range(0, len(items), 100):
            chunk = {it.id: it for it in items[start:start + 100]}
            pairs = {row_id: split_smsc_id(it.smsc_id) for row_id, it in chunk.items()}
            ask = self.policy.lost(list(chunk), self.monotonic())
            assert isinstance(ask, Ask)  # SMSC can be asked (can_confirm)
            while True:
                if await self._pause(max(0.0, ask.at - self.monotonic())):
                    return  # stopping: still `submitted` in the store, the next start asks again
                ids = [i for i in ask.ids if not self.policy.settled(i)]
                if not ids:  # callbacks settled every one of them
                    found = {}
                    break
                try:
                    found = parse_status(await self.client.post(
                        self.client.url("status.php"), status_form(self.cfg, [pairs[i] for i in ids])), self.cfg)
                    break
                except (Unavailable, Ambiguous, ProviderError) as e:
                    ask = self.policy.ask_failed(ids, self.monotonic())
                    log.warning("smsc_crash_confirm_retry", route=self.name, error=str(e))
            had = resent = 0
            for decision in self.policy.asked({i: _has(found.get(pairs[i])) for i in ids}, self.monotonic()):
                for row_id in decision.ids:
                    it = chunk[row_id]
                    channel = "viber" if pairs[row_id][0] >= VIBER_ID_BASE else "sms"
                    job = Job(OpenMessage(it.id, self.name, it.sender, it.phone, it.text, (0,)), channel)
                    if isinstance(decision, Keep):
                        had += 1
                        await self.accepted(job, it.smsc_id)
                    else:  # Resend: SMSC does not have it
                        resent += 1
                        self.add_job(job)
            log.info("smsc_crash_confirmed", route=self.name, had=had, resending=resent)

    def planned_ids(self, batch: Batch) -> dict[int, str] | None:
        if batch.key[2] == "fallback":
            return None  # already accepted (as Viber): its row keeps the Viber id until the SMS is taken
        rid, numbers = self._request(batch)
        return {j.message.id: smsc_id(rid, n) for j, n in zip(batch.jobs, numbers)}

    # --- sending -----------------------------------------------------------------

    def _request(self, batch: Batch) -> tuple[int, list[str]]:
        channel = batch.key[2]
        return (batch_request_id([j.message.id for j in batch.jobs], channel),
                [j.message.phone for j in batch.jobs])

    async def submit(self, batch: Batch) -> dict[int, Outcome]:
        rid, numbers = self._request(batch)
        sender, text, channel = batch.key
        form = send_form(self.cfg, numbers, text, sender, rid, viber=channel == "viber")
        body = await self.client.post(self.client.url("send.php"), form)
        by_digits = parse_send(body, numbers, rid, self.cfg)
        return {j.message.id: by_digits[only_digits(n)] for j, n in zip(batch.jobs, numbers)
                if only_digits(n) in by_digits}

    async def confirm(self, batch: Batch) -> dict[int, Outcome] | None:
        """Ask status.php about the request id and every number: what SMSC has was accepted."""
        rid, numbers = self._request(batch)
        pairs = [(rid, only_digits(n)) for n in numbers]
        found = parse_status(await self.client.post(self.client.url("status.php"), status_form(self.cfg, pairs)), self.cfg)
        out: dict[int, Outcome] = {}
        for job, pair in zip(batch.jobs, pairs):
            if _has(found.get(pair)):
                out[job.message.id] = Accepted(smsc_id(*pair))
        return out  # the missing ones: SMSC does not have them (ResendPolicy decides when they go again)

    async def accepted(self, job: Job, pid: str) -> None:
        wait = self.cfg.viber_fallback if job.channel == "viber" else self.cfg.poll_after
        await self.store.provider_accepted(job.message.id, pid, poll_at=self.store.clock() + wait,
                                           channel=STORE_CHANNEL[job.channel],
                                           pending_ttl=self.cfg.unknown_receipts_ttl)

    # --- statuses ----------------------------------------------------------------

    def _status(self, code: int) -> Status | None:
        try:
            return smsc_status(code)
        except UnknownProviderStatus:
            self.stats["unknown_status"] += 1
            log.warning("smsc_unknown_status", route=self.name, code=code)
            return None

    async def poll(self, items: Sequence[PollItem]) -> dict[int, tuple[int, Status | None]]:
        pairs = [split_smsc_id(i.smsc_id) for i in items]
        found = parse_status(await self.client.post(self.client.url("status.php"), status_form(self.cfg, pairs)), self.cfg)
        out: dict[int, tuple[int, Status | None]] = {}
        for item, pair in zip(items, pairs):
            st = found.get(pair)
            if st is not None:
                code = _int(st["status"], "status")
                out[item.id] = (code, self._status(code))
        return out

    async def polled(self, item: PollItem, code: int, status: Status | None) -> bool:
        rid, _ = split_smsc_id(item.smsc_id)
        if rid >= VIBER_ID_BASE and item.channel == "viber" and status is not Status.DELIVERED:
            # The fallback time is up (that is when a Viber message is polled).
            await self._fall_back(item, f"smsc {code} (viber, polled)")
            return True
        if rid >= VIBER_ID_BASE and item.channel == "viber" and self.channel_sink is not None:
            self.channel_sink.note(item.phone, "viber")
        if status is None or status is Status.ACCEPTED:
            return False
        return await super().polled(item, code, status)

    async def callback(self, form: Sequence[tuple[str, str]]) -> str:
        cb = parse_callback(form)
        if cb is None:
            return "OK"
        self.stats["callbacks"] += 1
        status = self._status(cb.code)
        if status is None:
            return "OK"
        pid = smsc_id(cb.request_id, cb.phone)
        detail = f"smsc {cb.code}" + (f" err:{cb.err}" if cb.err else "")
        if cb.request_id >= VIBER_ID_BASE:
            if status in FINAL and status is not Status.DELIVERED:
                item = await self.store.poll_item(self.name, pid)
                if item is not None and item.channel == "viber":
                    await self._fall_back(item, detail + " (viber)")
                    return "OK"
            if status is Status.DELIVERED:
                self.stats["viber_delivered"] += 1
                if self.channel_sink is not None:
                    self.channel_sink.note("+" + cb.phone.lstrip("+"), "viber")
            detail += " (viber)"
        mid = await self.receipt(pid, status, detail)
        if mid is None:
            self.stats["receipts_unmatched"] += 1
            log.info("smsc_callback_unmatched", route=self.name, smsc_id=f"{cb.request_id}:"
                     + phone.mask(cb.phone))
        return "OK"

    async def _fall_back(self, item: PollItem, detail: str) -> None:
        """Viber did not deliver: owe the message an SMS, durably, then queue it."""
        self.stats["viber_fallbacks"] += 1
        if self.channel_sink is not None:
            self.channel_sink.note(item.phone, "sms")
        await self.store.record_event(item.id, Status.UNDELIVERED, detail + ": falling back to SMS")
        await self.store.start_fallback(item.id)
        log.info("viber_fallback_to_sms", route=self.name, message=item.id)
        self.add_job(Job(OpenMessage(item.id, self.name, item.sender, item.phone, item.text, (0,)), "fallback"))

    # --- HLR ---------------------------------------------------------------------

    async def hlr_request(self, number: str) -> int:
        """Start an HLR lookup for an E.164 number; the request id to ask about later."""
        rid = random.randint(2 * VIBER_ID_BASE, MAX_ID)  # outside the ranges of row ids
        form = {**auth(self.cfg), "phones": number, "mes": "", "hlr": "1", "id": str(rid), "fmt": "3",
                "charset": "utf-8"}
        body = await self.client.post(self.client.url("send.php"), form)
        _raise_error(body, self.cfg)
        return _int(body.get("id", rid), "id") if isinstance(body, dict) else rid

    async def hlr_result(self, request_id: int, number: str) -> HlrResult | None:
        """The HLR answer, or None while the home network has not replied."""
        pair = (request_id, only_digits(number))
        found = parse_status(await self.client.post(self.client.url("status.php"), status_form(self.cfg, [pair], full=True)),
                             self.cfg)
        item = found.get(pair)
        if item is None or _int(item.get("status"), "status") in (-1, 0):
            return None
        return parse_hlr(item)
