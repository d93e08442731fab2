"""SMPP throughput: messages through the daemon's store and route to the simulated SMSC.

    .venv/bin/python bench/smpp_throughput.py            # uncapped, then capped at 100/s
    .venv/bin/python bench/smpp_throughput.py -n 50000 --window 50 --cap-n 500

What runs is what the daemon runs for an SMPP route: durable intake into SQLite
(WAL, group commit), the route's queue, window and cap, the sans-I/O session over
asyncio, and receipts applied to the store; the SMSC is ``sims/smpp.py`` on
loopback in the same process (so the CPU and RSS figures include it).  The shim
and the Unix socket are not in this path (see the demo for the whole path).

Printed: msg/s from the first intake to the last receipt stored, p50/p99 submit
latency (submit_sm written → submit_sm_resp read), receipts matched, peak RSS; for
the capped run, the most submit_sm the SMSC saw in any 1-second window.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from smppd.config import SmppRouteConfig  # noqa: E402
from smppd.routes.smpp import SmppRoute  # noqa: E402
from smppd.smpp.connection import Connection  # noqa: E402
from smppd.smpp.segments import route_encoding  # noqa: E402
from smppd.smpp.events import SubmitAccepted  # noqa: E402
from smppd.sims.smpp import SimulatorConfig, SmscSimulator  # noqa: E402
from smppd.sims.smpp_policy import max_in_any_second  # noqa: E402
from smppd.model import NewMessage, OpenMessage  # noqa: E402
from smppd.store import Store  # noqa: E402


class TimedRoute(SmppRoute):
    """The real route, with a stopwatch on each submit_sm and its resp."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.sent_at: dict[Any, float] = {}
        self.latencies: list[float] = []
        for c in self.connections:
            original = c.submit

            def timed(item: Any, original: Any = original) -> int:
                self.sent_at[item.ref] = time.perf_counter()
                return original(item)

            c.submit = timed  # type: ignore[method-assign]

    def _on_events(self, connection: Connection, events: Sequence[object]) -> None:
        now = time.perf_counter()
        for e in events:
            if isinstance(e, SubmitAccepted):
                t = self.sent_at.pop(e.ref, None)
                if t is not None:
                    self.latencies.append(now - t)
        super()._on_events(connection, events)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _smsc_process(ports: Any) -> None:
    """The simulated SMSC in its own process, so the daemon side has a core of its own."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def serve() -> None:
        smsc = SmscSimulator(SimulatorConfig(receipt_delay=0.0, seed=1))
        await smsc.start()
        ports.put(smsc.port)
        await asyncio.Event().wait()

    asyncio.run(serve())


class _RemoteSmsc:
    def __init__(self) -> None:
        self.ports: Any = multiprocessing.Queue()
        self.proc = multiprocessing.Process(target=_smsc_process, args=(self.ports,), daemon=True)
        self.submitted: list[Any] = []
        self.receipts_sent = -1  # not visible across the process boundary

    async def start(self) -> None:
        self.proc.start()
        self.port = await asyncio.get_running_loop().run_in_executor(None, self.ports.get)

    async def stop(self) -> None:
        self.proc.terminate()
        self.proc.join()


async def run(n: int, *, window: int, throughput: float, binds: int, receipts: bool,
              separate: bool = False) -> dict[str, Any]:
    smsc: Any = _RemoteSmsc() if separate else SmscSimulator(SimulatorConfig(receipt_delay=0.0, seed=1))
    await smsc.start()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "bench.db"))
        await store.open()
        cfg = SmppRouteConfig(name="bench", host="127.0.0.1", port=smsc.port, system_id="smppd",
                              password="secret", window=window, throughput=throughput, binds=binds,
                              registered_delivery=1 if receipts else 0)
        route = TimedRoute(cfg, store)
        task = asyncio.create_task(route.run())
        while not route.bound:
            await asyncio.sleep(0.01)
        start = time.perf_counter()

        async def intake(i: int) -> None:
            body = f"Your code is {i:06d}"
            enc = route_encoding(cfg, body)
            r = await store.intake(NewMessage(member_id="m", b24_id=str(i), code="c", route="bench",
                                              sender="MyShop", phone="+375291234567", text=body,
                                              encoding=enc.encoding, segments=enc.segments))
            route.enqueue(OpenMessage(r.id, "bench", "MyShop", "+375291234567", body, (0,), r.concat_ref))

        await asyncio.gather(*(intake(i) for i in range(n)))
        target = "delivered" if receipts else "accepted"
        while True:
            counts = (await store.counts())["messages"].get("bench", {})
            if counts.get(target, 0) >= n:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - start
        await route.stop(timeout=2.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store_counts = await store.counts()
        await store.close()
    await smsc.stop()
    return {
        "n": n,
        "elapsed": elapsed,
        "rate": n / elapsed,
        "p50_ms": 1000 * statistics.median(route.latencies),
        "p99_ms": 1000 * pct(route.latencies, 0.99),
        "receipts_matched": store_counts["messages"]["bench"].get("delivered", 0),
        "receipts_sent": smsc.receipts_sent,
        "pending": store_counts["receipts_pending"],
        "max_1s": max_in_any_second([sm.received_at for sm in smsc.submitted]) if smsc.submitted else None,
        "submitted": len(smsc.submitted),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20000, help="messages in the uncapped run")
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--binds", type=int, default=1)
    p.add_argument("--cap", type=float, default=100.0, help="segments/s of the capped run")
    p.add_argument("--cap-n", type=int, default=350, help="messages in the capped run")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    for separate in (True, False):
        r = asyncio.run(run(args.n, window=args.window, throughput=0, binds=args.binds, receipts=True,
                            separate=separate))
        where = "SMSC in its own process" if separate else "SMSC in the same process"
        print(f"uncapped  n={r['n']} window={args.window} binds={args.binds} ({where})")
        print(f"  throughput        {r['rate']:8.0f} msg/s  (intake → receipt stored, {r['elapsed']:.2f} s)")
        print(f"  submit latency    p50 {r['p50_ms']:.2f} ms   p99 {r['p99_ms']:.2f} ms")
        print(f"  receipts matched  {r['receipts_matched']} of {r['n']}, {r['pending']} pending")
        print(f"  peak RSS          {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
              + (" (daemon side)" if separate else " (daemon side + simulator)"))
    c = asyncio.run(run(args.cap_n, window=args.window, throughput=args.cap, binds=args.binds, receipts=True))
    print(f"capped    n={c['n']} cap={args.cap:.0f}/s")
    print(f"  throughput        {c['rate']:8.1f} msg/s")
    print(f"  max in any 1 s    {c['max_1s']} submit_sm seen by the SMSC (cap {args.cap:.0f})")
    print(f"  receipts matched  {c['receipts_matched']} of {c['submitted']}")


if __name__ == "__main__":
    main()
