"""Statuses delivered per second to a portal limited to 2 requests/s with a burst of 50.

5,000 messages are in flight: stored, accepted by the operator (``sent`` owed to Bitrix24),
and their delivery receipts arrive at ``--receipts`` per second while the real pusher
drains the durable outbox through the real REST client into the simulated portal, whose
leaky bucket answers 503 like the cloud. ``sent`` and ``delivered`` of one message coalesce
in the outbox when both wait. Printed: status updates the portal applied per second over
the whole run and in the steady state after the burst (the physical ceiling is
2 × 50 = 100/s), requests, 503s, batch sizes, regressions.

    python bench/b24_status_push.py [-n 5000] [--rate 2] [--burst 50] [--receipts 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import aiohttp
import structlog

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.bitrix24.pusher import StatusPusher
from smppd.model import PortalRecord
from smppd.bitrix24.rest import RestClient
from smppd.model import Status
from smppd.model import NewMessage
from smppd.store import Store


async def main(n: int, rate: float, burst: int, receipts_per_s: float) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings only
    portal = SimulatedPortal(rate=rate, burst=burst)
    await portal.start()
    tmp = tempfile.mkdtemp(prefix="bench-push")
    store = Store(f"{tmp}/b.db")
    await store.open()
    a = portal.install_auth()
    async with aiohttp.ClientSession() as http:
        client = RestClient(http, PortalRecord(**a), rate=rate, burst=burst)
        pusher = StatusPusher(store, client)
        batch_sizes: list[int] = []
        push = pusher.push

        async def counted(items):  # type: ignore[no-untyped-def]
            batch_sizes.append(len(items))
            await push(items)

        pusher.push = counted  # type: ignore[method-assign]

        ids = []
        for i in range(n):
            b24_id, _ = portal.create_message("by_life", "+375291234567", f"m{i}")
            r = await store.intake(NewMessage(portal.member_id, b24_id, "by_life", "life", "Shop",
                                              "+375291234567", f"m{i}", "gsm7", 1))
            ids.append((b24_id, r.id))
        await asyncio.gather(*(store.segment_accepted(mid, 0, f"P{i}") for i, (_, mid) in enumerate(ids)))
        start = time.time()
        task = asyncio.create_task(pusher.run())

        async def receipts() -> None:
            interval = 1.0 / receipts_per_s
            t0 = time.monotonic()
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
                await store.apply_receipt("life", f"P{i}", Status.DELIVERED, "DELIVRD")

        await receipts()
        while any(portal.messages[b].status != "delivered" for b, _ in ids):
            await asyncio.sleep(0.05)
        pusher.stop()
        await task
    applied = sorted(t for b, _ in ids for t, _ in portal.messages[b].history[1:])
    end = applied[-1]
    total = len(applied) + portal.updates_noop
    steady_from = min(burst * 50, len(applied) - 1)
    steady = (len(applied) - steady_from) / (end - applied[steady_from])
    regressions = sum(len(portal.messages[b].regressions()) for b, _ in ids)
    print(f"portal limit        {rate:g} req/s, burst {burst}; {n} messages in flight, receipts at {receipts_per_s:g}/s")
    print(f"status updates      {total} applied at the portal ({portal.updates_noop} no-ops) for {n} messages "
          f"({total / n:.2f} per message: sent+delivered coalesced when both waited)")
    print(f"requests            {portal.requests} ({portal.rejected_rate_limited} answered 503), "
          f"batch size median {statistics.median(batch_sizes):g}, max {max(batch_sizes)}")
    print(f"overall             {len(applied) / (end - start):.1f} statuses/s over {end - start:.1f} s (burst included)")
    print(f"steady state        {steady:.1f} statuses/s after the burst (ceiling {rate * 50:g}/s, "
          f"{steady / (rate * 50):.1%} of it)")
    print(f"regressions         {regressions}")
    await store.close()
    await portal.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--messages", type=int, default=5000)
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--receipts", type=float, default=200.0, help="delivery receipts per second")
    a = p.parse_args()
    asyncio.run(main(a.messages, a.rate, a.burst, a.receipts))
