"""systemd's notify protocol, without a dependency: datagrams to $NOTIFY_SOCKET.

``Type=notify`` lets systemd (and whatever is ordered ``After=smppd.service``,
such as the shim) wait until the store is open and the socket listens, not
merely until the process exists.  ``WatchdogSec=`` restarts a daemon whose
event loop hangs: the ping comes from the loop itself, so a loop stuck in a
blocking call stops pinging.

Protocol: sd_notify(3).  The socket is a Unix datagram socket; a path that
starts with ``@`` is in the abstract namespace.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one state (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=…``).

    Returns False when not run under systemd (no NOTIFY_SOCKET) or the send
    failed; never raises, because a missing supervisor must not stop the daemon.
    """
    path = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify_failed", state=state.split("=", 1)[0], error=str(e))
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when not asked for."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (e.g. a wrapper that exec'd us)
    return int(usec) / 1e6 / 2


async def watchdog(interval: float, healthy: Callable[[], bool], env: Mapping[str, str] | None = None) -> None:
    """Ping systemd every ``interval`` seconds while ``healthy()`` says so.

    An unhealthy daemon (e.g. its store writer died) stops pinging, and
    systemd restarts it after WatchdogSec -- better than a daemon that
    answers the socket but can no longer commit anything.
    """
    while True:
        if healthy():
            notify("WATCHDOG=1", env)
        else:
            log.error("watchdog_unhealthy")
        await asyncio.sleep(interval)
