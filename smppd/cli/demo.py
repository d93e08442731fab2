"""``smppd demo``: the whole path on loopback, in one process.

A simulated Bitrix24 portal posts real HANDLER forms to the real shim, which
hands them over the real Unix socket to the real daemon, which sends them over
SMPP to two simulated operators (life:) and MTS), gets their receipts and
pushes every status back to the portal's REST API at the portal's rate limit.
At the end every posted message must be accounted for in the portal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import aiohttp
from aiohttp import web

from ..ops import logs
from .. import text
from ..model import BITRIX24_STATUS, FINAL
from ..sims.bitrix24 import SimulatedPortal
from ..config import (
    Config,
    DaemonConfig,
    PortalConfig,
    SenderConfig,
    ShimConfig,
    SmppRouteConfig,
    SmscRouteConfig,
    SmsRuRouteConfig,
)
from ..daemon import Daemon
from ..rpc import RpcClient
from ..sims.smsc import SmscSimulator as SmscRuSimulator
from ..sims.smsru import SmsRuSimulator
from ..sims.smpp import SimulatorConfig, SmscSimulator

FINAL_B24 = frozenset(BITRIX24_STATUS[s] for s in FINAL)  # Bitrix24's words for our finals
OUTCOMES = {"DELIVRD": 0.85, "UNDELIV": 0.07, "EXPIRED": 0.05, "REJECTD": 0.03}

# Every number format of reference/providers.md §5, plus Russian and invalid ones.
NUMBER_FORMATS = (
    "+37529{n7}", "80{op}{n7}", "375 {op} {a}-{b}-{c}", "{op} {n7}", "+375 ({op}) {a}-{b}-{c}",
    "8 (0{op}) {a}-{b}-{c}", "00375{op}{n7}", "810375{op}{n7}",
)
INVALID_NUMBERS = ("+375171234567", "12345", "not a phone", "+375 (29) 12")
TEXTS = (
    "Ваш заказ №{n} готов к выдаче. Ждём вас с 9:00 до 21:00.",
    "Order {n} is ready for pickup. See you between 9:00 and 21:00!",
    "Code: {n}",
    "Здравствуйте! Напоминаем о записи на завтра. Если планы изменились, пожалуйста, "
    "сообщите нам заранее по телефону или ответьте на это сообщение. Заказ {n}. "
    "Спасибо, что выбираете нас!",
    "Dear customer, your invoice {n} is due in 3 days. Pay online with the link in your "
    "account or at any office. Questions? Call us any day from 8:00 to 22:00 [support] "
    "and mention the invoice number {n}. Thank you for staying with us!",
    "Скидка 15% по промокоду SALE{n} до конца недели 🎉",
)


@dataclass
class Posted:
    b24_id: str
    code: str
    number: str
    valid: bool
    segments: int
    posted_at: float
    http_status: int = 0
    body: str = ""


@dataclass
class Rig:
    tmp: Path
    portal: SimulatedPortal
    smscs: dict[str, SmscSimulator]
    config: Config
    daemon: Daemon | None = None
    shim_runner: web.AppRunner | None = None
    shim_url: str = ""
    rpc: RpcClient | None = None
    posted: list[Posted] = field(default_factory=list)
    http_sims: dict[str, SmsRuSimulator | SmscRuSimulator] = field(default_factory=dict)


def make_config(tmp: Path, portal: SimulatedPortal, smscs: dict[str, SmscSimulator], *,
                handler_key: str, http_sims: dict[str, SmsRuSimulator | SmscRuSimulator] | None = None,
                database: str | None = None) -> Config:
    """The embedded default: one portal, two operators, one CODE per operator
    (plus SMS.ru and SMSC.ru routes and CODEs when ``http_sims`` are given); the store is
    ``database`` (a PostgreSQL URL for the tests and benchmarks on PostgreSQL) or a SQLite
    file in ``tmp``."""
    routes: dict[str, object] = {
        name: SmppRouteConfig(
            name=name, host="127.0.0.1", port=smsc.port, system_id="smppd", password="secret",
            window=20, reconnect_min=0.2, reconnect_max=2.0,
            receipt_id_base="as-is",
        )
        for name, smsc in smscs.items()
    }
    senders = {
        "by_life": SenderConfig(code="by_life", route="life", sender_id="DemoShop", name="SMS via life:)"),
        "by_mts": SenderConfig(code="by_mts", route="mts", sender_id="DemoShop", name="SMS via MTS"),
    }
    for name, sim in (http_sims or {}).items():
        if isinstance(sim, SmsRuSimulator):
            routes[name] = SmsRuRouteConfig(name=name, api_id=sim.api_id, base_url=sim.base_url, retry_min=0.2,
                                            retry_max=5.0, poll_after=5.0, poll_interval=1.0,
                                            callback_key=secrets.token_urlsafe(24))
            senders["by_smsru"] = SenderConfig(code="by_smsru", route=name, sender_id="DemoShop",
                                               name="SMS via SMS.ru")
        else:
            # An SMSC account (or sub-client) per route: SMSC calls one URL per account.
            viber = name.endswith("_viber")  # Viber first, SMS when Viber cannot deliver
            routes[name] = SmscRouteConfig(name=name, login=sim.login, password=sim.psw,
                                           base_url=sim.base_url + "sys/", batch_interval=0.2, retry_min=0.2,
                                           retry_max=5.0, poll_after=5.0, poll_interval=1.0,
                                           viber=viber, viber_fallback=2.0, callback_key=secrets.token_urlsafe(24))
            code = "by_viber" if viber else "by_smsc"
            senders[code] = SenderConfig(code=code, route=name, sender_id="DemoShop",
                                         name="Viber, then SMS, via SMSC.ru" if viber else "SMS via SMSC.ru")
    portal_cfg = PortalConfig(
        member_id=portal.member_id, domain=portal.domain, client_endpoint=portal.client_endpoint,
        server_endpoint=portal.server_endpoint, client_id=portal.client_id,
        client_secret=portal.client_secret, application_token=portal.application_token,
        access_token=portal.access_token, refresh_token=portal.refresh_token,
    )
    return Config(
        daemon=DaemonConfig(socket_path=str(tmp / "smppd.sock"), database=database or str(tmp / "smppd.db"),
                            metrics=("127.0.0.1", 0)),
        shim=ShimConfig(host="127.0.0.1", port=0, handler_key=handler_key, spool_dir=str(tmp / "shim-spool")),
        portals=MappingProxyType({portal.member_id: portal_cfg}),
        routes=MappingProxyType(routes),  # type: ignore[arg-type]
        senders=MappingProxyType(senders),
    )


async def start_rig(tmp: Path, *, seed: int = 7, portal_rate: float | None = 2.0, http: bool = False,
                    database: str | None = None) -> Rig:
    portal = SimulatedPortal(rate=portal_rate)
    await portal.start()
    smscs = {
        "life": SmscSimulator(SimulatorConfig(system_id="LIFE", accounts={"smppd": "secret"},
                                              outcomes=OUTCOMES, id_format="hex", seed=seed)),
        "mts": SmscSimulator(SimulatorConfig(system_id="MTS", accounts={"smppd": "secret"},
                                             outcomes=OUTCOMES, id_format="dec", seed=seed + 1)),
    }
    for smsc in smscs.values():
        await smsc.start()
    http_sims: dict[str, SmsRuSimulator | SmscRuSimulator] = {}
    if http:
        outcomes_ru = {103: 0.85, 104: 0.05, 107: 0.05, 150: 0.05}
        http_sims = {"smsru": SmsRuSimulator(seed=seed + 2, outcomes=outcomes_ru, deliver_after=0.2),
                     "smscru": SmscRuSimulator(seed=seed + 3, deliver_after=0.2),
                     "smscru_viber": SmscRuSimulator(seed=seed + 4, deliver_after=0.2, viber_share=0.6)}
        for sim in http_sims.values():
            await sim.start()
    key = secrets.token_urlsafe(24)
    rig = Rig(tmp, portal, smscs, make_config(tmp, portal, smscs, handler_key=key, http_sims=http_sims, database=database),
              http_sims=http_sims)
    await start_daemon(rig)
    await start_shim(rig)
    for name, sim in http_sims.items():  # the providers call back through the real shim, with the route's key
        sim.callback_url = f"{rig.shim_url}/dlr/{name}?key={rig.config.routes[name].callback_key}"  # type: ignore[union-attr]
    return rig


async def start_daemon(rig: Rig) -> None:
    rig.daemon = Daemon(rig.config)
    await rig.daemon.start()


async def start_shim(rig: Rig) -> None:
    from shim.app import make_app

    from shim.auth import DoorConfig
    from shim.dlr import dlr_keys
    from shim.spool import Spool

    rig.rpc = RpcClient(rig.config.daemon.socket_path)
    spool = Spool(str(rig.tmp / "shim-spool"), max_bytes=rig.config.shim.spool_max_bytes)
    app = make_app(handler_key=rig.config.shim.handler_key, codes=frozenset(rig.config.senders), rpc=rig.rpc,
                   doors=DoorConfig.from_config(rig.config, dlr_keys(rig.config)), spool=spool,
                   spool_after=rig.config.shim.spool_after)
    rig.shim_runner = web.AppRunner(app, access_log=None)
    await rig.shim_runner.setup()
    site = web.TCPSite(rig.shim_runner, "127.0.0.1", 0)
    await site.start()
    port = int(rig.shim_runner.addresses[-1][1])  # documented: the sockets the runner listens on
    rig.shim_url = f"http://127.0.0.1:{port}"


def handler_url(rig: Rig, code: str) -> str:
    return f"{rig.shim_url}/bitrix24/{code}?key={rig.config.shim.handler_key}"


async def stop_rig(rig: Rig) -> None:
    if rig.shim_runner is not None:
        await rig.shim_runner.cleanup()
    if rig.rpc is not None:
        await rig.rpc.close()
    if rig.daemon is not None:
        await rig.daemon.stop()
    for smsc in rig.smscs.values():
        await smsc.stop()
    for sim in rig.http_sims.values():
        await sim.stop()
    await rig.portal.stop()


def demo_messages(n: int, rng: random.Random,
                  codes: tuple[str, ...] = ("by_life", "by_mts")) -> list[tuple[str, str, str, bool]]:
    """(code, number, text, valid) for n messages: every format, a few invalid."""
    out = []
    for i in range(n):
        code = codes[i % len(codes)]
        if i % 37 == 5:
            number, valid = INVALID_NUMBERS[(i // 37) % len(INVALID_NUMBERS)], False
        else:
            # phonenumbers knows the allocated ranges: 25[5-79], 29[1-9], 33, 44.
            n7 = rng.choice("5679") + f"{rng.randrange(10**6):06d}"
            fmt = NUMBER_FORMATS[i % len(NUMBER_FORMATS)]
            number = fmt.format(op=rng.choice(("25", "29", "33", "44")), n7=n7, a=n7[:3], b=n7[3:5], c=n7[5:])
            valid = True
        out.append((code, number, TEXTS[i % len(TEXTS)].format(n=1000 + i), valid))
    return out


async def post_all(rig: Rig, messages: list[tuple[str, str, str, bool]], concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as http:

        async def one(code: str, number: str, body: str, valid: bool) -> None:
            async with sem:
                b24_id, form = rig.portal.create_message(code, number, body)
                p = Posted(b24_id, code, number, valid, text.count_segments(body), time.time())
                rig.posted.append(p)
                p.http_status, p.body = await rig.portal.post_to_handler(http, handler_url(rig, code), form)

        await asyncio.gather(*(one(*m) for m in messages))


def final_status(rig: Rig, b24_id: str) -> str | None:
    m = rig.portal.messages.get(b24_id)
    return m.status if m is not None and m.status in FINAL_B24 else None


def final_time(rig: Rig, b24_id: str) -> float | None:
    m = rig.portal.messages.get(b24_id)
    if m is None:
        return None
    for at, status in m.history:
        if status in FINAL_B24:
            return at
    return None


async def wait_final(rig: Rig, timeout: float, progress: bool) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        done = sum(1 for p in rig.posted if final_status(rig, p.b24_id))
        line = f"  posted {len(rig.posted)}  final in Bitrix24 {done}"
        if progress and line != last:
            print(line, flush=True)
            last = line
        if rig.posted and done == len(rig.posted):
            return
        await asyncio.sleep(0.5)


def report(rig: Rig, started: float) -> bool:
    """Print the table; True when every message is accounted for."""
    routes = {"by_life": "life:)", "by_mts": "MTS", "by_smsru": "SMS.ru", "by_smsc": "SMSC.ru",
              "by_viber": "Viber→SMS"}
    table: dict[tuple[str, str], int] = {}
    lost, not_ok, latencies = [], [], []
    for p in rig.posted:
        if p.http_status != 200:
            not_ok.append(p)
            continue
        status = final_status(rig, p.b24_id)
        if status is None:
            lost.append(p)
            continue
        key = (routes[p.code], status)
        table[key] = table.get(key, 0) + 1
        at = final_time(rig, p.b24_id)
        if at is not None:
            latencies.append(at - p.posted_at)
    last = max((final_time(rig, p.b24_id) or 0.0) for p in rig.posted) if rig.posted else started
    print()
    print(f"{'route':<11}{'status':<14}{'messages':>9}")
    for (op, status), count in sorted(table.items()):
        print(f"{op:<11}{status:<14}{count:>9}")
    channels = _channels(rig)
    if channels:
        print("Viber cascade: " + ", ".join(f"{CHANNEL_WORDS.get(c, c)} {n}" for c, n in sorted(channels.items())))
    total = len(rig.posted)
    segments = sum(p.segments for p in rig.posted if p.valid)
    elapsed = max(last - started, 1e-6)
    print()
    print(f"messages posted      {total} ({segments} SMS segments, "
          f"{sum(1 for p in rig.posted if not p.valid)} with invalid numbers)")
    print(f"accepted by the shim {total - len(not_ok)}")
    print(f"final in Bitrix24    {total - len(not_ok) - len(lost)}")
    print(f"throughput           {total / elapsed:.0f} msg/s from first post to last final status")
    if latencies:
        q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
        print(f"post → final status  p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {q[98] * 1000:.0f} ms")
    print(f"lost                 {len(lost)}")
    for p in not_ok[:5]:
        print(f"  shim answered {p.http_status} for {p.b24_id}: {p.body[:120]}")
    wrong = [p for p in rig.posted if not p.valid and final_status(rig, p.b24_id) not in (None, "failed")]
    for p in wrong:
        print(f"  invalid number {p.number!r} ended as {final_status(rig, p.b24_id)}")
    return not lost and not not_ok and not wrong


CHANNEL_WORDS = {"viber": "went by Viber", "viber_fallback": "fell back to SMS"}


def _channels(rig: Rig) -> dict[str, int]:
    """How the Viber route's messages went out, from the store's channel column."""
    from ..store import reader

    db = reader.connect_readonly(rig.config.daemon.database)
    try:
        return reader.channels(db)
    finally:
        db.close()


def run_demo(args: argparse.Namespace) -> bool:
    # Without --verbose the screen is the progress and the table: only an error (something
    # really broken) gets a log line among them.
    logs.configure(json=False, level=logging.INFO if args.verbose else logging.ERROR)
    if getattr(args, "contacts", 0):
        return asyncio.run(_contacts_demo(args.contacts, args.seed))
    return asyncio.run(_demo(args.messages, args.concurrency, args.seed, args.timeout))


async def _contacts_demo(n: int, seed: int) -> bool:
    """``smppd demo --contacts N``: a generated CRM through ``smppd contacts`` (issue 16):
    scan, normalize --apply, and a second normalize that finds nothing left to change, at
    the portal's real limit (2 requests/s, burst 50) shared with the status pusher."""
    import io

    from .contacts import drive

    with tempfile.TemporaryDirectory(prefix="smppd-demo-") as tmp:
        rig = await start_rig(Path(tmp), seed=seed)
        rig.portal.scope = "crm,messageservice"
        rig.portal.seed_crm(n, seed)
        crm = {e: len(rows) for e, rows in rig.portal.crm.items()}
        print(f"smppd demo --contacts: simulated Bitrix24 portal at {rig.portal.base_url} (2 requests/s, burst 50) "
              f"with {', '.join(f'{v} {k} rows' for k, v in crm.items())}; real daemon and REST client")
        ok = True
        try:
            for title, action, flags in (("smppd contacts scan", "scan", ()),
                                         ("smppd contacts normalize --apply", "normalize", ("apply",)),
                                         ("smppd contacts normalize (again: nothing left to change)", "normalize", ())):
                print(f"\n$ {title}")
                args = argparse.Namespace(json=False, csv=False, apply="apply" in flags)
                params = {"action": action, "apply": args.apply, "entities": ["contact", "lead", "company"]}
                code = await drive(rig.config.daemon.socket_path, params, args, sys.stdout, io.StringIO())
                ok = ok and code == 0
        finally:
            await stop_rig(rig)
        return ok


async def _demo(n: int, concurrency: int, seed: int, timeout: float) -> bool:
    with tempfile.TemporaryDirectory(prefix="smppd-demo-") as tmp:
        print("smppd demo: simulated Bitrix24 portal, operators (life:), MTS over SMPP) and HTTP providers "
              "(SMS.ru, SMSC.ru), real shim and daemon")
        rig = await start_rig(Path(tmp), seed=seed, http=True)
        try:
            print(f"  shim {rig.shim_url}, portal {rig.portal.base_url}, "
                  f"SMSCs life:) :{rig.smscs['life'].port} MTS :{rig.smscs['mts'].port}, "
                  f"SMS.ru :{rig.http_sims['smsru'].port} SMSC.ru :{rig.http_sims['smscru'].port} "
                  f"and :{rig.http_sims['smscru_viber'].port} (Viber)")
            started = time.time()
            codes = ("by_life", "by_mts", "by_smsru", "by_smsc", "by_viber")
            await post_all(rig, demo_messages(n, random.Random(seed), codes), concurrency)
            await wait_final(rig, timeout, progress=True)
            return report(rig, started)
        finally:
            await stop_rig(rig)
