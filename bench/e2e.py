"""End to end: Bitrix24 posts → shim → daemon → SMPP → SMSC → receipts → statuses at the portal.

    .venv/bin/python bench/e2e.py                       # 20,000 messages, 100 posts in flight
    .venv/bin/python bench/e2e.py -n 50000 --concurrency 200 --runs 3
    .venv/bin/python bench/e2e.py --database postgresql   # the store on a throwaway PostgreSQL cluster

Four processes, as in production plus the peers: ``smppd run`` (the daemon),
``smppd-shim``, the SMSC simulator (``bench/smsc_proc.py``) and this one, which is
the Bitrix24 side: the simulated portal (rate limit lifted) that the daemon pushes
statuses to, and the load generator that posts real HANDLER forms to the shim.

Printed per run: sustained msg/s from the first post to the last final status at the
portal; p50/p99 of post → accepted by the SMSC (the SMSC's clock of the first
submit_sm) and post → final status at the portal; CPU seconds and peak RSS of the
daemon, the shim, the SMSC and the load generator; lost (posted with 200 but no final
status, or never seen by the SMSC) and duplicated (more than one submit_sm) messages.
Both must be 0. With ``--runs`` > 1 the medians follow.

``--database postgresql`` starts a throwaway PostgreSQL cluster (``smppd.sims.postgresql``:
Debian's initdb + pg_ctl, Unix socket, fsync on) and gives each run a fresh schema; the
server's processes' CPU is printed as ``postgres``. ``--database postgresql://…`` uses a
server of your own (its CPU is not measured).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import structlog  # noqa: E402

from bench.procs import PYTHON, ROOT, Smsc, free_port, pct, self_stats, stats_of, stop_in_order, wait_for_port  # noqa: E402
from smppd.sims.bitrix24 import SimulatedPortal, encode_form  # noqa: E402

FINAL = frozenset({"delivered", "undelivered", "failed"})
CODE = "by_bench"


def message_text(i: int) -> str:
    """One GSM-7 segment, unique per message so the SMSC's record can be matched."""
    return f"Order {i} is ready for pickup, see you 9:00-21:00"


def phone(i: int) -> str:
    return f"+37529{1000000 + i % 9000000:07d}"


def daemon_config(tmp: Path, portal: SimulatedPortal, *, smsc_port: int, shim_port: int, key: str,
                  window: int, reconnect_max: float = 2.0, throughput: int = 0, database: str | None = None) -> Path:
    """A real config.toml; the portal entry seeds the store as an installed app would."""
    cfg = f"""
[daemon]
socket = "{tmp}/smppd.sock"
database = "{database or f"{tmp}/smppd.db"}"

[shim]
listen = "127.0.0.1:{shim_port}"
handler_key = "{key}"
{f'spool_dir = "{tmp}/shim-spool"' if database else ""}

{portal.portal_toml(rate=1000.0, burst=10000)}
[route.bench]
kind = "smpp"
host = "127.0.0.1"
port = {smsc_port}
system_id = "smppd"
password = "secret"
window = {window}
reconnect_min = 0.2
reconnect_max = {reconnect_max}
throughput = {throughput}

[sender.{CODE}]
route = "bench"
sender_id = "DemoShop"
name = "SMS (bench)"
"""
    path = tmp / "config.toml"
    path.write_text(cfg)
    return path


@dataclass
class Gateway:
    """``smppd run`` and ``smppd-shim`` as the systemd units would start them."""

    tmp: Path
    config: Path
    shim_port: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_daemon(self) -> None:
        log = open(self.tmp / "daemon.log", "ab")
        self.procs["daemon"] = subprocess.Popen([PYTHON, "-m", "smppd.cli", "run", "-c", str(self.config)],
                                                stdout=log, stderr=log, cwd=ROOT)

    async def wait_daemon(self, timeout: float = 60.0) -> float:
        """Seconds until the daemon answers on its socket (how long a start takes)."""
        from smppd.rpc import RpcClient

        t0 = time.perf_counter()
        sock = str(self.tmp / "smppd.sock")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["daemon"].poll() is not None:
                raise RuntimeError(f"daemon exited {self.procs['daemon'].returncode}; see {self.tmp}/daemon.log")
            client = RpcClient(sock)
            try:
                await client.call("ping", {})
                return time.perf_counter() - t0
            except Exception:
                await asyncio.sleep(0.02)
            finally:
                await client.close()
        raise TimeoutError("daemon not ready")

    def start_shim(self) -> None:
        log = open(self.tmp / "shim.log", "ab")
        self.procs["shim"] = subprocess.Popen([PYTHON, "-m", "shim", "-c", str(self.config)],
                                              stdout=log, stderr=log, cwd=ROOT)
        wait_for_port(self.shim_port)

    def stats(self) -> dict[str, Any]:
        return stats_of(self.procs)

    def stop(self) -> None:
        stop_in_order(self.procs, ("shim", "daemon"))


@dataclass
class Post:
    i: int
    b24_id: str
    body: bytes  # the urlencoded HANDLER form
    posted_at: float = 0.0
    status: int = 0


def prepare_posts(portal: SimulatedPortal, n: int, first: int = 0) -> list[Post]:
    """The posts, built before the clock starts (as Kannel's URLs are in bench/kannel/run.py).

    The load generator shares the 2 cores with the gateway; building 20 urlencoded form
    fields per post while the clock runs took CPU from whichever gateway was measured.
    """
    posts = []
    for i in range(first, first + n):
        b24_id, form = portal.create_message(CODE, phone(i), message_text(i))
        posts.append(Post(i, b24_id, encode_form(form)))
    return posts


async def post_load(url: str, portal: SimulatedPortal, posts: list[Post], concurrency: int) -> None:
    """The posts, ``concurrency`` in flight, as the Bitrix24 queue server makes them."""
    queue = iter(posts)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def worker() -> None:
            for p in queue:
                p.posted_at = time.time()
                for attempt in range(5):  # the queue server retries a failed post
                    try:
                        p.status, _ = await portal.post_to_handler(http, url, p.body)
                        break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1 * (attempt + 1))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def final_at(portal: SimulatedPortal, b24_id: str) -> float | None:
    m = portal.messages.get(b24_id)
    if m is None:
        return None
    for at, status in m.history:
        if status in FINAL:
            return at
    return None


async def wait_final(portal: SimulatedPortal, posts: list[Post], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = [p for p in posts if p.status == 200]
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if portal.messages[p.b24_id].status not in FINAL]
        await asyncio.sleep(0.05)


async def run_once(n: int, concurrency: int, window: int, timeout: float, database: str | None = None,
                   cluster: Any = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="smppd-e2e-") as tmp_s:
        tmp = Path(tmp_s)
        portal = SimulatedPortal(rate=None)
        await portal.start()
        smsc = Smsc(tmp)
        key = secrets.token_urlsafe(24)
        shim_port = free_port()
        gw = Gateway(tmp, daemon_config(tmp, portal, smsc_port=smsc.port, shim_port=shim_port, key=key,
                                        window=window, database=database), shim_port)
        server = (lambda: {"postgres": cluster.cpu()}) if cluster is not None else dict
        try:
            gw.start_daemon()
            await gw.wait_daemon()
            gw.start_shim()
            await asyncio.sleep(0.5)  # the bind and the start-up sender.list settle
            before = {**gw.stats(), "smsc": smsc.stats(), "loadgen": self_stats(), **server()}
            url = f"http://127.0.0.1:{shim_port}/bitrix24/{CODE}?key={key}"
            posts = prepare_posts(portal, n)
            t0 = time.time()
            await post_load(url, portal, posts, concurrency)
            t_posted = time.time()
            await wait_final(portal, posts, timeout)
            after = {**gw.stats(), "smsc": smsc.stats(), "loadgen": self_stats(), **server()}
        finally:
            gw.stop()
            seen = smsc.stop()
            await portal.stop()
    return summarize(n, posts, portal, seen, t0, t_posted, before, after)


def summarize(n: int, posts: list[Post], portal: SimulatedPortal, seen: dict[str, list[float]], t0: float,
              t_posted: float, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    accepted = [p for p in posts if p.status == 200]
    finals = {p.b24_id: final_at(portal, p.b24_id) for p in accepted}
    t_last = max((t for t in finals.values() if t is not None), default=time.time())
    to_smsc, to_portal = [], []
    lost = dup = 0
    for p in accepted:
        s = seen.get(message_text(p.i))
        f = finals[p.b24_id]
        if s is None or f is None:
            lost += 1
            continue
        dup += s[0] > 1
        to_smsc.append(s[1] - p.posted_at)
        to_portal.append(f - p.posted_at)
    regressions = sum(len(m.regressions()) for m in portal.messages.values())
    return run_figures(n, len(accepted), t0, t_posted, t_last, to_smsc, to_portal, lost, dup, regressions,
                       before, after)


def run_figures(n: int, accepted: int, t0: float, t_posted: float, t_last: float, to_smsc: list[float],
                to_final: list[float], lost: int, dup: int, regressions: int,
                before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One run's figures, the same keys for either gateway (print_run and the medians read them)."""
    procs = {name: {"cpu_s": after[name].cpu_s - before[name].cpu_s, "peak_rss_mb": after[name].peak_rss_mb}
             for name in after if name in before}
    return {
        "n": n, "posted_200": accepted, "not_200": n - accepted,
        "rate": accepted / (t_last - t0), "intake_rate": n / (t_posted - t0),
        "smsc_p50_ms": 1000 * pct(to_smsc, 0.5), "smsc_p99_ms": 1000 * pct(to_smsc, 0.99),
        "portal_p50_ms": 1000 * pct(to_final, 0.5), "portal_p99_ms": 1000 * pct(to_final, 0.99),
        "lost": lost, "duplicated": dup, "regressions": regressions, "procs": procs,
        "wall_s": t_last - t0,
    }


def print_run(label: str, r: dict[str, Any]) -> None:
    print(f"{label}: {r['n']} posts, {r['posted_200']} accepted ({r['not_200']} refused)")
    print(f"  sustained {r['rate']:,.0f} msg/s (first post → last final status, {r['wall_s']:.1f} s); "
          f"intake {r['intake_rate']:,.0f} posts/s")
    print(f"  post → accepted by SMSC  p50 {r['smsc_p50_ms']:.1f} ms  p99 {r['smsc_p99_ms']:.1f} ms")
    print(f"  post → final status      p50 {r['portal_p50_ms']:.1f} ms  p99 {r['portal_p99_ms']:.1f} ms")
    for name, s in r["procs"].items():
        print(f"  {name:8s} CPU {s['cpu_s']:6.1f} s  ({1e6 * s['cpu_s'] / r['n']:5.0f} µs/msg)  "
              f"peak RSS {s['peak_rss_mb']:6.1f} MB")
    print(f"  lost {r['lost']}  duplicated {r['duplicated']}  status regressions {r['regressions']}")


def print_medians(results: list[dict[str, Any]]) -> None:
    med = statistics.median
    print(f"median of {len(results)} runs: {med(r['rate'] for r in results):,.0f} msg/s, "
          f"post→SMSC p50 {med(r['smsc_p50_ms'] for r in results):.1f} ms "
          f"p99 {med(r['smsc_p99_ms'] for r in results):.1f} ms, "
          f"post→status p50 {med(r['portal_p50_ms'] for r in results):.1f} ms "
          f"p99 {med(r['portal_p99_ms'] for r in results):.1f} ms, "
          f"lost {sum(r['lost'] for r in results)}, duplicated {sum(r['duplicated'] for r in results)}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000, help="messages per run (default 20,000)")
    p.add_argument("--concurrency", type=int, default=100, help="posts in flight (default 100)")
    p.add_argument("--window", type=int, default=50, help="SMPP window of the route (default 50)")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the last status")
    p.add_argument("--database", default="sqlite",
                   help="sqlite (default), postgresql (a throwaway cluster), or a postgresql:// URL")
    return p


def main() -> int:
    args = parser().parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = []
    cluster = None
    if args.database == "postgresql":
        from smppd.sims.postgresql import Cluster, find_bindir

        bindir = find_bindir()
        if bindir is None:
            print("PostgreSQL is not installed (Debian: apt-get install postgresql)", file=sys.stderr)
            return 2
        cluster = Cluster(bindir)
        cluster.start()
    try:
        for k in range(args.runs):
            database = None if args.database == "sqlite" else args.database
            if cluster is not None:
                database = cluster.url(schema=cluster.new_schema())
            r = asyncio.run(run_once(args.n, args.concurrency, args.window, args.timeout, database, cluster))
            print_run(f"smppd ({args.database if cluster or database is None else 'postgresql'}) run {k + 1}", r)
            results.append(r)
    finally:
        if cluster is not None:
            cluster.stop()
    if args.runs > 1:
        print_medians(results)
    return 0 if all(r["lost"] == 0 and r["duplicated"] == 0 and r["not_200"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
