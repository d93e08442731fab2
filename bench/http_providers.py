"""Benchmark: HTTP provider routes on loopback, and the cost of reading their answers.

    .venv/bin/python bench/http_providers.py [-n 2000] [--runs 3]

Prints medians: microseconds to parse one provider answer (the sans-I/O part
that runs per request or callback), and messages per second from enqueue to
"accepted" in the store through a real route and a simulated provider, with
SMSC batching (100 numbers per request) against one request per message.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smppd import text  # noqa: E402
from smppd.config import SmscRouteConfig, SmsRuRouteConfig  # noqa: E402
from smppd.model import Status  # noqa: E402
from smppd.routes import smsc, smsru  # noqa: E402
from smppd.routes.smsc import SmscRoute  # noqa: E402
from smppd.routes.smsru import SmsRuRoute  # noqa: E402
from smppd.sims.smsc import SmscSimulator  # noqa: E402
from smppd.sims.smsru import SmsRuSimulator  # noqa: E402
from smppd.model import NewMessage, OpenMessage  # noqa: E402
from smppd.store import Store  # noqa: E402


def micro(fn, repeat: int = 2000) -> float:
    """Median µs per call over 7 rounds."""
    rounds = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        rounds.append((time.perf_counter() - t0) / repeat * 1e6)
    return statistics.median(rounds)


def parse_figures() -> None:
    ru_cfg = SmsRuRouteConfig(name="ru", api_id="k")
    sc_cfg = SmscRouteConfig(name="sc", apikey="k")
    numbers = [f"3752912{i:05d}" for i in range(100)]
    ru_body = {"status": "OK", "status_code": 100, "balance": 1.0,
               "sms": {n: {"status": "OK", "status_code": 100, "sms_id": f"0-{i}"} for i, n in enumerate(numbers)}}
    sc_body = {"id": 5, "cnt": 100, "phones": [{"phone": n, "mccmnc": "25701", "cost": "1", "status": "-1",
                                                 "error": "0"} for n in numbers]}
    records = [f"sms_status\n0-{i}\n103\n1700000000" for i in range(100)]
    form = [(f"data[{i}]", r) for i, r in enumerate(records)]
    form.append(("hash", hashlib.sha256(("k" + "".join(records)).encode()).hexdigest()))
    print("parse (median µs per call)")
    print(f"  SMS.ru sms/send answer, 100 numbers   {micro(lambda: smsru.parse_send(ru_body, numbers, ru_cfg), 500):8.1f}")
    print(f"  SMSC send.php answer, 100 numbers     "
          f"{micro(lambda: smsc.parse_send(sc_body, numbers, 5, sc_cfg), 500):8.1f}")
    print(f"  SMS.ru callback, 100 records + hash   {micro(lambda: smsru.parse_callback(form, 'k'), 500):8.1f}")
    cb = [("id", "5"), ("phone", "375291234567"), ("status", "1"), ("err", "0")]
    print(f"  SMSC callback, 1 status               {micro(lambda: smsc.parse_callback(cb)):8.1f}")


async def route_run(kind: str, n: int, batch: int, tmp: Path) -> tuple[float, int]:
    """Seconds from enqueue of n identical texts to all accepted, and the requests it took."""
    sim = SmsRuSimulator(deliver_after=3600) if kind == "smsru" else SmscSimulator(deliver_after=3600)
    await sim.start()
    store = Store(str(tmp / f"{kind}-{batch}-{time.monotonic_ns()}.db"))
    await store.open()
    body = "Your code 1234"
    enc = text.encode(body)
    msgs = []
    for i in range(n):
        phone = f"+3752{9 if i % 2 else 5}{5000000 + i:07d}"
        r = await store.intake(NewMessage("m", f"{i:032x}", "c", kind, "DemoShop", phone, body, enc.encoding, 1))
        msgs.append(OpenMessage(r.id, kind, "DemoShop", phone, body, (0,)))
    if kind == "smsru":
        route = SmsRuRoute(SmsRuRouteConfig(name=kind, api_id=sim.api_id, base_url=sim.base_url,
                                            batch_size=batch, batch_interval=0.05, concurrency=8), store)
    else:
        route = SmscRoute(SmscRouteConfig(name=kind, login=sim.login, password=sim.psw,
                                          base_url=sim.base_url + "sys/", batch_size=batch, batch_interval=0.05,
                                          concurrency=8), store)
    task = asyncio.create_task(route.run())
    t0 = time.perf_counter()
    for m in msgs:
        route.enqueue(m)
    while True:
        counts = (await store.counts())["messages"].get(kind, {})
        if counts.get(Status.ACCEPTED, 0) == n:
            break
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    requests = route.stats["requests"]
    await route.stop(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()
    await sim.stop()
    return elapsed, requests


async def route_figures(n: int, runs: int) -> None:
    print(f"\nroute throughput, {n} messages with one text, enqueue → accepted in the store (median of {runs})")
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for kind, batch in (("smsc", 100), ("smsc", 1), ("smsru", 100), ("smsru", 1)):
            times, reqs = [], 0
            for _ in range(runs):
                t, reqs = await route_run(kind, n, batch, Path(d))
                times.append(t)
            med = statistics.median(times)
            results[(kind, batch)] = med
            print(f"  {kind:<6} batch {batch:>3}: {n / med:8.0f} msg/s  ({reqs} requests)")
    for kind in ("smsc", "smsru"):
        print(f"  {kind}: batching is {results[(kind, 1)] / results[(kind, 100)]:.1f}× faster than one per request")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    parse_figures()
    asyncio.run(route_figures(args.n, args.runs))


if __name__ == "__main__":
    main()
