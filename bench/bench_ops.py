"""What observability costs: metric calls on the hot path, the journal, a scrape.

    .venv/bin/python bench/bench_ops.py [--messages 20000]

Prints medians of several runs.  The budget (DESIGN.md) is ~500 µs of CPU per
message end to end; the figures here should be a small fraction of it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import structlog
from prometheus_client import REGISTRY, generate_latest

from smppd.ops import logs
from smppd.ops import metrics
from smppd.ops.journal import StoreWatcher
from smppd.model import Status
from smppd.model import NewMessage
from smppd.store import Store


def per_call(fn, n: int = 200_000, runs: int = 5) -> float:
    """Median µs per call of fn(i)."""
    results = []
    for _ in range(runs):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        results.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(results)


def hot_path() -> None:
    def segment(i: int) -> None:  # what one segment costs the route: sent + answered
        metrics.submit_sent("life", (i, 0))
        metrics.submit_answered("life", (i, 0))

    def message(i: int) -> None:  # what one message costs intake
        metrics.message_received("life", "queued", 1)

    def shim(i: int) -> None:
        metrics.shim_answered(200, "stored", 0.002)

    print(f"per segment (submit_sent + submit_answered)  {per_call(segment):6.2f} µs")
    print(f"per message at intake (received counters)    {per_call(message):6.2f} µs")
    print(f"per HANDLER post in the shim                 {per_call(shim):6.2f} µs")


async def journal(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.db")
        store = Store(path)
        await store.open()
        watcher = StoreWatcher(path, lambda: ["portal"])
        await watcher.tail()  # position at the (empty) end
        ids = await asyncio.gather(*(store.intake(NewMessage(
            member_id="portal", b24_id=f"{i:032x}", code="c", route="life" if i % 2 else "mts", sender="Shop",
            phone="+375291234567", text="x", encoding="gsm", segments=1)) for i in range(n)))
        await asyncio.gather(*(store.segment_accepted(r.id, 0, f"p{r.id}") for r in ids))
        await asyncio.gather(*(store.apply_receipt("life" if i % 2 else "mts", f"p{r.id}", Status.DELIVERED, "DELIVRD")
                               for i, r in enumerate(ids)))
        # JSON lines as under systemd, returned instead of written: our work, not the terminal's.
        logs.configure(json=True)
        structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
        t = time.perf_counter()
        events = 0
        while True:
            got = await watcher.tail()
            if not got:
                break
            events += got
        tail_s = time.perf_counter() - t
        snaps = []
        for _ in range(5):
            t = time.perf_counter()
            await watcher.snapshot()
            snaps.append(time.perf_counter() - t)
        REGISTRY.register(watcher.collector)
        scrapes = []
        for _ in range(20):
            t = time.perf_counter()
            generate_latest(REGISTRY)
            scrapes.append(time.perf_counter() - t)
        REGISTRY.unregister(watcher.collector)
        await watcher.aclose()
        await store.close()
    print(f"journal tail: {events} events of {n} messages in {tail_s * 1000:.0f} ms = {events / tail_s:,.0f} events/s,"
          f" {tail_s / n * 1e6:.1f} µs per message (read in a worker thread, one JSON line per message)")
    print(f"store snapshot over {n} messages: median {statistics.median(snaps) * 1000:.1f} ms (every 10 s)")
    print(f"/metrics render: median {statistics.median(scrapes) * 1000:.2f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    args = p.parse_args()
    hot_path()
    asyncio.run(journal(args.messages))


if __name__ == "__main__":
    main()
