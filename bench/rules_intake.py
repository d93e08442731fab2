"""What the business rules cost at intake: store.intake with the duplicate check on and off.

The duplicate check is the one rule that touches the database for every message
(an indexed lookup inside the intake transaction, no extra round trip); the stop
list and the quiet-hours test are in-memory. Prints medians of several runs and
the ratio, so a regression shows as a number.

    .venv/bin/python bench/rules_intake.py [-n 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from smppd import rules
from smppd.rules.stoplist import StopList
from smppd.model import NewMessage
from smppd.store import Store


def messages(n: int, run: int, window: float, repeat_every: int) -> list[NewMessage]:
    out = []
    for i in range(n):
        k = i - 1 if repeat_every and i % repeat_every == 0 and i else i  # every Nth repeats the previous one
        out.append(NewMessage(
            member_id="m", b24_id=f"{run:08x}{i:024x}", code="c", route="life", sender="Shop",
            phone=f"+37529{(k * 7919) % 10_000_000:07d}", text=f"Your order {k} is ready", encoding="gsm7",
            segments=1, duplicate_window=window))
    return out


async def one_run(n: int, run: int, window: float, repeat_every: int, path: Path) -> float:
    store = Store(str(path))
    await store.open()
    try:
        # Some history in the table, so the index is exercised like on a live box.
        await asyncio.gather(*(store.intake(m) for m in messages(n, run + 1000, window, 0)))
        batch = messages(n, run, window, repeat_every)
        t0 = time.perf_counter()
        await asyncio.gather(*(store.intake(m) for m in batch))
        return n / (time.perf_counter() - t0)
    finally:
        await store.close()


def in_memory(n: int) -> tuple[float, float]:
    quiet = rules.QuietHours((21 * 60, 9 * 60), "Europe/Minsk")
    now = time.time()
    t0 = time.perf_counter()
    for i in range(n):
        quiet.release_at(now + i)
    q = (time.perf_counter() - t0) / n
    stop = StopList.__new__(StopList)
    stop._numbers = {f"+37529{i:07d}" for i in range(100_000)}
    t0 = time.perf_counter()
    for i in range(n):
        f"+37529{i:07d}" in stop
    s = (time.perf_counter() - t0) / n
    return q, s


async def main(n: int, runs: int) -> None:
    results: dict[str, list[float]] = {"off": [], "on": [], "on, 10% repeats": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            for label, window, rep in (("off", 0.0, 0), ("on", 600.0, 0), ("on, 10% repeats", 600.0, 10)):
                path = Path(tmp) / f"{label[:2]}{rep}-{run}.db"
                results[label].append(await one_run(n, run, window, rep, path))
    base = statistics.median(results["off"])
    print(f"store.intake, {n} messages in flight, median of {runs} runs (group commit, synchronous=FULL)")
    for label, values in results.items():
        med = statistics.median(values)
        print(f"  duplicate check {label:<16} {med:8.0f} msg/s   ratio to off {med / base:5.2f}")
    q, s = in_memory(100_000)
    print(f"quiet-hours test   {q * 1e6:6.2f} µs per marketing message")
    print(f"stop-list lookup   {s * 1e6:6.2f} µs per marketing message (100,000 numbers listed)")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=5000)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    asyncio.run(main(a.n, a.runs))
