"""HLR lookups through SMSC.ru: is a number reachable, on which operator, and what it costs.

Why a module of its own: HLR is the one contacts tool that spends money (a price is quoted
before the job goes ahead) and talks to a provider, not to Bitrix24.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol

from ... import phone
from ...config import Config, SmscRouteConfig
from ...routes.provider_client import ProviderClient
from ...routes.smsc import auth
from .scan import chunks


HLR_FIELDS = [("UF_CRM_OPERATOR", "string", "SMS: operator (HLR)"), ("UF_CRM_REGION", "string", "SMS: region (HLR)"),
              ("UF_CRM_SMS_REACHABLE", "boolean", "SMS: reachable (HLR)")]
HLR_CHUNK = 100  # numbers per send.php request (the route's batch size, providers.md §2)


@dataclass(frozen=True)
class HlrResult:
    reachable: bool
    operator: str
    region: str


class HttpPoster(Protocol):
    """What SMSC.ru HLR needs of `routes.provider_client.ProviderClient`: its POST and its URLs."""

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
        for chunk in chunks(numbers, HLR_CHUNK):
            # an id of its own: SMSC.ru refuses a request identical to one of the last minute (error 9)
            answer = await self._send({"phones": ",".join(chunk), "cost": "1", "id": str(next(self._ids))})
            total += float(answer.get("cost") or 0)
        return round(total, 2)

    async def check(self, numbers: list[str], done: Callable[[int], None] = lambda n: None) -> dict[str, HlrResult]:
        """Send every request first, then poll them all: the lookups run side by side at
        SMSC.ru, so a base takes the send time plus a few polls, not a wait per hundred."""
        results: dict[str, HlrResult] = {}
        pending: dict[str, dict[str, str]] = {}  # request id -> digits -> E.164
        for chunk in chunks(numbers, HLR_CHUNK):
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


class HlrSource(Protocol):
    async def price(self, numbers: list[str]) -> float: ...

    async def check(self, numbers: list[str], done: Callable[[int], None] = ...) -> dict[str, HlrResult]: ...


#: CODE -> (HLR source, its closer), or a message saying why that CODE cannot do HLR.
HlrFor = Callable[[str], "tuple[HlrSource, Callable[[], Awaitable[None]]] | str"]


def smsc_hlr_for(config: Config, code: str, *, poll: float = 2.0
                 ) -> tuple[SmscHlr, Callable[[], Awaitable[None]]] | str:
    """An SMSC.ru HLR client with the CODE's route credentials and its closer, or why there is none."""
    sender = config.senders.get(code)
    if sender is None:
        return f"no sender with code {code!r}"
    route_cfg = config.routes.get(sender.route)
    if not isinstance(route_cfg, SmscRouteConfig):
        return f"{code} goes through route {sender.route!r}, not SMSC.ru: HLR needs an SMSC.ru route"
    client = ProviderClient(route_cfg)  # no route, no store: HLR sends no message
    return SmscHlr(client, auth(route_cfg), poll=poll), client.close
