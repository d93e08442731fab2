"""A simulated SMS.ru (reference/providers.md §1): send, status, cost, balance, callbacks."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..text import count_segments
from .base import SimBase

# Final codes a delivered/undelivered message ends with, and their weights.
DEFAULT_OUTCOMES = {103: 0.85, 104: 0.05, 107: 0.05, 150: 0.05}
ERROR_TEXT = {
    200: "Неправильный api_id", 201: "Не хватает средств на лицевом счету", 202: "Неправильно указан номер",
    203: "Нет текста сообщения", 204: "Имя отправителя не согласовано с администрацией",
    207: "На этот номер нельзя отправлять сообщения", 210: "Используется GET, где необходимо использовать POST",
    211: "Метод не найден", 220: "Сервис временно недоступен, попробуйте чуть позже", 500: "Ошибка на сервере",
}


@dataclass
class SimSms:
    sms_id: str
    phone: str
    text: str
    code: int = 100
    parts: int = 1


@dataclass
class SmsRuSimulator(SimBase):
    api_id: str = "sim-api-id"
    senders: frozenset[str] = frozenset({"DemoShop"})
    balance: float = 1000.0
    price: float = 0.5  # per part
    outcomes: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_OUTCOMES))
    refuse: dict[str, int] = field(default_factory=dict)  # phone → per-number error code
    sign_callbacks: bool = True
    messages: dict[str, SimSms] = field(init=False, default_factory=dict)
    _ids: Any = field(init=False, default_factory=lambda: itertools.count(10000001))
    _pending_cb: list[str] = field(init=False, default_factory=list)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{method:sms/send|sms/status|sms/cost|my/balance}", self.handle)
        app.router.add_route("*", "/{method:.*}", self.unknown)

    @staticmethod
    def _json(obj: dict[str, Any]) -> web.Response:
        return web.json_response(obj)

    @staticmethod
    def _error(code: int) -> dict[str, Any]:
        return {"status": "ERROR", "status_code": code, "status_text": ERROR_TEXT.get(code, "Ошибка")}

    async def unknown(self, request: web.Request) -> web.Response:
        return self._json(self._error(211))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        form = await self.form(request)
        self.requests.append((method, form))
        fault = self._take_fault(method)
        if fault and fault.kind == "http500":
            return web.Response(status=500, text="Internal Server Error")
        if fault and fault.kind == "json":
            return self._json(fault.body)
        if request.method != "POST":
            return self._json(self._error(210))
        if form.get("api_id") != self.api_id:
            return self._json(self._error(200))
        answer = getattr(self, "_" + method.replace("/", "_"))(form)
        if form.get("json") != "1":  # line-based text answer without json=1
            return web.Response(text=f"{answer['status_code']}\n")
        if fault and fault.kind == "drop":
            return await self.drop(request)
        if fault and fault.kind == "slow":
            return await self.slow(float(fault.body), self._json(answer))
        return self._json(answer)

    def _numbers(self, form: dict[str, str]) -> list[str]:
        return [n.strip() for n in form.get("to", "").split(",") if n.strip()]

    def _sms_send(self, form: dict[str, str]) -> dict[str, Any]:
        numbers = self._numbers(form)
        text = form.get("msg", "")
        if not text:
            return self._error(203)
        if not numbers:
            return self._error(202)
        if len(numbers) > 100:
            return self._error(207)
        sender = form.get("from")
        if sender and sender not in self.senders:
            return self._error(204)
        parts = count_segments(text)
        if self.balance < parts * self.price * len(numbers):
            return self._error(201)
        test = form.get("test") == "1"
        out: dict[str, Any] = {}
        for n in numbers:
            if not (n.isdigit() and 11 <= len(n) <= 15):
                out[n] = {"status": "ERROR", "status_code": 202, "status_text": ERROR_TEXT[202]}
                continue
            if n in self.refuse:
                code = self.refuse[n]
                out[n] = {"status": "ERROR", "status_code": code, "status_text": ERROR_TEXT.get(code, "Ошибка")}
                continue
            sms_id = f"{self.seed:06d}-{next(self._ids):08d}"
            out[n] = {"status": "OK", "status_code": 100, "sms_id": sms_id}
            if test:
                continue
            self.balance -= parts * self.price
            self.messages[sms_id] = SimSms(sms_id, n, text, 100, parts)
            self.later(self.deliver_after / 2, lambda i=sms_id: self._advance(i, 102))
            final = self._rng.choices(list(self.outcomes), weights=list(self.outcomes.values()))[0]
            self.later(self.deliver_after, lambda i=sms_id, c=final: self._advance(i, c))
        return {"status": "OK", "status_code": 100, "balance": round(self.balance, 2), "sms": out}

    def _advance(self, sms_id: str, code: int) -> None:
        self.messages[sms_id].code = code
        if self.callback_url:
            if not self._pending_cb:
                self.later(self.callback_batch, self._flush_callbacks)
            self._pending_cb.append(sms_id)

    async def _flush_callbacks(self) -> None:
        ids, self._pending_cb = self._pending_cb, []
        records = [f"sms_status\n{i}\n{self.messages[i].code}\n1700000000" for i in ids]
        data = {f"data[{n}]": r for n, r in enumerate(records)}
        if self.sign_callbacks:
            data["hash"] = hashlib.sha256((self.api_id + "".join(records)).encode()).hexdigest()
        await self.post_callback(data, expect="100")

    def _sms_status(self, form: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in (x.strip() for x in form.get("sms_id", "").split(",") if x.strip()):
            m = self.messages.get(i)
            if m is None:
                out[i] = {"status": "ERROR", "status_code": -1, "status_text": "Сообщение не найдено"}
            else:
                out[i] = {"status": "OK", "status_code": m.code, "cost": m.parts * self.price,
                          "status_text": ""}
        return {"status": "OK", "status_code": 100, "balance": round(self.balance, 2), "sms": out}

    def _sms_cost(self, form: dict[str, str]) -> dict[str, Any]:
        numbers = self._numbers(form)
        text = form.get("msg", "")
        if not text:
            return self._error(203)
        parts = count_segments(text)
        out = {}
        total = 0.0
        for n in numbers:
            if n in self.refuse or not n.isdigit():
                out[n] = {"status": "ERROR", "status_code": self.refuse.get(n, 202)}
                continue
            out[n] = {"status": "OK", "status_code": 100, "cost": str(parts * self.price), "sms": parts}
            total += parts * self.price
        return {"status": "OK", "status_code": 100, "sms": out, "total_cost": round(total, 2),
                "total_sms": parts * sum(1 for v in out.values() if v["status"] == "OK")}

    def _my_balance(self, form: dict[str, str]) -> dict[str, Any]:
        return {"status": "OK", "status_code": 100, "balance": round(self.balance, 2)}
