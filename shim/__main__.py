"""``smppd-shim``: the HTTP front that Bitrix24 posts to."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from aiohttp import web

from smppd import config as config_mod
from smppd import logs, metrics, sdnotify
from smppd.rpc import RpcClient

from . import edge
from .app import HANDLER, make_app
from .dlr import dlr_keys

log = structlog.get_logger("shim")


def reload(app: web.Application, cfg: config_mod.Config, path: str) -> config_mod.Config:
    """SIGHUP: take the new handler key and CODEs; listen addresses need a restart."""
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
    app[HANDLER].reconfigure(handler_key=new.shim.handler_key, codes=frozenset(new.senders))
    log.info("config_reloaded", codes=sorted(new.senders))
    return new


async def serve(cfg: config_mod.Config, host: str, port: int, path: str | None = None) -> None:
    rpc = RpcClient(cfg.daemon.socket_path)
    app = make_app(handler_key=cfg.shim.handler_key, codes=frozenset(cfg.senders), rpc=rpc,
                   dlr_keys=dlr_keys(cfg))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = await edge.listen(runner, edge.EdgeLimits(), host=host, port=port)  # conn cap, header deadline
    metrics_runner = await metrics.serve(*cfg.shim.metrics) if cfg.shim.metrics else None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    current = cfg

    def on_hup() -> None:
        nonlocal current
        current = reload(app, current, path) if path else current

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    sdnotify.notify("READY=1")
    await stopping.wait()
    sdnotify.notify("STOPPING=1")
    await listener.close()
    await runner.cleanup()
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
    asyncio.run(serve(cfg, cfg.shim.host, cfg.shim.port, args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
