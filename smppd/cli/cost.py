"""``smppd cost``: what a text would cost through a CODE's route, without sending it.

SMS.ru answers per number (``sms/cost``); SMSC.ru gives the total
(``send.php`` with ``cost=1``); an SMPP operator has no price API, so only
the segment count (our own splitter) is shown.  Talks to the provider
directly with the config's credentials: the daemon need not run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field

from .. import phone, text
from ..config import Config, SmscRouteConfig, SmsRuRouteConfig
from ..http_client import Ambiguous, Unavailable
from ..routes.answers import ProviderError
from ..routes.provider_client import ProviderClient


@dataclass
class Quote:
    segments: int  # per recipient, by our splitter
    rows: list[tuple[str, int | None, float | None, str]] = field(default_factory=list)  # number, parts, cost, note
    total_cost: float | None = None
    total_sms: int | None = None


async def quote(cfg: Config, code: str, body: str, numbers: list[str]) -> Quote:
    sender = cfg.senders[code]
    route = cfg.routes[sender.route]
    q = Quote(text.count_segments(body))
    valid: list[str] = []
    for raw in numbers:
        try:
            valid.append(phone.normalize(raw))
        except phone.InvalidNumber as e:
            q.rows.append((raw, None, None, f"invalid number: {e.reason}"))
    if not valid:
        return q
    if isinstance(route, SmsRuRouteConfig):
        from ..routes import smsru

        client = ProviderClient(route)  # no route, no store: nothing is sent
        try:
            c = await smsru.quote(client, route, [phone.digits(n) for n in valid], body, sender.sender_id)
        finally:
            await client.close()
        for n in valid:
            code_, cost, parts = c.per_number.get(phone.digits(n), (None, None, None))
            q.rows.append((n, parts, cost, "" if code_ == 100 else f"SMS.ru {code_}"))
        q.total_cost, q.total_sms = c.total_cost, c.total_sms
    elif isinstance(route, SmscRouteConfig):
        from ..routes.smsc import auth

        client = ProviderClient(route)
        try:
            answer = await client.post(client.url("send.php"), {
                **auth(route), "phones": ",".join(valid), "mes": body, "sender": sender.sender_id,
                "cost": "1", "op": "1", "fmt": "3", "charset": "utf-8"})
        finally:
            await client.close()
        if isinstance(answer, dict) and "error_code" in answer:
            raise ProviderError(int(answer["error_code"]), str(answer.get("error", "")))
        # op=1: a per-number array whose ``error`` names what SMSC.ru would refuse (§2.3)
        refused = {str(p.get("phone")): str(p.get("error")) for p in answer.get("phones") or ()
                   if isinstance(p, dict) and str(p.get("error", "0")) != "0"}
        for n in valid:
            error = refused.get(phone.digits(n))
            q.rows.append((n, None if error else q.segments, None, f"SMSC.ru error {error}" if error else ""))
        q.total_cost = float(answer.get("cost", 0))
        q.total_sms = int(answer.get("cnt", 0))
    else:
        for n in valid:
            q.rows.append((n, q.segments, None, "SMPP: no price API"))
        q.total_sms = q.segments * len(valid)
    return q


def run_cost(cfg: Config, args: argparse.Namespace) -> int:
    if args.code not in cfg.senders:
        print(f"smppd: no sender with code {args.code!r}", file=sys.stderr)
        return 2
    try:
        q = asyncio.run(quote(cfg, args.code, args.text, args.numbers))
    except ProviderError as e:
        print(f"smppd: the provider refused: {e}", file=sys.stderr)
        return 1
    except (Unavailable, Ambiguous) as e:
        print(f"smppd: provider unreachable: {e}", file=sys.stderr)
        return 3
    print(f"{'number':<18}{'parts':>6}{'cost':>10}  note")
    for number, parts, cost, note in q.rows:
        print(f"{number:<18}{'' if parts is None else parts:>6}{'' if cost is None else f'{cost:.2f}':>10}  {note}")
    total = "" if q.total_cost is None else f"{q.total_cost:.2f}"
    print(f"{'total':<18}{'' if q.total_sms is None else q.total_sms:>6}{total:>10}")
    return 0
