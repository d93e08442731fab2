"""Who may use the daemon's socket: the peer-credential check of every accepted connection.

The socket file is mode 0660 (optionally group-owned by a configured
group).  In addition each accepted connection is checked with
``SO_PEERCRED``: root, the daemon's own uid, and members of the socket
file's group are let in (see ``peer_allowed``).  The file mode alone would
do on Linux, but the explicit check also covers the moment between
``bind()`` and ``chmod()`` and platforms that ignore socket file modes.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Collection

import structlog

__all__ = ["is_allowed", "peer_allowed"]

log = structlog.get_logger(__name__)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def is_allowed(
    uid: int,
    gid: int,
    socket_gid: int,
    *,
    own_uid: int,
    groups: Collection[int] = (),
) -> bool:
    """The access rule, on plain values so that it can be tested for any uid.

    root and the daemon's own user may always connect; anyone else must be
    in the socket file's group, as primary or supplementary group, which is
    the same set of users the file mode 0660 lets through.
    """
    if uid == 0 or uid == own_uid:
        return True
    return gid == socket_gid or socket_gid in groups


def _peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def _supplementary_groups(pid: int) -> frozenset[int]:
    """The peer's supplementary groups from /proc.

    SO_PEERCRED carries only the primary gid.  /proc is read after the fact,
    so a peer that exited and whose pid was reused could be judged by another
    process's groups; that needs a peer already able to connect, so we accept
    it.  Any failure reads as "no groups" and the peer is refused.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def peer_allowed(sock: socket.socket, socket_gid: int) -> bool:
    """Decide whether the process at the other end of ``sock`` may use the API.

    Fails closed: if the credentials cannot be read the peer is refused.
    Refusals are logged with the peer's pid and uid, since they mean either
    a misconfigured group or someone probing the socket.
    """
    try:
        pid, uid, gid = _peer_credentials(sock)
    except (OSError, AttributeError, struct.error):
        log.warning("rpc.peer_credentials_unreadable", exc_info=True)
        return False
    own_uid = os.getuid()
    if is_allowed(uid, gid, socket_gid, own_uid=own_uid):
        return True
    groups = _supplementary_groups(pid)
    if is_allowed(uid, gid, socket_gid, own_uid=own_uid, groups=groups):
        return True
    log.warning("rpc.peer_refused", pid=pid, uid=uid, gid=gid, socket_gid=socket_gid)
    return False

