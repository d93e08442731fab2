"""Scale: a backlog while the operator is down, a kill -9, the operator back.

    .venv/bin/python bench/scale.py                      # 100,000 messages, cap 500/s
    .venv/bin/python bench/scale.py -n 1000000           # the million
    .venv/bin/python bench/scale.py -n 100000 --drain-all

Same processes as ``bench/e2e.py`` (``smppd run``, ``smppd-shim``, the SMSC simulator,
the Bitrix24 side), but the SMSC is not there at first:

1. intake: N HANDLER posts while the route cannot bind. Printed per tenth of N: the
   intake rate (posts/s answered 200) and the daemon's RSS, so a rate that sags or a
   memory that grows with the backlog shows;
2. ``kill -9`` of the daemon with the N messages queued, then the time until a new
   daemon answers on its socket (it reloads the open messages before it listens);
3. the SMSC comes back: the backlog drains at the route's throughput cap
   (``--cap``, segments/s). Printed: the SMSC's submit_sm rate over ``--drain-seconds``
   (or the whole backlog with ``--drain-all``), and the busiest second is never above the cap.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from bench.e2e import CODE, Gateway, daemon_config, post_load, prepare_posts  # noqa: E402
from bench.procs import Smsc, free_port, proc_stats  # noqa: E402
from smppd.sims.bitrix24 import SimulatedPortal  # noqa: E402


async def run(n: int, concurrency: int, cap: int, drain_seconds: float, drain_all: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="smppd-scale-") as tmp_s:
        tmp = Path(tmp_s)
        portal = SimulatedPortal(rate=None)
        await portal.start()
        smsc_port, shim_port = free_port(), free_port()
        key = secrets.token_urlsafe(24)
        gw = Gateway(tmp, daemon_config(tmp, portal, smsc_port=smsc_port, shim_port=shim_port, key=key,
                                        window=50, reconnect_max=1.0, throughput=cap), shim_port)
        smsc: Smsc | None = None
        try:
            gw.start_daemon()
            await gw.wait_daemon()
            gw.start_shim()
            url = f"http://127.0.0.1:{shim_port}/bitrix24/{CODE}?key={key}"
            print(f"1. intake of {n:,} posts, operator down (route cap {cap}/s, {concurrency} posts in flight)")
            step = max(1, n // 10)
            rss: list[float] = []
            refused = 0
            t_all = time.perf_counter()
            for first in range(0, n, step):
                count = min(step, n - first)
                posts = prepare_posts(portal, count, first=first)
                t0 = time.perf_counter()
                await post_load(url, portal, posts, concurrency)
                dt = time.perf_counter() - t0
                refused += sum(p.status != 200 for p in posts)
                daemon = proc_stats(gw.procs["daemon"].pid)
                rss.append(daemon.rss_mb)
                print(f"   {first + count:>9,} queued  intake {count / dt:7,.0f} posts/s  "
                      f"daemon RSS {daemon.rss_mb:6.1f} MB (peak {daemon.peak_rss_mb:.1f})", flush=True)
                portal.messages.clear()  # the load generator's own memory, not the daemon's
            print(f"   total {n / (time.perf_counter() - t_all):,.0f} posts/s, {refused} refused; "
                  f"daemon RSS first tenth {rss[0]:.1f} MB, last {rss[-1]:.1f} MB, max {max(rss):.1f} MB")

            print(f"2. kill -9 of the daemon with {n:,} queued, then a new start")
            db = tmp / "smppd.db"
            gw.procs["daemon"].send_signal(signal.SIGKILL)
            gw.procs["daemon"].wait()
            size = sum(os.path.getsize(p) for p in tmp.glob("smppd.db*"))
            gw.start_daemon()
            took = await gw.wait_daemon(timeout=600)
            print(f"   ready after {took:.2f} s (database {size / 2**20:.0f} MB at {db.name})", flush=True)

            print(f"3. the operator returns; the backlog drains at the cap ({cap}/s)")
            smsc = Smsc(tmp, record=False, port=smsc_port)
            start_count, start_at = smsc.progress()
            while start_count == 0:  # the first submit_sm: the bind is up
                await asyncio.sleep(0.1)
                start_count, start_at = smsc.progress()
            samples = [(start_count, start_at)]
            until = time.time() + (float("inf") if drain_all else drain_seconds)
            while time.time() < until:
                await asyncio.sleep(1.0)
                samples.append(smsc.progress())
                if samples[-1][0] >= n:
                    break
            (c0, t0_), (c1, t1) = samples[0], samples[-1]
            # per ~1 s between the SMSC's own progress stamps, after the first (the bind's start)
            rates = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(samples[1:], samples[2:]) if b[1] - a[1] >= 0.9]
            daemon = proc_stats(gw.procs["daemon"].pid)
            print(f"   {c1 - c0:,} submit_sm in {t1 - t0_:.1f} s: {(c1 - c0) / (t1 - t0_):,.0f}/s "
                  f"(cap {cap}/s; busiest second {max(rates, default=0):,.0f}/s); "
                  f"daemon RSS {daemon.rss_mb:.1f} MB (peak since restart {daemon.peak_rss_mb:.1f})")
            if c1 < n:
                print(f"   stopped after {drain_seconds:.0f} s with {n - c1:,} still queued (--drain-all waits)")
        finally:
            gw.stop()
            if smsc is not None:
                smsc.stop()
            await portal.stop()
    return 0 if refused == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=100_000, help="messages queued while the operator is down")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--cap", type=int, default=500, help="the route's throughput cap, segments/s (default 500)")
    p.add_argument("--drain-seconds", type=float, default=20.0)
    p.add_argument("--drain-all", action="store_true", help="wait for the whole backlog to drain")
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return asyncio.run(run(args.n, args.concurrency, args.cap, args.drain_seconds, args.drain_all))


if __name__ == "__main__":
    sys.exit(main())
