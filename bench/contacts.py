"""``smppd contacts`` scan and normalize --apply against a portal at the real REST limit,
while the status pusher keeps delivering a steady stream of statuses to the same portal.

A simulated portal (2 requests/s, burst 50, 503 ``QUERY_LIMIT_EXCEEDED`` beyond) holds
``--contacts`` contacts (plus a tenth as many leads and companies) whose numbers are stored
the ways CRMs hold them (``8029…``, ``375 44 …``, ``29 1…``, ``+7 …``, typos). The real job
(bitrix24/contacts/) runs through the real REST client at bulk priority, the real pusher
drains the real store's outbox through the same client; receipts arrive at ``--statuses``/s.
Printed per phase: time, entities per minute, requests, against the ceiling the budget
allows (2 × 50 = 100 entities a second when each request carries 50 entities), and the
pusher's applied statuses per second and its worst backlog during the phase.

    python bench/contacts.py [--contacts 50000] [--statuses 20] [--rate 2] [--burst 50]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import aiohttp
import structlog

from smppd.bitrix24.contacts import ContactsJob
from smppd.sims.bitrix24 import SimulatedPortal
from smppd.bitrix24.pusher import StatusPusher
from smppd.model import PortalRecord
from smppd.bitrix24.rest import RestClient
from smppd.model import Status
from smppd.model import NewMessage
from smppd.store import Store

class StatusFeed:
    """Messages the operator accepted; a receipt for one of them every 1/rate seconds."""

    def __init__(self, portal: SimulatedPortal, store: Store, rate: float) -> None:
        self.portal, self.store, self.rate = portal, store, rate
        self.receipts = 0
        self._ids: list[str] = []

    async def run(self) -> None:
        t0 = time.monotonic()
        i = 0
        while True:
            await asyncio.sleep(max(0.0, t0 + i / self.rate - time.monotonic()))
            b24_id, _ = self.portal.create_message("by_life", "+375291234567", f"m{i}")
            r = await self.store.intake(NewMessage(self.portal.member_id, b24_id, "by_life", "life", "Shop",
                                                   "+375291234567", f"m{i}", "gsm7", 1))
            await self.store.segment_accepted(r.id, 0, f"P{i}")
            await self.store.apply_receipt("life", f"P{i}", Status.DELIVERED, "DELIVRD")
            self._ids.append(b24_id)
            self.receipts += 1
            i += 1

    def delivered(self) -> int:
        return sum(1 for b in self._ids if self.portal.messages[b].status == "delivered")


async def phase(name: str, job: ContactsJob, feed: StatusFeed, rate: float) -> None:
    t0 = time.monotonic()
    delivered0, receipts0 = feed.delivered(), feed.receipts
    backlog = 0
    task = asyncio.create_task(job.run())
    while not task.done():
        await asyncio.sleep(0.5)
        backlog = max(backlog, feed.receipts - feed.delivered())
    report = await task
    elapsed = time.monotonic() - t0
    entities = sum(report.entities.values())
    pushed = feed.delivered() - delivered0
    print(f"{name:<20}{entities} entities in {elapsed:.1f} s = {entities / elapsed * 60:,.0f}/min; "
          f"{job.progress.requests} requests; ceiling at 50 entities a request: {rate * 50 * 60:,.0f}/min"
          + (f"; {report.updated} updated, {len(report.failed)} failed" if job.apply else ""))
    print(f"{'':<20}pusher: {pushed / elapsed:.1f} statuses/s applied (offered {(feed.receipts - receipts0) / elapsed:.1f}/s), "
          f"worst backlog {backlog}; job waited out {job.waits} refusals")


async def main(contacts: int, statuses: float, rate: float, burst: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    portal = SimulatedPortal(rate=rate, burst=burst, scope="crm,messageservice")
    t0 = time.monotonic()
    portal.seed_crm(contacts)
    print(f"base                {contacts} contacts, {contacts // 10} leads, {contacts // 10} companies "
          f"(seeded in {time.monotonic() - t0:.1f} s); portal {rate:g} req/s, burst {burst}; statuses at {statuses:g}/s")
    await portal.start()
    tmp = tempfile.mkdtemp(prefix="bench-contacts")
    store = Store(f"{tmp}/b.db")
    await store.open()
    a = portal.install_auth()
    async with aiohttp.ClientSession() as http:
        client = RestClient(http, PortalRecord(**a), rate=rate, burst=burst)
        pusher = StatusPusher(store, client)
        feed = StatusFeed(portal, store, statuses)
        tasks = [asyncio.create_task(pusher.run()), asyncio.create_task(feed.run())]
        await asyncio.sleep(3)  # the pusher in its steady state first
        await phase("scan", ContactsJob(client), feed, rate)
        await phase("normalize --apply", ContactsJob(client, normalize=True, apply=True), feed, rate)
        await phase("normalize again", ContactsJob(client, normalize=True, apply=True), feed, rate)
        pusher.stop()
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(f"portal              {portal.requests} requests, {portal.rejected_rate_limited} answered 503; "
          f"regressions {sum(len(m.regressions()) for m in portal.messages.values())}")
    await store.close()
    await portal.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contacts", type=int, default=50_000)
    p.add_argument("--statuses", type=float, default=20.0, help="delivery receipts per second during the run")
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--burst", type=int, default=50)
    a = p.parse_args()
    asyncio.run(main(a.contacts, a.statuses, a.rate, a.burst))
