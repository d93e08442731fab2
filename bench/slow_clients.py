"""Slow clients against the real shim: genuine posts must still be served within a second.

    .venv/bin/python bench/slow_clients.py                          # 10,000 slow connections for 90 s
    .venv/bin/python bench/slow_clients.py --slow 2000 --seconds 20 # scaled down for a shared machine

``smppd run`` and ``smppd-shim`` run as processes (as the units start them); this process is
the simulated portal, an SMSC, the slow clients and the genuine poster. Each slow client
opens a connection to the shim and sends a request's header one byte every ``--trickle``
seconds, reconnecting whenever the shim closes it, for ``--seconds``. Meanwhile one genuine
HANDLER post goes every ``--every`` seconds. Printed: genuine posts answered 200 and within
1 s (all), their slowest answer, how often the shim cut a slow connection (header deadline)
or refused one (connection cap), the shim's CPU seconds and RSS, and the size of its log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from bench.e2e import Gateway  # noqa: E402
from bench.fuzz import Secrets, config_toml  # noqa: E402
from bench.procs import free_port, pct, proc_stats  # noqa: E402
from smppd.sims.bitrix24 import SimulatedPortal  # noqa: E402
from smppd.sims.smpp import SimulatorConfig, SmscSimulator  # noqa: E402
from bench.fuzz import HostileSmsc  # noqa: E402


class SlowClients:
    def __init__(self, port: int, n: int, trickle: float) -> None:
        self.port, self.n, self.trickle = port, n, trickle
        self.open = 0
        self.peak_open = 0
        self.cut_after_header_bytes = 0  # closed by the shim after we had sent some bytes
        self.cut_at_once = 0  # closed before a byte was sent: the cap
        self.connect_failures = 0

    async def one(self, stop: asyncio.Event, rng: random.Random) -> None:
        await asyncio.sleep(rng.random() * min(5.0, self.trickle))  # spread the connects
        header = b"POST /bitrix24/by_good?key=x HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 4000
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.connect_failures += 1
                await asyncio.sleep(0.5)
                continue
            self.open += 1
            self.peak_open = max(self.peak_open, self.open)
            sent = 0
            try:
                while not stop.is_set():
                    if reader.at_eof():
                        break
                    writer.write(header[sent:sent + 1])
                    sent += 1
                    try:
                        if await asyncio.wait_for(reader.read(1), self.trickle) == b"":
                            break
                    except asyncio.TimeoutError:
                        pass
            except OSError:
                pass
            finally:
                self.open -= 1
                writer.close()
            if stop.is_set():
                return
            if sent <= 1:
                self.cut_at_once += 1
            else:
                self.cut_after_header_bytes += 1
            await asyncio.sleep(1.0 if sent <= 1 else 0.2)  # refused at once: an attacker would retry, not spin


async def run(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.slow + 1024)), hard))
    rng = random.Random(1)
    s = Secrets()
    tmp = Path(tempfile.mkdtemp(prefix="smppd-slow-"))
    portal = SimulatedPortal(rate=None)
    await portal.start()
    good = SmscSimulator(SimulatorConfig(system_id="GOOD", accounts={"smppd": s.smpp_password}, seed=1))
    await good.start()
    idle = HostileSmsc(rng, s)  # only answers binds here
    await idle.start()
    shim_port = free_port()
    gw = Gateway(tmp, config_toml(tmp, portal, s, shim_port=shim_port, good=good.port, hostile=idle.port), shim_port)
    out: dict[str, Any] = {"slow_connections": args.slow, "seconds": args.seconds, "trickle_s": args.trickle}
    try:
        gw.start_daemon()
        await gw.wait_daemon()
        gw.start_shim()
        shim = gw.procs["shim"]
        cpu0 = proc_stats(shim.pid).cpu_s
        # the slow clients in a process of their own, so their load does not delay the genuine poster's loop
        slow_proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "slow", "--port", str(shim_port), "--slow", str(args.slow),
            "--seconds", str(args.seconds + 2), "--trickle", str(args.trickle), stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(min(5.0, args.trickle) + 1)  # the slow connections are open before the first post
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            i = 0
            while time.monotonic() - started < args.seconds:
                _, fields = portal.create_message("by_good", f"+37529{2000000 + i:07d}", f"genuine {i}")
                t = time.monotonic()
                try:
                    async with http.post(f"http://127.0.0.1:{shim_port}/bitrix24/by_good?key={s.key}",
                                         data=fields) as resp:
                        await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    statuses[0] = statuses.get(0, 0) + 1
                latencies.append(time.monotonic() - t)
                i += 1
                await asyncio.sleep(args.every)
        slow_out, _ = await slow_proc.communicate()
        stats = proc_stats(shim.pid)
        log_path = tmp / "shim.log"
        out.update({
            "genuine": {"posted": len(latencies), "answers": statuses,
                        "within_1s": sum(1 for x in latencies if x < 1.0),
                        "p50_ms": round(pct(latencies, 0.5) * 1000, 1), "p99_ms": round(pct(latencies, 0.99) * 1000, 1),
                        "max_ms": round(max(latencies) * 1000, 1)},
            "slow": json.loads(slow_out),
            "shim": {"cpu_s": round(stats.cpu_s - cpu0, 1), "rss_mb": round(stats.rss_mb, 1),
                     "peak_rss_mb": round(stats.peak_rss_mb, 1), "alive": shim.poll() is None,
                     "log_lines": sum(1 for _ in log_path.open()) if log_path.exists() else 0,
                     "log_kb": round(log_path.stat().st_size / 1024, 1) if log_path.exists() else 0},
        })
    finally:
        gw.stop()
        await idle.stop()
        await good.stop()
        await portal.stop()
    return out


async def slow_role(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.slow + 1024)), hard))
    slow = SlowClients(args.port, args.slow, args.trickle)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(slow.one(stop, random.Random(i))) for i in range(args.slow)]
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"peak_open_client_side": slow.peak_open, "closed_by_shim_after_trickling": slow.cut_after_header_bytes,
            "closed_by_shim_at_once": slow.cut_at_once, "connect_failures": slow.connect_failures}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=("drill", "slow"), default="drill", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--slow", type=int, default=10_000, help="slow connections held at once (default 10,000)")
    p.add_argument("--seconds", type=float, default=90.0, help="how long (default 90)")
    p.add_argument("--trickle", type=float, default=5.0, help="seconds between a slow client's bytes (default 5)")
    p.add_argument("--every", type=float, default=0.2, help="seconds between genuine posts (default 0.2)")
    args = p.parse_args()
    if args.role == "slow":
        print(json.dumps(asyncio.run(slow_role(args))))
        return 0
    out = asyncio.run(run(args))
    print(json.dumps(out, indent=1))
    g = out["genuine"]
    ok = g["answers"] == {200: g["posted"]} and g["within_1s"] == g["posted"] and out["shim"]["alive"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
