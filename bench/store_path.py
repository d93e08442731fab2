"""What one message costs the store: intake → accepted → receipt → pushed, on a real file.

The daemon's SQLite writer thread is about a third of its CPU per message. This
drives the store's own API through the life of N one-segment messages in batches,
as the daemon does under load (a batch of intakes, their submit_sm_resps, their
receipts, the outbox read and cleared 50 at a time), and prints the CPU the
writer thread spent per message (``time.thread_time`` around each group, so the
event loop's share is not counted) in all and per step of the life, the whole
process's CPU per message, and the SQL statements run per message (counted in a separate, shorter pass: the trace
callback costs a Python call per statement). Medians of several runs.

    .venv/bin/python bench/store_path.py [-n 20000] [--batch 100] [--intake-batch 18] [--runs 5]

The intakes of a batch go to the store as ``intake_many`` calls of ``--intake-batch``
messages, as the daemon's RPC batches bring them (1: one ``intake`` per message).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from collections import Counter
from typing import Any

from smppd.store import writer as writer_mod
from smppd.model import Status
from smppd.model import NewMessage
from smppd.store import Store

MEMBER = "m" * 32


class WriterMeter:
    """Wraps the writer's group runner: thread CPU, and statements when asked to count."""

    def __init__(self, count_statements: bool) -> None:
        self.cpu = 0.0
        self.step = ""  # the step of the life whose groups run now (each step awaits its own)
        self.steps: Counter[str] = Counter()  # writer CPU seconds per step
        self.statements = 0
        self._count = count_statements
        self._original = writer_mod.run_group

    def __enter__(self) -> "WriterMeter":
        def metered(conn: sqlite3.Connection, ops: list[Any]) -> list[Any]:
            if self._count:
                conn.set_trace_callback(self._traced)
            t0 = time.thread_time()
            try:
                return self._original(conn, ops)
            finally:
                cpu = time.thread_time() - t0
                self.cpu += cpu
                self.steps[self.step] += cpu
                conn.set_trace_callback(None)

        writer_mod.run_group = metered
        return self

    def _traced(self, _sql: str) -> None:
        self.statements += 1

    def __exit__(self, *exc: object) -> None:
        writer_mod.run_group = self._original


def message(run: int, i: int) -> NewMessage:
    """The i-th message of a run. The text names the run: the runs share one database, and the
    same number and text again within duplicate_window is a repeat (no segments, follows the
    first), which would measure the repeat path instead of a message's life from run 2 on."""
    return NewMessage(member_id=MEMBER, b24_id=f"{run:08x}{i:024x}", code="c", route="r", sender="Shop",
                      phone=f"+37529{(i * 7919) % 10_000_000:07d}", text=f"Order {run}-{i} is ready",
                      encoding="gsm7", segments=1, duplicate_window=600.0)


async def drive(path: Path, n: int, batch: int, run: int, count_statements: bool,
                intake_batch: int = 1) -> tuple[float, float, float, dict[str, float]]:
    """(writer µs/msg, process µs/msg, statements/msg, writer µs/msg per step) for n messages
    through their whole life."""
    st = Store(str(path))
    await st.open()
    await st.execute(lambda conn: conn.execute(
        "INSERT OR IGNORE INTO portal (member_id, domain, client_endpoint, server_endpoint, client_id,"
        " client_secret, application_token, updated_at) VALUES (?,?,?,?,?,?,?,0)",
        (MEMBER, "d", "c", "s", "i", "x", "t")))
    try:
        with WriterMeter(count_statements) as meter:
            cpu0 = time.process_time()
            for start in range(0, n, batch):
                meter.step = "intake"
                end = min(n, start + batch)
                taken = [r for part in await asyncio.gather(*(
                    st.intake_many([message(run, i) for i in range(first, min(end, first + intake_batch))])
                    for first in range(start, end, intake_batch))) for r in part]
                if any(r.duplicate or r.duplicate_of is not None for r in taken):
                    raise SystemExit("a message was taken as a repeat: the bench would measure the wrong path")
                ids = [r.id for r in taken]
                meter.step = "resp"
                await asyncio.gather(*(st.segment_accepted(mid, 0, f"{run}-{mid:x}") for mid in ids))
                meter.step = "receipt"
                await asyncio.gather(*(st.apply_receipt("r", f"{run}-{mid:x}", Status.DELIVERED, "DELIVRD")
                                       for mid in ids))
                meter.step = "outbox"
                while items := await st.outbox_due(MEMBER, 50):
                    await st.outbox_done(items)
            process = time.process_time() - cpu0
    finally:
        await st.close()
    steps = {step: cpu / n * 1e6 for step, cpu in meter.steps.items()}
    return meter.cpu / n * 1e6, process / n * 1e6, meter.statements / n, steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=100, help="messages in flight together (default 100)")
    p.add_argument("--intake-batch", type=int, default=18,
                   help="messages per intake_many, as the daemon's RPC batches (default 18; 1: intake)")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    writer, process, steps = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.db"
        _, _, statements, _ = asyncio.run(drive(path, 1000, args.batch, 999, True, args.intake_batch))
        print(f"statements per message: {statements:.1f}")
        for run in range(args.runs):
            w, pr, _, by_step = asyncio.run(drive(path, args.n, args.batch, run, False, args.intake_batch))
            writer.append(w)
            process.append(pr)
            steps.append(by_step)
            print(f"run {run + 1}: writer thread {w:6.1f} µs/msg, process {pr:6.1f} µs/msg")
    print(f"median of {args.runs}: writer thread {statistics.median(writer):.1f} µs/msg, "
          f"process {statistics.median(process):.1f} µs/msg, {statements:.1f} statements/msg")
    print("writer thread per step, µs/msg (medians): " + ", ".join(
        f"{step} {statistics.median(s[step] for s in steps):.1f}" for step in steps[0]))


if __name__ == "__main__":
    main()
