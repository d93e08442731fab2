"""Drill: SMSC.ru on a bad day (issue 14 item 9). Lost answers while status.php fails.

    .venv/bin/python bench/smsc_faults.py [-n 25] [--runs 5] [--drops 3] [--status-down 2.5]

Each run sends ``n`` messages (five per request) through a real SmscRoute to the
simulator, which takes the first ``--drops`` requests and cuts the connection
before answering, keeps status.php down for ``--status-down`` seconds and calls
an identical send within ``--window`` seconds a duplicate (error 9), as SMSC does.
Prints, per run and as medians: SMS that went out twice (must be 0), and the
seconds until every message was accepted (bounded by the status.php outage).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smppd import text  # noqa: E402
from smppd.config import SmscRouteConfig  # noqa: E402
from smppd.model import FINAL, Status  # noqa: E402
from smppd.routes.smsc import SmscRoute  # noqa: E402
from smppd.sims.smsc import SmscSimulator  # noqa: E402
from smppd.model import NewMessage, OpenMessage  # noqa: E402
from smppd.store import Store  # noqa: E402


async def run_once(n: int, drops: int, status_down: float, window: float, tmp: Path) -> tuple[int, float]:
    sim = SmscSimulator(deliver_after=0.2, duplicate_window=window)
    await sim.start()
    store = Store(str(tmp / f"drill-{time.monotonic_ns()}.db"))
    await store.open()
    msgs = []
    for i in range(n):
        body = f"Заказ {i} готов"
        phone = f"+37529{7100000 + i:07d}"
        enc = text.encode(body)
        r = await store.intake(NewMessage("m", f"{i:032x}", "c", "smsc", "DemoShop", phone, body, enc.encoding, 1))
        msgs.append(OpenMessage(r.id, "smsc", "DemoShop", phone, body, (0,)))
    route = SmscRoute(SmscRouteConfig(name="smsc", login=sim.login, password=sim.psw, base_url=sim.base_url + "sys/",
                                      batch_size=5, batch_interval=0.05, retry_min=0.05, retry_max=0.4,
                                      timeout=2.0), store)
    sim.fail_next("drop", "send", times=drops)
    sim.status_down_for(status_down)
    task = asyncio.create_task(route.run())
    t0 = time.perf_counter()
    for m in msgs:
        route.enqueue(m)
    taken = {Status.ACCEPTED, *FINAL}
    while True:
        counts = (await store.counts())["messages"].get("smsc", {})
        if sum(v for k, v in counts.items() if k in taken) == n or time.perf_counter() - t0 > 60:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(window + 0.5)  # past SMSC's duplicate window: a blind resend would show now
    twice = len(sim.sent_twice())
    await route.stop(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()
    await sim.stop()
    return twice, elapsed


async def main_async(args: argparse.Namespace) -> None:
    print(f"{args.n} messages, {args.drops} lost answers, status.php down {args.status_down} s, "
          f"duplicate window {args.window} s; {args.runs} runs")
    twice, times = [], []
    with tempfile.TemporaryDirectory() as d:
        for run in range(args.runs):
            t, s = await run_once(args.n, args.drops, args.status_down, args.window, Path(d))
            twice.append(t)
            times.append(s)
            print(f"  run {run + 1}: sent twice {t:>2}, all accepted after {s:5.2f} s")
    print(f"median: sent twice {statistics.median(twice)}, all accepted after {statistics.median(times):.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=25)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--drops", type=int, default=3)
    p.add_argument("--status-down", type=float, default=2.5)
    p.add_argument("--window", type=float, default=1.0, help="SMSC's duplicate window, shortened from 60 s")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
