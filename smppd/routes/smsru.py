"""SMS.ru: ``sms/send``, ``sms/status``, ``sms/cost`` and the status callback.

Wire format: reference/providers.md §1.  The functions at the top are the
sans-I/O part (build a form, read an answer, read a callback) and carry all
the provider knowledge; ``SmsRuRoute`` is the thin asyncio shell over
``http.HttpRoute``.

SMS.ru has no idempotency key and no lookup by number, so a send whose answer
was lost cannot be checked: it is resent (at-least-once, DESIGN.md) and
counted as ``ambiguous_resent``.  Connection refused and HTTP 5xx are not
ambiguous: the provider did not take the request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import aiohttp
import structlog

from .. import phone
from ..config import SmsRuRouteConfig
from ..model import (
    SMSRU_ACCOUNT,
    SMSRU_ACCOUNT_WAIT,
    SMSRU_RETRY,
    Status,
    UnknownProviderStatus,
    smsru_status,
)
from ..model import PollItem
from ..http_client import Ambiguous
from .answers import Accepted, Outcome, ProviderError, Refused, Retry
from ..store import Store
from .http import BadCallback, ForgedCallback, HttpRoute
from .provider_client import ProviderClient
from .policy.batch import Batch

log = structlog.get_logger(__name__)

MAX_NUMBERS = 100  # per sms/send request (§1.2)
DATA_KEY = re.compile(r"^data\[(\d*)\]$")


# --- sans-I/O ---------------------------------------------------------------------


def error_delay(code: int, cfg: SmsRuRouteConfig) -> float | None:
    """Seconds to wait before trying again after error ``code``; None when final."""
    if code in SMSRU_RETRY:
        # 206 is the daily limit: no point in knocking every second.
        return cfg.retry_max if code == 206 else cfg.retry_min
    if code in SMSRU_ACCOUNT_WAIT:
        return cfg.retry_max
    return None


def send_form(cfg: SmsRuRouteConfig, numbers: Sequence[str], text: str, sender: str) -> dict[str, str]:
    """The POST body of sms/send; numbers are 375… digits without '+'."""
    if not 1 <= len(numbers) <= MAX_NUMBERS:
        raise ValueError(f"1 to {MAX_NUMBERS} numbers per request")
    form = {"api_id": cfg.api_id, "to": ",".join(numbers), "msg": text, "json": "1"}
    if sender:
        form["from"] = sender
    if cfg.ttl:
        form["ttl"] = str(cfg.ttl)
    if cfg.translit:
        form["translit"] = "1"
    if cfg.test:
        form["test"] = "1"
    return form


def _code(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise Ambiguous(f"status_code is not a number: {v!r}") from None


def _request_level(body: Any, cfg: SmsRuRouteConfig) -> None:
    """Raise ProviderError for a request-level ERROR (no ``sms`` object)."""
    if not isinstance(body, dict) or "status" not in body:
        raise Ambiguous("answer is not an SMS.ru object")
    if body.get("status") == "OK":
        return
    code = _code(body.get("status_code"))
    raise ProviderError(code, str(body.get("status_text", "")), retry_after=error_delay(code, cfg),
                        account=code in SMSRU_ACCOUNT)


def parse_send(body: Any, numbers: Sequence[str], cfg: SmsRuRouteConfig) -> dict[str, Outcome]:
    """Per-number outcome of an sms/send answer, keyed by the number as sent.

    A number the answer does not mention gets no entry (the caller retries it).
    """
    _request_level(body, cfg)
    items = body.get("sms")
    if not isinstance(items, dict):
        raise Ambiguous("OK answer without an sms object")
    out: dict[str, Outcome] = {}
    for number in numbers:
        item = items.get(number)
        if not isinstance(item, dict):
            continue
        code = _code(item.get("status_code"))
        if item.get("status") == "OK" and code == 100 and item.get("sms_id"):
            out[number] = Accepted(str(item["sms_id"]))
            continue
        detail = f"smsru {code}: {item.get('status_text', '')}".rstrip(": ")
        delay = error_delay(code, cfg)
        out[number] = Retry(delay, detail) if delay is not None else Refused(Status.FAILED, detail)
    return out


def parse_status(body: Any, cfg: SmsRuRouteConfig) -> dict[str, int]:
    """sms_id → status code from an sms/status answer (-1 = unknown id)."""
    _request_level(body, cfg)
    items = body.get("sms")
    if not isinstance(items, dict):
        raise Ambiguous("status answer without an sms object")
    return {str(k): _code(v.get("status_code")) for k, v in items.items() if isinstance(v, dict)}


@dataclass(frozen=True)
class CallbackStatus:
    sms_id: str
    code: int
    ts: int | None


def parse_callback(form: Sequence[tuple[str, str]], api_id: str) -> list[CallbackStatus]:
    """Read a callback POST (§1.6): ``data[n]`` records, sorted by n, their hash required.

    With an ``api_id`` the ``hash`` (sha256 of api_id and the records) must be
    there and match (issue 18 §5): the URL key alone is in every callback URL the
    provider's cabinet shows, and with it an unsigned ``sms_status\n<id>\n103``
    would mark any message delivered.  A refused genuine callback is not lost:
    SMS.ru retries until it gets ``100`` and the route polls ``sms/status``.

    Call-check records and unknown record kinds are skipped; a malformed
    ``sms_status`` record makes the whole post BadCallback, so SMS.ru retries
    it rather than us silently dropping part of it.
    """
    items: list[tuple[int, int, str]] = []
    sent_hash = None
    for pos, (k, v) in enumerate(form):
        if k == "hash":
            sent_hash = v
            continue
        m = DATA_KEY.match(k)
        if m:
            items.append((int(m[1]) if m[1] else pos, pos, v))
    if not items:
        raise BadCallback("no data[] entries", field="data")
    items.sort()
    values = [v for _, _, v in items]
    if sent_hash is None and api_id:
        raise ForgedCallback("hash: missing (required when the route has an api_id)", field="hash")
    if sent_hash is not None:
        expect = hashlib.sha256((api_id + "".join(values)).encode()).hexdigest()
        if not hmac.compare_digest(sent_hash.strip().lower().encode(), expect.encode()):
            raise ForgedCallback("hash does not match", field="hash")
    out = []
    for v in values:
        lines = v.replace("\r\n", "\n").split("\n")
        if lines[0] != "sms_status":
            continue
        if len(lines) < 3 or not lines[1] or not lines[2].lstrip("-").isdigit():
            raise BadCallback(f"malformed sms_status record ({len(lines)} lines)", field="data")
        ts = int(lines[3]) if len(lines) > 3 and lines[3].isdigit() else None
        out.append(CallbackStatus(lines[1], int(lines[2]), ts))
    return out


@dataclass(frozen=True)
class Cost:
    """What a text would cost, per number and in total (sms/cost)."""

    per_number: Mapping[str, tuple[int, float | None, int | None]]  # number → (status_code, cost, parts)
    total_cost: float
    total_sms: int


def parse_cost(body: Any, cfg: SmsRuRouteConfig) -> Cost:
    _request_level(body, cfg)
    per: dict[str, tuple[int, float | None, int | None]] = {}
    for number, item in (body.get("sms") or {}).items():
        if isinstance(item, dict):
            cost = item.get("cost")
            parts = item.get("sms")
            per[str(number)] = (_code(item.get("status_code")),
                                float(cost) if cost is not None else None,
                                int(parts) if parts is not None else None)
    return Cost(per, float(body.get("total_cost") or 0), int(body.get("total_sms") or 0))


async def quote(client: ProviderClient, cfg: SmsRuRouteConfig, numbers: Sequence[str], text: str,
                sender: str) -> Cost:
    """sms/cost: what ``text`` to ``numbers`` would cost, without sending; no route or store needed."""
    form = send_form(cfg, numbers, text, sender)
    form.pop("ttl", None)
    form.pop("test", None)
    return parse_cost(await client.post(client.url("sms/cost"), form), cfg)


# --- the route ------------------------------------------------------------------


class SmsRuRoute(HttpRoute):
    kind = "smsru"

    def __init__(self, cfg: SmsRuRouteConfig, store: Store, http: aiohttp.ClientSession | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(cfg, store, http, monotonic=monotonic)
        self.cfg: SmsRuRouteConfig = cfg

    async def submit(self, batch: Batch) -> dict[int, Outcome]:
        numbers = [phone.digits(j.message.phone) for j in batch.jobs]
        sender, text, _ = batch.key
        body = await self.client.post(self.client.url("sms/send"), send_form(self.cfg, numbers, text, sender))
        by_number = parse_send(body, numbers, self.cfg)
        return {j.message.id: by_number[n] for j, n in zip(batch.jobs, numbers) if n in by_number}

    async def poll(self, items: Sequence[PollItem]) -> dict[int, tuple[int, Status | None]]:
        body = await self.client.post(self.client.url("sms/status"), {
            "api_id": self.cfg.api_id, "sms_id": ",".join(i.smsc_id for i in items), "json": "1"})
        codes = parse_status(body, self.cfg)
        out: dict[int, tuple[int, Status | None]] = {}
        for item in items:
            code = codes.get(item.smsc_id)
            if code is None or code == -1:
                continue
            out[item.id] = (code, self._status(code))
        return out

    def _status(self, code: int) -> Status | None:
        try:
            return smsru_status(code)
        except UnknownProviderStatus:
            self.stats["unknown_status"] += 1
            log.warning("smsru_unknown_status", route=self.name, code=code)
            return None

    async def polled(self, item: PollItem, code: int, status: Status | None) -> bool:
        if status is None or status is Status.ACCEPTED:
            return False
        return await super().polled(item, code, status)

    async def callback(self, form: Sequence[tuple[str, str]]) -> str:
        records = parse_callback(form, self.cfg.api_id)
        self.stats["callbacks"] += len(records)
        for r in records:
            status = self._status(r.code)
            if status is None:
                continue
            mid = await self.receipt(r.sms_id, status, f"smsru {r.code}")
            if mid is None:
                self.stats["receipts_unmatched"] += 1
                log.info("smsru_callback_unmatched", route=self.name, smsc_id=r.sms_id)
        return "100"  # anything else counts as a failure and is retried (§1.6)

    async def cost(self, numbers: Sequence[str], text: str, sender: str) -> Cost:
        """Price and segment count without sending (``smppd cost``)."""
        return await quote(self.client, self.cfg, numbers, text, sender)
