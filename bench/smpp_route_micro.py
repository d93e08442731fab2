"""CPU of the SMPP route's shell and policy per message, without sockets or a store.

    .venv/bin/python bench/smpp_route_micro.py            # medians of 7 runs of 20,000 messages

What is timed is the route's own work on the hot path: ``enqueue`` (segments built),
the pump (policy limits, the cap over a sliding second, the choice of a bind) and the
``SubmitAccepted`` events coming back (the policy told, the store handed one batch per
read). The binds are stand-ins that take every submit and answer each read's worth
(the window) at once, as a busy bind does; the session, the codec and the store are
not in these figures (bench/smpp_session_micro.py and bench/store_path.py time them).
Run it before and after a change to the route or its policy: the figure is µs of CPU
per message on the main thread.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from smppd.config import SmppRouteConfig  # noqa: E402
from smppd.model import OpenMessage  # noqa: E402
from smppd.routes.smpp import SmppRoute  # noqa: E402
from smppd.smpp.events import SubmitAccepted  # noqa: E402


class _Config:
    bind_mode = "transceiver"


class StandInBind:
    """Takes every submit while its window has room; answers them all at the next loop turn."""

    def __init__(self, route: SmppRoute) -> None:
        self.route = route
        self.session_config = _Config()
        self.window = route.cfg.window
        self.pending: list[Any] = []
        self.binds = 1
        self.bind_failures = 0
        self.bound = True
        self._armed = False

    @property
    def outstanding(self) -> int:
        return len(self.pending)

    def can_submit(self) -> bool:
        return len(self.pending) < self.window

    def set_window(self, window: int) -> None:
        self.window = window

    def submit(self, item: Any) -> int:
        self.pending.append(item.ref)
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._answer)
        return len(self.pending)

    def _answer(self) -> None:
        self._armed = False
        refs, self.pending = self.pending, []
        self.route._on_events(self, [SubmitAccepted(r, str(r), str(r)) for r in refs])  # type: ignore[arg-type]


class NullStore:
    def clock(self) -> float:
        return time.time()

    def segments_accepted(self, accepted: Any, rules: Any) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def one_run(n: int) -> float:
    cfg = SmppRouteConfig(name="bench", host="127.0.0.1", port=1, system_id="s", password="p", window=50)
    route = SmppRoute(cfg, NullStore())  # type: ignore[arg-type]
    bind = StandInBind(route)
    route.connections = [bind]  # type: ignore[list-item]
    route._senders = [bind]  # type: ignore[list-item]
    messages = [OpenMessage(i + 1, "bench", "SENDER", "+375291234567", "hello, world", (0,)) for i in range(n)]
    pump = asyncio.create_task(route._pump())
    start = time.process_time()
    for m in messages:
        route.enqueue(m)
    while route.stats["accepted"] < n:
        await asyncio.sleep(0)
    spent = time.process_time() - start
    route._stopping = True
    route._wake.set()
    await pump
    return spent / n * 1e6


def main() -> None:
    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    runs = [asyncio.run(one_run(20_000)) for _ in range(7)]
    print(f"smpp route (enqueue, pump, accepted)  {statistics.median(runs):6.1f} µs/msg  "
          f"(min {min(runs):.1f}, 7 x 20,000)")


if __name__ == "__main__":
    main()
