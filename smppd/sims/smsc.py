"""A simulated SMSC.ru (reference/providers.md §2): send.php (SMS, Viber, HLR), status.php, callbacks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..text import count_segments
from .base import SimBase

DEFAULT_OUTCOMES = {1: 0.85, 3: 0.05, 20: 0.05, 25: 0.05}
ERRORS = {
    1: "parameters error", 2: "invalid login or password", 3: "not enough money", 4: "IP blocked",
    6: "message is denied", 7: "invalid number", 8: "can't deliver", 9: "duplicate request, wait a minute",
}


@dataclass
class SimMessage:
    id: int
    phone: str
    text: str
    sender: str
    viber: bool
    hlr: bool
    status: int = -1
    err: int = 0
    last_timestamp: int = 0


@dataclass
class SmscSimulator(SimBase):
    login: str = "smppd"
    psw: str = "sim-password"
    apikey: str | None = None
    balance: float = 1000.0
    price: float = 0.4
    outcomes: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_OUTCOMES))
    viber_users: frozenset[str] | None = None  # digits with Viber; None = decided by viber_share
    viber_share: float = 1.0  # share of numbers with Viber (by last digit) when viber_users is None
    viber_silent: bool = False  # Viber never reports (tests the fallback timeout)
    bad_numbers: frozenset[str] = frozenset()  # digits refused per number (error 7)
    hlr_unreachable: frozenset[str] = frozenset()  # digits whose HLR request ends in status 20 (err 1)
    # §2.3: error 9 answers an identical send within a minute (SMSC has the first one) and,
    # without taking anything, a client with this many requests open at once.
    duplicate_window: float = 60.0
    concurrent_limit: int = 15
    messages: dict[tuple[int, str], SimMessage] = field(init=False, default_factory=dict)
    sends: list[tuple[str, str]] = field(init=False, default_factory=list)  # (digits, text) per SMS taken
    _recent: dict[tuple[str, ...], float] = field(init=False, default_factory=dict)
    _status_down_until: float = field(init=False, default=0.0)

    def status_down_for(self, seconds: float) -> None:
        """status.php answers HTTP 500 for this long (send.php keeps working): issue 14 item 9."""
        self._status_down_until = time.monotonic() + seconds

    def sent_twice(self) -> list[tuple[str, str]]:
        """(digits, text) that went out as more than one SMS: what a gateway must never cause."""
        return sorted({k for k in self.sends if self.sends.count(k) > 1})

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/sys/{script:send|status|balance}.php", self.handle)

    def _authorised(self, f: dict[str, str]) -> bool:
        if self.apikey is not None and f.get("apikey") == self.apikey:
            return True
        return f.get("login") == self.login and f.get("psw") == self.psw

    @staticmethod
    def _err(code: int, **extra: Any) -> dict[str, Any]:
        return {"error": ERRORS[code], "error_code": code, **extra}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        script = request.match_info["script"]
        f = await self.form(request)
        self.requests.append((script, f))
        if script == "status" and time.monotonic() < self._status_down_until:
            return web.Response(status=500, text="Internal Server Error")
        if script == "send" and self.in_flight >= self.concurrent_limit:
            return self._answer(self._err(9))  # "15+ concurrent requests": nothing taken
        fault = self._take_fault(script)
        if fault and fault.kind == "http500":
            return web.Response(status=500, text="Internal Server Error")
        if fault and fault.kind == "json":
            return self._answer(fault.body)
        if not self._authorised(f):
            answer: Any = self._err(2)
        else:
            answer = getattr(self, "_" + script)(f)
        if f.get("fmt") != "3":
            if isinstance(answer, dict) and "error_code" in answer:
                return web.Response(text=f"ERROR = {answer['error_code']} ({answer['error']})")
            return web.Response(text="OK")
        if fault and fault.kind == "drop":
            return await self.drop(request)
        if fault and fault.kind == "slow":
            return await self.slow(float(fault.body), self._answer(answer))
        return self._answer(answer)

    @staticmethod
    def _answer(obj: Any) -> web.Response:
        # Real answers say windows-1251 even with charset=utf-8 (§2.1); the body is UTF-8.
        import json

        return web.Response(body=json.dumps(obj, ensure_ascii=False).encode(),
                            headers={"Content-Type": "application/json; charset=windows-1251"})

    def _send(self, f: dict[str, str]) -> dict[str, Any]:
        phones = [p.strip() for p in f.get("phones", "").replace(";", ",").split(",") if p.strip()]
        text = f.get("mes", "")
        hlr = f.get("hlr") == "1"
        viber = f.get("viber") == "1"
        try:
            rid = int(f.get("id") or 0) or (max((k[0] for k in self.messages), default=0) + 1)
        except ValueError:
            return self._err(1)
        if not phones or (not text and not hlr) or len(text) > 1000:
            return self._err(1, id=rid)
        key = (f.get("phones", ""), text, str(rid), f.get("viber", ""), f.get("hlr", ""))
        now = time.monotonic()
        if now - self._recent.get(key, -1e9) < self.duplicate_window:
            return self._err(9)
        self._recent[key] = now
        parts = count_segments(text) if text else 1
        good = [p for p in phones if self._digits(p) not in self.bad_numbers and 11 <= len(self._digits(p)) <= 15]
        if not good:
            return self._err(7, id=rid)
        if f.get("cost") == "1":  # price only, nothing is sent (§2.2)
            priced: dict[str, Any] = {"cost": f"{parts * self.price * len(good):.2f}", "cnt": parts * len(good)}
            if f.get("op") == "1":  # per-number phones array (§2.3): a refused number has its error
                priced["phones"] = [
                    {"phone": self._digits(p), "mccmnc": "25701" if p in good else "0",
                     "cost": f"{parts * self.price:.2f}" if p in good else "0",
                     "status": "0" if p in good else "-3", "error": "0" if p in good else "7"} for p in phones]
            return priced
        if self.balance < parts * self.price * len(good):
            return self._err(3, id=rid)
        per = []
        for p in phones:
            d = self._digits(p)
            if p not in good:
                per.append({"phone": d, "mccmnc": "0", "cost": "0", "status": "-3", "error": "7"})
                continue
            self.balance -= parts * self.price
            m = SimMessage(rid, d, text, f.get("sender", ""), viber, hlr, last_timestamp=int(time.time()))
            self.messages[(rid, d)] = m
            self.sends.append((d, text))
            per.append({"phone": d, "mccmnc": "25701", "cost": f"{parts * self.price:.2f}", "status": "-1",
                        "error": "0"})
            self.later(self.deliver_after / 2, lambda m=m: self._advance(m, 0))
            if viber and self.viber_silent:
                continue
            if hlr:
                final = 20 if d in self.hlr_unreachable else 1
            elif viber and not self.has_viber(d):
                final = 20
            else:
                final = self._rng.choices(list(self.outcomes), weights=list(self.outcomes.values()))[0]
            self.later(self.deliver_after, lambda m=m, c=final: self._advance(m, c))
        answer: dict[str, Any] = {"id": rid, "cnt": parts * len(good)}
        if f.get("cost") in ("2", "3"):
            answer["cost"] = f"{parts * self.price * len(good):.2f}"
        if f.get("cost") == "3":
            answer["balance"] = f"{self.balance:.2f}"
        if f.get("op") == "1":
            answer["phones"] = per
        return answer

    def has_viber(self, digits: str) -> bool:
        if self.viber_users is not None:
            return digits in self.viber_users
        return int(digits[-1]) < self.viber_share * 10

    @staticmethod
    def _digits(p: str) -> str:
        return "".join(c for c in p if c.isdigit())

    async def _advance(self, m: SimMessage, status: int) -> None:
        if m.status in (1, 2, 3, 4, 20, 22, 23, 24, 25):
            return
        m.status = status
        m.last_timestamp = int(time.time())
        if m.status in (20, 25):
            m.err = 1 if m.status == 20 else 6
        if self.callback_url and status != -1:
            await self.post_callback({"id": str(m.id), "phone": m.phone, "status": str(m.status),
                                      "err": str(m.err), "sender_id": m.sender,
                                      "cost": f"{self.price:.2f}"}, expect="OK")

    def _item(self, m: SimMessage, full: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"id": m.id, "phone": m.phone, "status": m.status, "err": m.err,
                                "last_timestamp": m.last_timestamp}
        if full:
            item.update({"message": m.text, "sender_id": m.sender, "cost": f"{self.price:.2f}",
                         "country": "Беларусь", "operator": "A1"})
            if m.hlr and m.status == 1:
                item.update({"imsi": "257010000000001", "msc": "375290000001", "mcc": "257", "mnc": "01",
                             "cn": "Belarus", "net": "A1", "rcn": "", "rnet": ""})
        return item

    def _status(self, f: dict[str, str]) -> Any:
        phones = f.get("phone", "").split(",")
        ids = f.get("id", "").split(",")
        batch = f.get("phone", "").endswith(",") or len(phones) > 1
        full = f.get("all") in ("1", "2")
        out = []
        for p, i in zip(phones, ids):
            if not p or not i:
                continue
            try:
                key = (int(i), self._digits(p))
            except ValueError:
                return self._err(1)
            m = self.messages.get(key)
            out.append(self._item(m, full) if m else {"id": key[0], "phone": key[1], "status": -3, "err": 0})
        if batch:
            return out
        if not out:
            return self._err(1)
        return out[0]

    def _balance(self, f: dict[str, str]) -> dict[str, Any]:
        return {"balance": f"{self.balance:.2f}"}
