"""Sockets passed by systemd (socket activation), without a dependency.

Why: a socket that belongs to systemd (``smppd.socket``, ``smppd-shim.socket``)
outlives the process serving it, so while the daemon or the shim restarts,
crashes or is upgraded, connections wait in the kernel's backlog instead of
being refused.  Both programs still bind the socket themselves when none was
passed, so they run the same without systemd.

Protocol: sd_listen_fds(3).  ``LISTEN_PID`` must be our pid (the variables
were meant for us, not inherited by accident), ``LISTEN_FDS`` says how many
descriptors start at fd 3, ``LISTEN_FDNAMES`` optionally names them
(colon-separated).  The variables are removed once read, so a child we start
never takes our sockets for its own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

__all__ = ["FIRST_FD", "listen_fds", "passed_socket"]

FIRST_FD = 3
_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds(env: MutableMapping[str, str] | None = None, pid: int | None = None) -> list[tuple[int, str]]:
    """The passed descriptors as ``(fd, name)``; ``[]`` when none were passed
    to this process.  The name is ``"unknown"`` when systemd gave none (its
    own default)."""
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    listen_pid, count, names = (env.pop(name, None) for name in _VARS)
    if listen_pid is None or count is None:
        return []
    try:
        if int(listen_pid) != pid:
            return []
        n = int(count)
    except ValueError:
        return []
    labels = names.split(":") if names else []
    return [(FIRST_FD + i, labels[i] if i < len(labels) and labels[i] else "unknown") for i in range(max(n, 0))]


def passed_socket(
    families: tuple[socket.AddressFamily, ...], name: str | None = None, *,
    env: MutableMapping[str, str] | None = None, pid: int | None = None,
) -> socket.socket | None:
    """The first passed listening socket of one of ``families`` (and
    ``name``, when systemd named it), or None so the caller binds its own.
    Set non-blocking and close-on-exec, as asyncio expects.  Read once: the
    variables are gone after the first call."""
    for fd, label in listen_fds(env, pid):
        if name is not None and label not in (name, "unknown"):
            continue
        sock = socket.socket(fileno=fd)
        if sock.family not in families:
            sock.detach()
            continue
        sock.setblocking(False)
        sock.set_inheritable(False)
        return sock
    return None
