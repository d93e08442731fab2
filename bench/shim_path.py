"""CPU per post of the shim alone: the real app, a raw keep-alive client, a daemon that answers at once.

The shim (``shim.app.make_app`` under ``web.AppRunner(access_log=None)``, logs configured
as under systemd) runs in its own process on loopback TCP, as ``smppd-shim`` does; this
process is both the load generator (``--concurrency`` keep-alive connections, each
sending the next prebuilt HANDLER post when the answer to the last one is in, with the
headers aiohttp's client sends) and the daemon (an ``RpcServer`` whose ``intake``
answers at once). Every post has its own message_id, number and text, as in a CRM
broadcast. Prints the shim's CPU (utime + stime from /proc) per post for each run and
their median, so a change to the shim's HTTP path shows as a number without the rest
of the rig.

    .venv/bin/python bench/shim_path.py [-n 20000] [--runs 5] [--concurrency 50] [--no-spool] [--plain-site] [--raw-heap]

The shim listens through ``shim.edge.listen`` (connection cap, header deadline), as
``smppd-shim`` does; ``--plain-site`` serves it through ``web.TCPSite`` instead, so the
edge's cost shows as the difference (and figures compare with runs from before the edge).

The shim runs with its spool (shim/spool.py), as ``smppd-shim`` does; ``--no-spool``
runs it without, so the spool's cost on the normal path (the daemon answers in
time: nothing is written) shows as the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import PYTHON, free_port, proc_stats, wait_for_port  # noqa: E402
from smppd.sims.bitrix24 import SimulatedPortal, encode_form  # noqa: E402
from smppd.rpc import RpcServer  # noqa: E402

CODE = "by_bench"
KEY = "bench-handler-key-0123456789abcdef"


def request(port: int, body: bytes) -> bytes:
    """One post as aiohttp's client puts it on the wire (bench/e2e.py's load generator)."""
    head = (
        f"POST /bitrix24/{CODE}?key={KEY} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Accept: */*\r\n"
        "Accept-Encoding: gzip, deflate\r\n"
        "User-Agent: Python/3.11 aiohttp/3.14\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


def prepare(portal: SimulatedPortal, port: int, n: int, first: int) -> list[bytes]:
    out = []
    for i in range(first, first + n):
        _, form = portal.create_message(CODE, f"+37529{1000000 + i % 9000000:07d}",
                                        f"Order {i} is ready for pickup, see you 9:00-21:00")
        out.append(request(port, encode_form(form)))
    return out


async def drive(port: int, posts: list[bytes], concurrency: int) -> dict[int, int]:
    """Send every post; the count of answers by status."""
    queue = iter(posts)
    statuses: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for raw in queue:
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                statuses[status] = statuses.get(status, 0) + 1
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return statuses


async def run(n: int, runs: int, concurrency: int, spool: bool = True, plain_site: bool = False,
              raw_heap: bool = False) -> None:
    ids = itertools.count(1)

    async def intake(params: dict[str, Any]) -> Any:
        return {"id": next(ids), "status": "queued", "duplicate": False}

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    portal = SimulatedPortal(rate=None)  # only builds the forms; its base URL goes into auth[]
    await portal.start()
    with tempfile.TemporaryDirectory(prefix="shim-path-") as tmp:
        sock = str(Path(tmp) / "smppd.sock")
        server = RpcServer(sock, {"intake": intake, "ping": lambda params: asyncio.sleep(0, "pong")})
        await server.start()
        port = free_port()
        shim = subprocess.Popen([PYTHON, __file__, "--serve", sock, str(port),
                                 *(["--spool-dir", str(Path(tmp) / "spool")] if spool else []),
                                 *(["--plain-site"] if plain_site else []),
                                 *(["--raw-heap"] if raw_heap else [])],
                                stdout=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            await drive(port, prepare(portal, port, 2000, 0), concurrency)  # warm-up
            per_post = []
            for r in range(runs):
                posts = prepare(portal, port, n, 10_000 + r * n)
                before, t0 = proc_stats(shim.pid).cpu_s, time.monotonic()
                statuses = await drive(port, posts, concurrency)
                cpu, wall = proc_stats(shim.pid).cpu_s - before, time.monotonic() - t0
                if statuses != {200: n}:
                    raise SystemExit(f"not every post was stored: {statuses}")
                per_post.append(1e6 * cpu / n)
                print(f"run {r + 1}: shim {per_post[-1]:6.1f} µs CPU per post, {n / wall:7.0f} posts/s")
            print(f"median: shim {statistics.median(per_post):6.1f} µs CPU per post ({runs} runs of {n})")
        finally:
            shim.terminate()
            shim.wait()
            await server.close()
            await portal.stop()


async def serve(sock: str, port: int, spool_dir: str | None = None, plain_site: bool = False,
                raw_heap: bool = False) -> None:
    """The shim as ``smppd-shim`` runs it (shim/__main__.py ``serve``), without signals."""
    from aiohttp import web

    from shim import edge
    from shim.app import make_app
    from shim.spool import Spool
    from smppd.ops import heap, logs
    from smppd.rpc import RpcClient

    logs.configure(json=True)
    rpc = RpcClient(sock)
    spool = Spool(spool_dir, max_bytes=1 << 30) if spool_dir else None
    runner = web.AppRunner(make_app(handler_key=KEY, codes={CODE}, rpc=rpc, spool=spool), access_log=None)
    await runner.setup()
    if plain_site:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    else:  # behind the connection cap and header deadline, as smppd-shim serves (shim/__main__.py)
        await edge.listen(runner, edge.EdgeLimits(), host="127.0.0.1", port=port)
    if not raw_heap:
        heap.settle()  # as smppd-shim does when ready: start-up frozen, young objects collected less often
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000, help="posts per run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--no-spool", action="store_true", help="run the shim without its spool")
    p.add_argument("--raw-heap", action="store_true",
                   help="leave the collector as CPython sets it (no smppd.ops.heap.settle): its cost shows as the difference")
    p.add_argument("--plain-site", action="store_true",
                   help="serve through web.TCPSite instead of shim.edge.listen (the figure before the edge existed)")
    p.add_argument("--serve", nargs=2, metavar=("SOCKET", "PORT"), help=argparse.SUPPRESS)
    p.add_argument("--spool-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], int(args.serve[1]), args.spool_dir, args.plain_site, args.raw_heap))
    else:
        asyncio.run(run(args.n, args.runs, args.concurrency, spool=not args.no_spool, plain_site=args.plain_site,
                        raw_heap=args.raw_heap))


if __name__ == "__main__":
    main()
