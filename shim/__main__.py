"""``smppd-shim``: the HTTP front that Bitrix24 posts to."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

from smppd import config as config_mod
from smppd import logs
from smppd.rpc import RpcClient

from .app import make_app
from .dlr import dlr_keys


async def serve(cfg: config_mod.Config, host: str, port: int) -> None:
    rpc = RpcClient(cfg.daemon.socket_path)
    app = make_app(handler_key=cfg.shim.handler_key, codes=frozenset(cfg.senders), rpc=rpc,
                   dlr_keys=dlr_keys(cfg))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await runner.cleanup()
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
    asyncio.run(serve(cfg, cfg.shim.host, cfg.shim.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
