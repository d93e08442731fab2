"""``smppd run``: the daemon as a systemd service.

Start: the daemon opens its store and its socket, then tells systemd
``READY=1`` (``Type=notify``), so ``smppd-shim.service`` ordered after it
starts against a socket that answers.  While it runs it pings the watchdog
from the event loop.  SIGHUP reloads the config (``smppd.ops.reload``); SIGTERM
and SIGINT stop it: ``STOPPING=1``, the socket closes first, routes drain
their windows and unbind, the store closes last.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog

from .. import config as config_mod
from ..ops import heap, reload, sdnotify
from ..daemon import Daemon

log = structlog.get_logger(__name__)


def healthy(daemon: Daemon) -> bool:
    """The daemon can still commit: its store writer task is alive."""
    return daemon.store.writing


async def run_daemon(cfg: config_mod.Config, config_path: str) -> bool:
    """Run until SIGTERM/SIGINT; False when the daemon could not start or an essential task
    crashed (the log says why), so that systemd's Restart=on-failure starts it again."""
    daemon = Daemon(cfg)
    try:
        await daemon.start()
    except OSError as e:  # a port or the socket path taken, a directory not writable
        log.error("daemon_start_failed", error=str(e))
        await daemon.stop()
        return False
    heap.settle()  # start-up's objects out of the collector's way (ops/heap.py)
    sdnotify.notify(f"READY=1\nSTATUS=serving {len(daemon.routes)} routes on {cfg.daemon.socket_path}")
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    interval = sdnotify.watchdog_interval()
    if interval is not None:
        tasks.append(asyncio.create_task(sdnotify.watchdog(interval, lambda: healthy(daemon)), name="watchdog"))
    reloading = asyncio.Lock()

    def on_hup() -> None:
        tasks.append(asyncio.create_task(reload_config(daemon, config_path, reloading), name="reload"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    waits = [asyncio.create_task(stopping.wait()), asyncio.create_task(daemon.crashed.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    sdnotify.notify("STOPPING=1")
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await daemon.stop()
    return not daemon.crashed.is_set()


async def reload_config(daemon: Daemon, config_path: str, lock: asyncio.Lock | None = None) -> reload.Plan | None:
    """Re-read the config file and apply it; a bad file changes nothing."""
    async with lock or asyncio.Lock():
        sdnotify.notify("RELOADING=1")
        try:
            try:
                new = config_mod.load(config_path)
            except config_mod.ConfigError as e:
                log.error("config_reload_failed", error=str(e), hint="the running config stays in force")
                return None
            try:
                return await reload.apply(daemon, new)
            except Exception as e:
                # Half applied (a route stopped, its successor not running): a daemon that stays
                # up would look healthy while a provider silently sends nothing. Everything is in
                # the store, so exit and let systemd start us with the new config.
                log.error("config_reload_crashed", error=repr(e),
                          hint="the daemon exits; systemd restarts it with the new config")
                daemon.crashed.set()
                return None
        finally:
            heap.settle()  # the old config's objects are collectable again, the new ones frozen
            sdnotify.notify("READY=1")
