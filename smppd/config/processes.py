"""``[daemon]`` and ``[shim]``: what each process listens on, where it keeps its state,
and what the shim's doors accept."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from .readers import MIN_KEY_LENGTH, ConfigError, choice, get, integer, number, only, secret, string

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NO_AUTH_CHOICES = ("accept", "refuse")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class DaemonConfig:
    socket_path: str
    database: str
    socket_group: str | None = None
    metrics: tuple[str, int] | None = None  # loopback host:port of /metrics, None = off
    # A full disk (issue 19 item 3): the free space under the database below which the
    # SmppdDiskSpaceLow alert fires (smppd_store_free_bytes vs _threshold_bytes), and how
    # many receipts may wait in memory while the store cannot write.
    min_free_mb: int = 500
    max_held_receipts: int = 10_000
    # Several daemons on one PostgreSQL (README "Two machines"): this node's name in the
    # lease table, `smppd status` and the metrics; "" = the host name.
    node: str = ""


@dataclass(frozen=True)
class ShimConfig:
    host: str
    port: int
    handler_key: str = field(repr=False)
    public_url: str | None = None
    metrics: tuple[str, int] | None = None
    # issue 18: what the doors accept (README "What each door checks")
    posts_without_auth: str = "accept"  # "accept" | "refuse": HANDLER posts with no auth[] block
    ts_window: float = 86400.0  # seconds a post's ts may be from now, either way; 0 = not checked
    allow_from: tuple[IPNetwork, ...] = ()  # Bitrix24 queue-server networks; () = any address
    # The shim's durable spool (shim/spool.py): where, how big at most, and how long
    # a post waits for the daemon's commit before it is spooled instead.
    spool_dir: str = ""  # "" = $STATE_DIRECTORY/spool under systemd, else shim-spool next to the database
    spool_max_bytes: int = 1024 * 1024 * 1024
    spool_after: float = 0.5
    # a rotation's old key, still accepted on /bitrix24/ and /bitrix24-app until removed (README)
    handler_key_previous: str = field(default="", repr=False)


def daemon(t: Mapping[str, Any]) -> DaemonConfig:
    only(t, "daemon", {"socket", "database", "socket_group", "metrics", "min_free_mb", "max_held_receipts", "node"})
    return DaemonConfig(
        socket_path=string(t, "daemon", "socket"),
        database=string(t, "daemon", "database"),
        socket_group=string(t, "daemon", "socket_group", default=DaemonConfig.socket_group),
        metrics=_metrics(t, "daemon"),
        min_free_mb=integer(t, "daemon", "min_free_mb", default=DaemonConfig.min_free_mb, low=0, high=10**7),
        max_held_receipts=integer(t, "daemon", "max_held_receipts", default=DaemonConfig.max_held_receipts,
                                  low=0, high=10**7),
        node=string(t, "daemon", "node", default=DaemonConfig.node),
    )


def shim(t: Mapping[str, Any]) -> ShimConfig:
    only(t, "shim", {"listen", "handler_key", "public_url", "metrics", "posts_without_auth", "ts_window",
                     "allow_from", "spool_dir", "spool_max_bytes", "spool_after", "handler_key_previous"})
    listen = string(t, "shim", "listen")
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("shim.listen", f"must be host:port, got {listen!r}")
    key = secret(t, "shim", "handler_key")
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError("shim.handler_key", f"must be at least {MIN_KEY_LENGTH} random characters")
    return ShimConfig(
        host=host.strip("[]"),
        port=int(port),
        handler_key=key,
        public_url=string(t, "shim", "public_url", default=ShimConfig.public_url),
        metrics=_metrics(t, "shim"),
        **_doors(t, key),
        **_spool(t),
    )


def _doors(t: Mapping[str, Any], handler_key: str) -> dict[str, Any]:
    """The issue-18 door keys of ``[shim]``: who may post, and how old a post may be."""
    no_auth = choice(t, "shim", "posts_without_auth", NO_AUTH_CHOICES, default=ShimConfig.posts_without_auth)
    raw = get(t, "shim", "allow_from", [])
    if not isinstance(raw, list):
        raise ConfigError("shim.allow_from", "must be a list of addresses or networks (CIDR)")
    networks = []
    for item in raw:
        try:
            if not isinstance(item, str):  # ip_network(24) would be 0.0.0.24
                raise TypeError(item)
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except (TypeError, ValueError):
            raise ConfigError("shim.allow_from", f"not an address or network (CIDR): {item!r}") from None
    previous = secret(t, "shim", "handler_key_previous", default=ShimConfig.handler_key_previous)
    if previous and len(previous) < MIN_KEY_LENGTH:
        raise ConfigError("shim.handler_key_previous",
                          f"must be at least {MIN_KEY_LENGTH} random characters (the old handler_key)")
    if previous and previous == handler_key:
        raise ConfigError("shim.handler_key_previous", "is the same as handler_key: put the old key here")
    return dict(posts_without_auth=no_auth,
                ts_window=number(t, "shim", "ts_window", default=ShimConfig.ts_window, low=0.0),
                allow_from=tuple(networks), handler_key_previous=previous)


def _spool(t: Mapping[str, Any]) -> dict[str, Any]:
    after = number(t, "shim", "spool_after", default=ShimConfig.spool_after, low=0.01)
    if after > 30:
        raise ConfigError("shim.spool_after", f"must be at most 30 seconds, got {after!r}")
    return {
        "spool_dir": string(t, "shim", "spool_dir", default=ShimConfig.spool_dir),
        "spool_max_bytes": integer(t, "shim", "spool_max_bytes", default=ShimConfig.spool_max_bytes,
                                   low=1024 * 1024, high=2**50),
        "spool_after": after,
    }


def _metrics(t: Mapping[str, Any], section: str) -> tuple[str, int] | None:
    """``metrics = "127.0.0.1:9465"``: loopback only, the figures are not for the internet."""
    v = string(t, section, "metrics", default=None)
    if v is None:
        return None
    host, sep, port = v.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{section}.metrics", f"must be host:port, got {v!r}")
    if host not in LOOPBACK:
        raise ConfigError(f"{section}.metrics", f"must listen on loopback (127.0.0.1 or [::1]), got {host!r}")
    return host, int(port)
