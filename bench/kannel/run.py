"""smppd against Kannel, side by side, alternately, on this machine.

    bench/kannel/setup.sh                                  # once: apt-get install kannel
    .venv/bin/python bench/kannel/run.py                   # 3 rounds of 20,000 each
    .venv/bin/python bench/kannel/run.py -n 50000 --rounds 5 --concurrency 200

The same load through both gateways to the same SMSC simulator (``bench/smsc_proc.py``,
a process of its own): N single-segment messages, ``--concurrency`` HTTP requests in
flight, each message's receipt back and its final status delivered over HTTP.

- smppd: ``bench/e2e.py`` (Bitrix24 HANDLER posts → shim → daemon → SMPP; statuses in
  ``batch`` calls to the simulated portal).
- Kannel: ``GET /cgi-bin/sendsms`` on smsbox → bearerbox → SMPP (``kannel.conf.in``);
  ``dlr-mask=19`` (delivered, failed, SMSC reject) and a ``dlr-url`` to a receiver in
  this process, so each final status is one HTTP callback.

Rounds alternate (smppd, Kannel, smppd, Kannel, …) so drift on the machine hits both.
Printed: each run's figures, the medians per gateway, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import aiohttp  # noqa: E402
import yarl  # noqa: E402
import structlog  # noqa: E402
from aiohttp import web  # noqa: E402

from bench import e2e  # noqa: E402
from bench.procs import Smsc, free_port, self_stats, stats_of, stop_in_order, wait_for_port  # noqa: E402

HERE = Path(__file__).resolve().parent


class DlrReceiver:
    """The HTTP endpoint Kannel's dlr-url points at: the time of each message's final status."""

    def __init__(self) -> None:
        self.final: dict[int, tuple[float, int]] = {}
        self.callbacks = 0
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        self.callbacks += 1
        i, kind = int(request.query["i"]), int(request.query["t"])
        if kind in (1, 2, 16) and i not in self.final:  # delivered, failed, SMSC reject
            self.final[i] = (time.time(), kind)
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/dlr", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        await self.runner.cleanup()


class Kannel:
    def __init__(self, tmp: Path, smsc_port: int, window: int) -> None:
        self.tmp = tmp
        self.admin_port, self.smsbox_port, self.sendsms_port = free_port(), free_port(), free_port()
        conf = (HERE / "kannel.conf.in").read_text().format(
            tmp=tmp, admin_port=self.admin_port, smsbox_port=self.smsbox_port, sendsms_port=self.sendsms_port,
            smsc_port=smsc_port, window=window)
        self.conf = tmp / "kannel.conf"
        self.conf.write_text(conf)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self) -> None:
        out = open(self.tmp / "boxes.out", "ab")
        self.procs["bearerbox"] = subprocess.Popen([shutil.which("bearerbox") or "bearerbox", "-v", "2", str(self.conf)],
                                                   stdout=out, stderr=out)
        wait_for_port(self.smsbox_port)
        self.procs["smsbox"] = subprocess.Popen([shutil.which("smsbox") or "smsbox", "-v", "2", str(self.conf)],
                                                stdout=out, stderr=out)
        wait_for_port(self.sendsms_port)
        url = f"http://127.0.0.1:{self.admin_port}/status.txt?password=bench"
        async with aiohttp.ClientSession() as http:
            for _ in range(200):  # until the SMPP bind is up
                async with http.get(url) as r:
                    if "online" in await r.text():
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"Kannel's SMSC connection did not come online; see {self.tmp}/bearerbox.log")

    def stats(self) -> dict[str, Any]:
        return stats_of(self.procs)

    def stop(self) -> None:
        stop_in_order(self.procs, ("smsbox", "bearerbox"))


async def kannel_once(n: int, concurrency: int, window: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="smppd-kannel-") as tmp_s:
        tmp = Path(tmp_s)
        smsc = Smsc(tmp)
        receiver = DlrReceiver()
        await receiver.start()
        posted: dict[int, float] = {}
        statuses: dict[int, int] = {}
        kannel: Kannel | None = None
        try:
            kannel = Kannel(tmp, smsc.port, window)
            await kannel.start()
            before = {**kannel.stats(), "smsc": smsc.stats(), "loadgen": self_stats()}
            base = f"http://127.0.0.1:{kannel.sendsms_port}/cgi-bin/sendsms?username=bench&password=benchpw&from=DemoShop"
            # Built before the clock starts, as bench/e2e.py builds smppd's posts.
            urls = [(i, yarl.URL(f"{base}&to={quote(e2e.phone(i))}&text={quote(e2e.message_text(i))}&dlr-mask=19"
                                 f"&dlr-url={quote(f'http://127.0.0.1:{receiver.port}/dlr?i={i}&t=%d', safe='')}",
                                 encoded=True))
                    for i in range(n)]
            queue = iter(urls)
            t0 = time.time()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

                async def worker() -> None:
                    for i, url in queue:
                        posted[i] = time.time()
                        async with http.get(url) as r:
                            await r.read()
                            statuses[i] = r.status

                await asyncio.gather(*(worker() for _ in range(concurrency)))
            t_posted = time.time()
            accepted = [i for i, s in statuses.items() if s == 202]
            deadline = time.monotonic() + timeout
            while len(receiver.final) < len(accepted) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            after = {**kannel.stats(), "smsc": smsc.stats(), "loadgen": self_stats()}
        finally:
            if kannel is not None:
                kannel.stop()
            seen = smsc.stop()
            await receiver.stop()
        to_smsc, to_final = [], []
        lost = dup = 0
        for i in accepted:
            s, f = seen.get(e2e.message_text(i)), receiver.final.get(i)
            if s is None or f is None:
                lost += 1
                continue
            dup += s[0] > 1
            to_smsc.append(s[1] - posted[i])
            to_final.append(f[0] - posted[i])
        t_last = max((f[0] for f in receiver.final.values()), default=time.time())
        return e2e.run_figures(n, len(accepted), t0, t_posted, t_last, to_smsc, to_final, lost, dup, 0,
                               before, after)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000, help="messages per run (default 20,000)")
    p.add_argument("--concurrency", type=int, default=100, help="HTTP requests in flight (default 100)")
    p.add_argument("--window", type=int, default=50, help="SMPP window of both gateways (default 50)")
    p.add_argument("--rounds", type=int, default=3, help="smppd + Kannel pairs (default 3)")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--only", choices=("smppd", "kannel"), help="run one gateway only")
    args = p.parse_args()
    if shutil.which("bearerbox") is None and args.only != "smppd":
        print("bearerbox not found: run bench/kannel/setup.sh first", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for k in range(args.rounds):
        if args.only != "kannel":
            r = asyncio.run(e2e.run_once(args.n, args.concurrency, args.window, args.timeout))
            e2e.print_run(f"smppd  round {k + 1}", r)
            ours.append(r)
        if args.only != "smppd":
            r = asyncio.run(kannel_once(args.n, args.concurrency, args.window, args.timeout))
            e2e.print_run(f"Kannel round {k + 1}", r)
            theirs.append(r)
        sys.stdout.flush()
    med = statistics.median
    for name, rs in (("smppd", ours), ("Kannel", theirs)):
        if rs:
            print(f"{name:6s} ", end="")
            e2e.print_medians(rs)
    if ours and theirs:
        ratio = med(r["rate"] for r in ours) / med(r["rate"] for r in theirs)
        print(f"ratio smppd / Kannel (median msg/s, end to end): {ratio:.2f}")
    bad = [r for r in ours + theirs if r["lost"] or r["duplicated"] or r["not_200"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
