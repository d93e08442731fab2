"""``smppd-shim``: the HTTP front that Bitrix24 posts to."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

import structlog

from aiohttp import web

from smppd import config as config_mod
from smppd.ops import heap, logs, scrape, sdnotify
from smppd.ops.listenfds import passed_socket
from smppd.rpc import RpcClient

from . import edge
from .app import DOORS, HANDLER, make_app
from .auth import DoorConfig
from .dlr import dlr_keys
from .spool import Spool, SpoolError

log = structlog.get_logger("shim")

STOP_GRACE = 1.0
"""Seconds a stopping shim keeps serving the connections it already accepted."""


def reload(app: web.Application, cfg: config_mod.Config, path: str) -> config_mod.Config:
    """SIGHUP: take the new keys of every door, the address list, the ``ts``
    window and CODEs, together; listen addresses need a restart."""
    try:
        new = config_mod.load(path)
    except config_mod.ConfigError as e:
        log.error("config_reload_failed", error=str(e), hint="the running config stays in force")
        return cfg
    if (new.shim.host, new.shim.port, new.shim.metrics) != (cfg.shim.host, cfg.shim.port, cfg.shim.metrics) \
            or new.daemon.socket_path != cfg.daemon.socket_path:
        log.error("config_reload_refused", restart_needed=["shim.listen", "shim.metrics", "daemon.socket"],
                  hint="restart smppd-shim to apply these; nothing was changed")
        return cfg
    if (new.shim.spool_dir, new.shim.spool_max_bytes, new.shim.spool_after) \
            != (cfg.shim.spool_dir, cfg.shim.spool_max_bytes, cfg.shim.spool_after):
        log.error("config_reload_refused",
                  restart_needed=["shim.spool_dir", "shim.spool_max_bytes", "shim.spool_after"],
                  hint="restart smppd-shim to apply these (the spool is kept); nothing was changed")
        return cfg
    app[DOORS].rotate(DoorConfig.from_config(new, dlr_keys(new)))
    app[HANDLER].reconfigure(codes=frozenset(new.senders))
    log.info("config_reloaded", codes=sorted(new.senders))
    return new


async def serve(cfg: config_mod.Config, host: str, port: int, path: str | None = None) -> None:
    rpc = RpcClient(cfg.daemon.socket_path)
    spool = Spool(config_mod.spool_dir(cfg), max_bytes=cfg.shim.spool_max_bytes)
    app = make_app(handler_key=cfg.shim.handler_key, codes=frozenset(cfg.senders), rpc=rpc,
                   doors=DoorConfig.from_config(cfg, dlr_keys(cfg)), spool=spool, spool_after=cfg.shim.spool_after)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # systemd's smppd-shim.socket, when it passed one, outlives this process: posts
    # wait in its backlog while the shim restarts instead of being refused.
    passed = passed_socket((socket.AF_INET, socket.AF_INET6), "smppd-shim")
    # conn cap, header deadline (shim/edge.py), on the passed socket or our own
    listener = await edge.listen(runner, edge.EdgeLimits(), host=host, port=port, sock=passed)
    metrics_runner = await scrape.serve(*cfg.shim.metrics) if cfg.shim.metrics else None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    current = cfg

    def on_hup() -> None:
        nonlocal current
        current = reload(app, current, path) if path else current
        heap.settle()  # the old config's objects are collectable again (smppd/ops/heap.py)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    heap.settle()  # start-up's objects out of the collector's way (smppd/ops/heap.py)
    sdnotify.notify("READY=1")
    await stopping.wait()
    sdnotify.notify("STOPPING=1")
    listener.stop_accepting()  # no new connections: they wait in the (passed) socket's backlog for the next shim
    app[HANDLER].closing()
    # aiohttp's cleanup closes every connection without a request under way, and a
    # request may be on its way on a connection accepted a moment ago: give those
    # requests time to arrive and be answered (each answer now closes its connection).
    await asyncio.sleep(STOP_GRACE)
    await runner.cleanup()
    await listener.close()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    await rpc.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="smppd-shim", description="HTTP front for Bitrix24 HANDLER posts.")
    p.add_argument("-c", "--config", default="/etc/smppd/config.toml")
    args = p.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"smppd-shim: config error: {e}", file=sys.stderr)
        return 2
    logs.configure()
    try:
        asyncio.run(serve(cfg, cfg.shim.host, cfg.shim.port, args.config))
    except SpoolError as e:  # another shim has this spool directory
        print(f"smppd-shim: shim.spool_dir: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
