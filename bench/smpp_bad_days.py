"""Issue 14's three drills: an SMSC on a bad day, against the daemon's real SMPP route.

    .venv/bin/python bench/smpp_bad_days.py                 # the full drills of issue 14
    .venv/bin/python bench/smpp_bad_days.py --quick         # scaled down (CI-sized, ~15 s)
    .venv/bin/python bench/smpp_bad_days.py --only unbinds

What runs is what the daemon runs for an SMPP route (store, queue, flow policy, the
sans-I/O session over asyncio, default reconnect settings unless a flag says
otherwise) against ``sims/smpp.py`` on loopback in the same process:

* queue-full: one ESME_RMSGQFUL every ``--every`` submits, the SMSC blocked for
  ``--blocked`` seconds each time, ``-n`` parts at a ``--cap`` segments/s route.
  "Possible" is the time the cap and the blocked periods leave: n / cap + bursts x
  blocked; the issue asks for >= 70 % of that throughput (it was ~18 %).
* unbinds: ``--unbinds`` SMSC-initiated unbinds in a row, each 2 s after the rebind;
  the time from each unbind to the next bind (the issue asks < 2 s every time).
* stale: the SMSC answers every bind ESME_RALYBND for ``--stale`` seconds (a session
  it still holds after our crash) while messages wait; bind attempts made in that
  time, submits on an unbound socket (must be 0), and the time to deliver after it.

Each drill is repeated ``--repeat`` times; the median is printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from smppd.config import SmppRouteConfig  # noqa: E402
from smppd.routes.smpp import SmppRoute  # noqa: E402
from smppd.smpp.segments import route_encoding  # noqa: E402
from smppd.sims.smpp import SimulatorConfig, SmscSimulator  # noqa: E402
from smppd.sims.smpp_policy import QueueFullBursts, SubmitPolicy  # noqa: E402
from smppd.model import NewMessage, OpenMessage  # noqa: E402
from smppd.store import Store  # noqa: E402

FINAL = {"delivered", "undelivered", "expired", "rejected", "failed"}


class Drill:
    """A store, a simulated SMSC and the real route, on loopback, in a temp directory."""

    def __init__(self, tmp: Path, sim: dict[str, Any], route: dict[str, Any],
                 policy: SubmitPolicy | None = None) -> None:
        self.tmp = tmp
        self.smsc = SmscSimulator(SimulatorConfig(receipt_delay=0.0, **sim), policy=policy)
        self.route_kw = route
        self.ids: list[int] = []

    async def __aenter__(self) -> "Drill":
        await self.smsc.start()
        self.store = Store(str(self.tmp / "bench.db"))
        await self.store.open()
        cfg = SmppRouteConfig(name="bench", host="127.0.0.1", port=self.smsc.port, system_id="smppd",
                              password="secret", **self.route_kw)
        self.route = SmppRoute(cfg, self.store)
        self.task = asyncio.create_task(self.route.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.route.stop(timeout=2.0)
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.smsc.stop()
        await self.store.close()

    async def send(self, n: int) -> None:
        for i in range(n):
            body = f"Your code {1000 + i}"
            enc = route_encoding(self.route.cfg, body)
            r = await self.store.intake(NewMessage(
                member_id="m", b24_id=f"b{len(self.ids)}", code="c", route="bench", sender="Bench",
                phone="+375291234567", text=body, encoding=enc.encoding, segments=enc.segments))
            self.route.enqueue(OpenMessage(r.id, "bench", "Bench", "+375291234567", body,
                                           tuple(range(enc.segments)), r.concat_ref, f"b{len(self.ids)}"))
            self.ids.append(r.id)

    async def wait_final(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            counts = (await self.store.counts())["messages"].get("bench", {})
            done = sum(v for k, v in counts.items() if k in FINAL)
            if done >= len(self.ids):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"not final in {timeout} s: {counts}")
            await asyncio.sleep(0.05)


async def queue_full(args: argparse.Namespace) -> float:
    policy = QueueFullBursts(every=args.every, blocked=args.blocked)
    with tempfile.TemporaryDirectory() as tmp:
        async with Drill(Path(tmp), {}, {"throughput": args.cap, "window": 10}, policy) as d:
            while not d.route.bound:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            await d.send(args.n)
            await d.wait_final(timeout=600)
            elapsed = time.monotonic() - t0
            sent = len(d.smsc.submitted)
    possible = args.n / args.cap + policy.bursts * args.blocked
    share = possible / elapsed
    print(f"queue-full: {args.n} parts in {elapsed:.1f} s = {args.n / elapsed:.1f}/s; "
          f"possible {possible:.1f} s = {args.n / possible:.1f}/s; {100 * share:.0f} % of it; "
          f"{policy.bursts} bursts, {policy.refused} refused, accepted once each: {sent == args.n}")
    return share


async def unbinds(args: argparse.Namespace) -> float:
    gaps = []
    with tempfile.TemporaryDirectory() as tmp:
        async with Drill(Path(tmp), {}, {}) as d:
            conn = d.route.connection
            while conn.binds < 1:
                await asyncio.sleep(0.01)
            for n in range(args.unbinds):
                await asyncio.sleep(args.up)  # up and working before the SMSC ends it
                t0 = time.monotonic()
                await d.smsc.unbind_all()
                while conn.binds < n + 2:
                    await asyncio.sleep(0.005)
                gaps.append(time.monotonic() - t0)
            await d.send(5)
            await d.wait_final(timeout=30)
    print(f"unbinds: {len(gaps)} in a row, rebound after (s): {' '.join(f'{g:.2f}' for g in gaps)}; "
          f"max {max(gaps):.2f} s")
    return max(gaps)


async def stale(args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        async with Drill(Path(tmp), {"stale_session": args.stale}, {}) as d:
            t0 = time.monotonic()
            await d.send(20)
            while time.monotonic() - t0 < args.stale:
                await asyncio.sleep(0.05)
            attempts = d.smsc.bind_attempts
            await d.wait_final(timeout=args.stale + 120)
            after = time.monotonic() - t0 - args.stale
            unbound = d.smsc.submits_unbound
    print(f"stale: ESME_RALYBND for {args.stale:.0f} s: {attempts} bind attempts in it, "
          f"{unbound} submits on an unbound socket, all delivered {after:.1f} s after it ended")
    return float(attempts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("queue-full", "unbinds", "stale"))
    p.add_argument("--quick", action="store_true", help="scaled down: 120 parts, 4 unbinds, 6 s stale")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("-n", type=int, default=489, help="parts in the queue-full drill")
    p.add_argument("--cap", type=float, default=60.0, help="route throughput in the queue-full drill")
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--blocked", type=float, default=0.5)
    p.add_argument("--unbinds", type=int, default=10)
    p.add_argument("--up", type=float, default=2.0, help="seconds each bind is up before the next unbind")
    p.add_argument("--stale", type=float, default=30.0, help="seconds of ESME_RALYBND")
    args = p.parse_args()
    if args.quick:
        args.n, args.unbinds, args.stale, args.up, args.repeat = 120, 4, 6.0, 0.3, 1
    logging.basicConfig(level=logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    drills = {"queue-full": queue_full, "unbinds": unbinds, "stale": stale}
    units = {"queue-full": "of the possible throughput", "unbinds": "s worst rebind", "stale": "bind attempts"}
    for name, drill in drills.items():
        if args.only and name != args.only:
            continue
        results = [asyncio.run(drill(args)) for _ in range(args.repeat)]
        median = statistics.median(results)
        shown = f"{100 * median:.0f} %" if name == "queue-full" else f"{median:.2f}"
        print(f"== {name}: median {shown} {units[name]} over {len(results)} run(s)")


if __name__ == "__main__":
    main()
