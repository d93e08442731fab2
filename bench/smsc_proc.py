"""The in-project SMSC simulator as a process of its own, for the end-to-end benchmarks.

    python bench/smsc_proc.py --port 2775 --out seen.json [--receipt-delay 0.05] [--no-record]

Every submit_sm is accepted and gets a DELIVRD receipt ``--receipt-delay`` seconds
after its resp (``--progress`` tracks the count as it goes). On SIGTERM it writes ``{text: [submit_sm count, first submitted_at]}``
to ``--out`` (with ``--no-record`` only the total, for million-message runs), so the
benchmark counts lost and duplicated messages where the operator sees them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from smppd.sims.smpp import SimulatorConfig, SmscSimulator  # noqa: E402


async def serve(args: argparse.Namespace) -> None:
    smsc = SmscSimulator(SimulatorConfig(system_id="BENCH", accounts={"smppd": "secret"},
                                         receipt_delay=args.receipt_delay, seed=1), port=args.port)
    await smsc.start()
    seen: dict[str, list[float]] = {}
    total = 0
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    def drain() -> None:
        """Fold the simulator's list into counts, so a million submits do not pile up here."""
        nonlocal total
        batch, smsc.submitted = smsc.submitted, []
        total += len(batch)
        if args.record:
            for sm in batch:
                entry = seen.get(sm.text)
                if entry is None:
                    seen[sm.text] = [1, sm.submitted_at]
                else:
                    entry[0] += 1

    peak = 0

    async def watch_binds() -> None:
        """The most binds of the account at once (bench/failover.py: never more than configured)."""
        nonlocal peak
        while True:
            peak = max(peak, smsc.binds)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_binds())
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), timeout=0.5)
        except asyncio.TimeoutError:
            pass
        drain()
        if args.binds_out:
            Path(args.binds_out).write_text(f"{peak} {smsc.binds}\n")
        if args.progress:  # for rate measurements while the run goes on
            Path(args.progress).write_text(f"{total} {time.time()}\n")
    watcher.cancel()
    await smsc.stop()
    drain()
    Path(args.out).write_text(json.dumps(seen if args.record else {"__total__": [total, 0.0]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--receipt-delay", type=float, default=0.05)
    p.add_argument("--no-record", dest="record", action="store_false")
    p.add_argument("--binds-out", help="file to rewrite every 0.5 s with 'peak binds, binds now'")
    p.add_argument("--progress", help="file to rewrite every 0.5 s with 'submit_sm so far, unix time'")
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
