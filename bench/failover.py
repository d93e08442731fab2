"""The failover drill (issue 17): two nodes on one PostgreSQL, node A killed mid-load.

    .venv/bin/python bench/failover.py                       # 200 posts/s for 40 s, kill -9 of A at 15 s
    .venv/bin/python bench/failover.py --runs 3 --json       # three drills, figures as JSON too
    .venv/bin/python bench/failover.py --rate 100 --duration 20 --kill-at 8

Two nodes on one machine as on two: each its own ``smppd run`` and ``smppd-shim`` (their
sockets passed as systemd passes them, see bench/drill.py), its own state directory,
ports and ``[daemon] node``; one throwaway PostgreSQL (smppd/sims/postgresql.py: Unix socket,
fsync on);
the SMSC simulator in a process of its own; the simulated Bitrix24 portal here. Node A
starts first and owns every lease (the route, the portal's outbox, the holds worker);
node B is up beside it and takes half the posts (it stores them, A sends them).

Posts go out open-loop, alternating between the two shims, as a balancer spreads them;
a post whose connection is refused goes to the other shim (nginx's
``proxy_next_upstream error``: the request was never sent). At ``--kill-at`` node A's
shim and daemon get SIGKILL and its listening sockets close (the machine is gone).

Measured: seconds from the kill until node B holds every lease A held (the target is
under 10 s), until the SMSC sees submits again; posts answered 200 and never sent or
never final (MISSING, the bar is 0); status regressions at the portal (0); duplicates at
the SMSC (a submit_sm whose resp A never stored: at most A's in-flight window); the most
binds of the SMSC account at once (never more than one node's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import psycopg  # noqa: E402
import structlog  # noqa: E402

from bench.drill import Gateway, count, drill_config, wait_final  # noqa: E402
from bench.e2e import CODE, Post, message_text, prepare_posts  # noqa: E402
from bench.procs import Smsc, free_port  # noqa: E402
from smppd.sims.bitrix24 import SimulatedPortal  # noqa: E402
from smppd.sims.postgresql import Cluster, find_bindir  # noqa: E402


def node_config(tmp: Path, portal: SimulatedPortal, smsc_port: int, conninfo: str, node: str, key: str,
                window: int) -> tuple[Path, int, int]:
    shim_port, metrics_port = free_port(), free_port()
    path = drill_config(tmp, portal, smsc_port, shim_port, metrics_port, key, spool_after=0.5)
    text = path.read_text()
    text = text.replace(f'database = "{tmp}/smppd.db"', f'database = "{conninfo}"\nnode = "{node}"', 1)
    text = text.replace("window = 50", f"window = {window}", 1)
    path.write_text(text)
    return path, shim_port, metrics_port


async def leases(conninfo: str) -> dict[str, tuple[str, bool]]:
    """{lease: (node, live)} as the database says."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        try:
            cur = await conn.execute("SELECT name, node, expires_at > now() FROM lease")
        except psycopg.errors.UndefinedTable:
            return {}
        return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}


async def wait_owner(conninfo: str, node: str, want: set[str], timeout: float) -> tuple[float, set[str]]:
    """Seconds until ``node`` holds every lease in ``want``."""
    t0 = time.monotonic()
    while True:
        found = await leases(conninfo)
        held = {n for n, (owner, live) in found.items() if owner == node and live}
        if want <= held:
            return time.monotonic() - t0, want
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"node {node} holds {sorted(held)}, not {sorted(want)}: {found}")
        await asyncio.sleep(0.05)


async def balanced_load(urls: list[str], portal: SimulatedPortal, posts: list[Post], rate: float,
                        errors: dict[str, int]) -> None:
    """``rate`` posts a second, alternating between the shims; a refused connection goes to the next."""
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    loop = asyncio.get_running_loop()

    async def one(p: Post, first: int) -> None:
        p.posted_at = time.time()
        for k in range(len(urls)):
            url = urls[(first + k) % len(urls)]
            try:
                p.status, text = await portal.post_to_handler(http, url, p.body)
                p.spooled = '"spooled"' in text  # type: ignore[attr-defined]
                p.answer_s = time.time() - p.posted_at  # type: ignore[attr-defined]
                p.node = url  # type: ignore[attr-defined]
                return
            except aiohttp.ClientConnectorError:
                errors["refused_then_next"] = errors.get("refused_then_next", 0) + 1
                continue  # never sent: the balancer tries the next node
            except (aiohttp.ClientError, TimeoutError) as exc:
                p.status = -1
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
        p.status = -1

    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as http:
        t0 = loop.time()
        tasks = []
        for i, p in enumerate(posts):
            p.spooled = False  # type: ignore[attr-defined]
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(p, i % len(urls))))
        await asyncio.gather(*tasks)


def smsc_gap(seen: dict[str, list[float]], around: float) -> float:
    """The longest pause between first submits at the SMSC from 2 s before ``around`` on."""
    times = sorted(v[1] for k, v in seen.items() if not k.startswith("__") and v[1] >= around - 2)
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pg = Cluster(bindir)
    pg.start()
    conninfo = pg.url()
    figures: dict[str, Any] = {}
    gateways: dict[str, Gateway] = {}
    with (_kept(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="smppd-failover-")) as root_s:
        root = Path(root_s)
        portal = SimulatedPortal(rate=None)
        await portal.start()
        smsc = Smsc(root, receipt_delay=0.05, binds_out=root / "binds")
        key = secrets.token_urlsafe(24)
        seen: dict[str, list[float]] = {}
        try:
            for name in ("a", "b"):
                (root / name).mkdir()
                cfg, shim_port, metrics_port = node_config(root / name, portal, smsc.port, conninfo, name, key,
                                                          args.window)
                gateways[name] = Gateway(root / name, cfg, shim_port, metrics_port)
            a, b = gateways["a"], gateways["b"]
            a.start_daemon()
            a.start_shim()
            await a.wait_daemon()
            # Everything node A contends for: the route, the portal's outbox, the holds worker.
            _, a_leases = await wait_owner(conninfo, "a", {"route:bench", f"portal:{portal.member_id}",
                                                              "job:holds"}, 30)
            b.start_daemon()
            b.start_shim()
            await b.wait_daemon()
            await asyncio.sleep(1.0)  # binds and shims settle
            figures["a_leases"] = sorted(a_leases)
            urls = [f"http://127.0.0.1:{g.shim_port}/bitrix24/{CODE}?key={key}" for g in (a, b)]
            posts = prepare_posts(portal, int(args.rate * args.duration))
            errors: dict[str, int] = {}
            figures["errors"] = errors
            t0 = time.monotonic()
            load = asyncio.create_task(balanced_load(urls, portal, posts, args.rate, errors))
            await asyncio.sleep(max(0.0, t0 + args.kill_at - time.monotonic()))
            # The machine is gone: its processes and its listening sockets.
            killed_at = time.time()
            for proc in (a.shim, a.daemon):
                assert proc is not None
                proc.send_signal(signal.SIGKILL)
            a.shim_sock.close()
            a.daemon_sock.close()
            figures["takeover_s"], _ = await wait_owner(conninfo, "b", a_leases, 60)
            await load
            t_posted = time.monotonic()
            await wait_final(portal, posts, args.timeout)
            figures["final_wait_s"] = time.monotonic() - t_posted
            figures["b_status"] = await status(b)
        finally:
            for g in gateways.values():
                g.stop()
            seen = smsc.stop()
            peak = (root / "binds").read_text().split() if (root / "binds").exists() else ["?", "?"]
            await portal.stop()
            pg.stop()
    figures.update(count(posts, portal, seen))
    figures["peak_binds"] = peak[0]
    figures["smsc_gap_s"] = smsc_gap(seen, killed_at)
    figures.update(phases(posts, seen, killed_at))
    return figures


def phases(posts: list[Post], seen: dict[str, list[float]], killed_at: float) -> dict[str, Any]:
    """Before the kill, and after it: how many posts the shims spooled, post -> SMSC latency."""
    out: dict[str, Any] = {}
    for phase, chosen in (("before", [p for p in posts if p.posted_at < killed_at]),
                          ("after", [p for p in posts if p.posted_at >= killed_at])):
        lat = sorted(seen[message_text(p.i)][1] - p.posted_at for p in chosen if message_text(p.i) in seen)
        out[f"posts_{phase}_kill"] = len(chosen)
        out[f"spooled_{phase}"] = sum(1 for p in chosen if getattr(p, "spooled", False))
        out[f"smsc_p50_{phase}_s"] = lat[len(lat) // 2] if lat else float("nan")
    return out


async def status(gw: Gateway) -> dict[str, Any]:
    from smppd.rpc import RpcClient

    client = RpcClient(str(gw.tmp / "smppd.sock"), timeout=5)
    try:
        st = await client.call("status", {})
    finally:
        await client.close()
    return {"owned": st.get("cluster", {}).get("owned"), "fed": st.get("cluster", {}).get("fed"),
            "rescued": st.get("cluster", {}).get("rescued")}


def report(n: int, r: dict[str, Any]) -> None:
    print(f"run {n}: sent {r['sent']}, answered 200 {r['answered_200']} (spooled {r['spooled']}), other answers "
          f"{r['answered_other']}, no answer {r['no_answer']} (of which sent anyway {r['no_answer_but_sent']})"
          f"{' ' + str(r['errors']) if r['errors'] else ''}")
    print(f"  node B holds A's leases {r['a_leases']} {r['takeover_s']:.2f} s after the kill; longest pause at the "
          f"SMSC {r['smsc_gap_s']:.2f} s; peak binds of the account {r['peak_binds']}")
    print(f"  at the SMSC {r['at_smsc']}, final in the portal {r['final']}, MISSING {r['missing']}, "
          f"duplicates at the SMSC {r['duplicates']}, status regressions {r['regressions']}")
    print(f"  before the kill: spooled {r['spooled_before']}, post -> SMSC p50 {r['smsc_p50_before_s']:.2f} s; "
          f"after: spooled {r['spooled_after']}, p50 {r['smsc_p50_after_s']:.2f} s")
    print(f"  post -> SMSC p50 {r['smsc_p50_s']:.2f} s p99 {r['smsc_p99_s']:.2f} s; last final "
          f"{r['final_wait_s']:.1f} s after the last post; node B after: {r['b_status']}")


@contextlib.contextmanager
def _kept(path: str) -> Iterator[str]:
    """--keep DIR: the nodes' logs and state stay there after the run (emptied first)."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    yield path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="posts a second over both shims (default 200)")
    p.add_argument("--duration", type=float, default=40.0, help="seconds of posting (default 40)")
    p.add_argument("--kill-at", type=float, default=15.0, help="seconds into the load: kill -9 of node A")
    p.add_argument("--window", type=int, default=50, help="the route's SMPP window (default 50)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the last final status")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    p.add_argument("--keep", help="run in this directory and keep the logs (default: a temporary one)")
    return p


def main() -> int:
    args = parser().parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    bad = 0
    for n in range(1, args.runs + 1):
        r = asyncio.run(run(args))
        report(n, r)
        if args.json:
            print(json.dumps(r, default=str))
        bad += r["missing"] != 0 or r["regressions"] != 0 or r["takeover_s"] >= 10
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
