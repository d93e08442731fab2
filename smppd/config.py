"""config.toml → typed, frozen objects.

A bad config must stop start-up with one line that names the key and the
problem (``route.life.port: must be an integer from 1 to 65535``), because the
person reading it is an admin at a terminal, not a developer at a debugger.
Secrets are ``repr=False`` so a config object can be logged safely.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

CODE_RE = re.compile(r"^[a-z0-9.\-_]+$")  # Bitrix24's rule for provider CODEs
ALNUM_SENDER_RE = re.compile(r"^[A-Za-z0-9 .\-_&!'+]{1,11}$")
NUMERIC_SENDER_RE = re.compile(r"^\+?[0-9]{1,15}$")
BIND_MODES = ("transceiver", "transmitter", "receiver")
ID_BASES = ("as-is", "hex", "dec")


class ConfigError(ValueError):
    """A config problem, always tied to the key that has it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class DaemonConfig:
    socket_path: str
    database: str
    socket_group: str | None = None
    metrics: tuple[str, int] | None = None  # loopback host:port of /metrics, None = off


@dataclass(frozen=True)
class ShimConfig:
    host: str
    port: int
    handler_key: str = field(repr=False)
    public_url: str | None = None
    metrics: tuple[str, int] | None = None


@dataclass(frozen=True)
class PortalConfig:
    """One Bitrix24 portal (one install of our local app), keyed by member_id.

    The tokens here only seed the store: once the app install event arrives,
    or a refresh rotates them, the store's copy wins.
    """

    member_id: str
    domain: str
    client_endpoint: str
    server_endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    application_token: str = field(repr=False)
    access_token: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)
    rate: float = 2.0
    burst: int = 50


@dataclass(frozen=True)
class SmppRouteConfig:
    """An SMPP operator connection (life:), MTS, A1)."""

    name: str
    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    system_type: str = ""
    bind_mode: str = "transceiver"
    window: int = 10
    throughput: float = 0.0  # segments per second, 0 = no cap
    enquire_link_interval: float = 30.0
    response_timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    receipt_id_base: str = "as-is"
    registered_delivery: int = 1
    kind: str = "smpp"


RouteConfig = SmppRouteConfig  # HTTP providers join this union later


@dataclass(frozen=True)
class SenderConfig:
    """A Bitrix24 provider CODE: which route it goes out on and under which name."""

    code: str
    route: str
    sender_id: str
    name: str
    portal: str | None = None  # member_id, when the CODE belongs to one portal only


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    shim: ShimConfig
    portals: Mapping[str, PortalConfig]
    routes: Mapping[str, RouteConfig]
    senders: Mapping[str, SenderConfig]


def load(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError naming the key."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"not valid TOML: {e}") from None
    return parse(raw)


def load_daemon(path: str | Path) -> DaemonConfig:
    """Only ``[daemon]``: what the admin commands need (the socket, the database).

    They must work for an admin who cannot read the secrets the rest of the
    file refers to.
    """
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"not valid TOML: {e}") from None
    return _daemon(_table(raw, "daemon"))


def read_env_file(path: str | Path) -> dict[str, str]:
    """``NAME=value`` lines of a systemd EnvironmentFile (comments, blank lines and quotes allowed)."""
    out = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name.strip()):
            raise ConfigError(f"{path}:{n}", "must be NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name.strip()] = value
    return out


def parse(raw: Mapping[str, Any]) -> Config:
    """Validate an already-decoded TOML document."""
    _only(raw, "", {"daemon", "shim", "portal", "route", "sender"})
    daemon = _daemon(_table(raw, "daemon"))
    shim = _shim(_table(raw, "shim"))
    portals = _portals(raw.get("portal", []))
    routes = {name: _route(name, t) for name, t in _table(raw, "route").items()}
    senders = {code: _sender(code, t) for code, t in _table(raw, "sender").items()}
    if not senders:
        raise ConfigError("sender", "at least one [sender.<CODE>] is needed")
    for code, s in senders.items():
        if s.route not in routes:
            raise ConfigError(f"sender.{code}.route", f"no route named {s.route!r}")
        if s.portal is not None and s.portal not in portals:
            raise ConfigError(f"sender.{code}.portal", f"no portal with member_id {s.portal!r}")
    return Config(
        daemon=daemon,
        shim=shim,
        portals=MappingProxyType(portals),
        routes=MappingProxyType(routes),
        senders=MappingProxyType(senders),
    )


# --- sections -------------------------------------------------------------------


def _daemon(t: Mapping[str, Any]) -> DaemonConfig:
    _only(t, "daemon", {"socket", "database", "socket_group", "metrics"})
    return DaemonConfig(
        socket_path=_str(t, "daemon", "socket"),
        database=_str(t, "daemon", "database"),
        socket_group=_str(t, "daemon", "socket_group", default=None),
        metrics=_metrics(t, "daemon"),
    )


def _shim(t: Mapping[str, Any]) -> ShimConfig:
    _only(t, "shim", {"listen", "handler_key", "public_url", "metrics"})
    listen = _str(t, "shim", "listen")
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("shim.listen", f"must be host:port, got {listen!r}")
    key = _secret(t, "shim", "handler_key")
    if len(key) < 24:
        raise ConfigError("shim.handler_key", "must be at least 24 random characters")
    return ShimConfig(
        host=host.strip("[]"),
        port=int(port),
        handler_key=key,
        public_url=_str(t, "shim", "public_url", default=None),
        metrics=_metrics(t, "shim"),
    )


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _metrics(t: Mapping[str, Any], section: str) -> tuple[str, int] | None:
    """``metrics = "127.0.0.1:9465"``: loopback only, the figures are not for the internet."""
    v = _str(t, section, "metrics", default=None)
    if v is None:
        return None
    host, sep, port = v.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{section}.metrics", f"must be host:port, got {v!r}")
    if host not in LOOPBACK:
        raise ConfigError(f"{section}.metrics", f"must listen on loopback (127.0.0.1 or [::1]), got {host!r}")
    return host, int(port)


def _portals(items: Any) -> dict[str, PortalConfig]:
    if not isinstance(items, list):
        raise ConfigError("portal", "must be an array of tables: [[portal]]")
    portals: dict[str, PortalConfig] = {}
    for i, t in enumerate(items):
        key = f"portal[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(key, "must be a table")
        _only(t, key, {f.name for f in PortalConfig.__dataclass_fields__.values()})
        p = PortalConfig(
            member_id=_str(t, key, "member_id"),
            domain=_str(t, key, "domain"),
            client_endpoint=_url(t, key, "client_endpoint"),
            server_endpoint=_url(t, key, "server_endpoint"),
            client_id=_str(t, key, "client_id"),
            client_secret=_secret(t, key, "client_secret"),
            application_token=_secret(t, key, "application_token"),
            access_token=_secret(t, key, "access_token", default=""),
            refresh_token=_secret(t, key, "refresh_token", default=""),
            rate=_number(t, key, "rate", default=2.0, low=0.01),
            burst=_int(t, key, "burst", default=50, low=1, high=10_000),
        )
        if p.member_id in portals:
            raise ConfigError(f"{key}.member_id", f"duplicate member_id {p.member_id!r}")
        portals[p.member_id] = p
    return portals


def _route(name: str, t: Any) -> RouteConfig:
    key = f"route.{name}"
    if not isinstance(t, dict):
        raise ConfigError(key, "must be a table")
    kind = _str(t, key, "kind", default="smpp")
    if kind != "smpp":
        raise ConfigError(f"{key}.kind", f"unknown route kind {kind!r} (known: smpp)")
    _only(t, key, {f.name for f in SmppRouteConfig.__dataclass_fields__.values()} - {"name"})
    bind_mode = _str(t, key, "bind_mode", default="transceiver")
    if bind_mode not in BIND_MODES:
        raise ConfigError(f"{key}.bind_mode", f"must be one of {', '.join(BIND_MODES)}")
    id_base = _str(t, key, "receipt_id_base", default="as-is")
    if id_base not in ID_BASES:
        raise ConfigError(f"{key}.receipt_id_base", f"must be one of {', '.join(ID_BASES)}")
    system_id = _str(t, key, "system_id")
    if len(system_id) > 15:
        raise ConfigError(f"{key}.system_id", "at most 15 characters (SMPP 3.4)")
    password = _secret(t, key, "password")
    if len(password) > 8:
        raise ConfigError(f"{key}.password", "at most 8 characters (SMPP 3.4)")
    reconnect_min = _number(t, key, "reconnect_min", default=1.0, low=0.01)
    reconnect_max = _number(t, key, "reconnect_max", default=60.0, low=reconnect_min)
    return SmppRouteConfig(
        name=name,
        host=_str(t, key, "host"),
        port=_int(t, key, "port", low=1, high=65535),
        system_id=system_id,
        password=password,
        system_type=_str(t, key, "system_type", default=""),
        bind_mode=bind_mode,
        window=_int(t, key, "window", default=10, low=1, high=10_000),
        throughput=_number(t, key, "throughput", default=0.0, low=0.0),
        enquire_link_interval=_number(t, key, "enquire_link_interval", default=30.0, low=1.0),
        response_timeout=_number(t, key, "response_timeout", default=10.0, low=0.1),
        reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        receipt_id_base=id_base,
        registered_delivery=_int(t, key, "registered_delivery", default=1, low=0, high=0xFF),
    )


def _sender(code: str, t: Any) -> SenderConfig:
    key = f"sender.{code}"
    if not CODE_RE.match(code):
        raise ConfigError(key, "a CODE may only have a-z, 0-9, '.', '-' and '_' (Bitrix24's rule)")
    if not isinstance(t, dict):
        raise ConfigError(key, "must be a table")
    _only(t, key, {"route", "sender_id", "name", "portal"})
    sender_id = _str(t, key, "sender_id")
    if not (ALNUM_SENDER_RE.match(sender_id) or NUMERIC_SENDER_RE.match(sender_id)):
        raise ConfigError(
            f"{key}.sender_id",
            "must be up to 11 Latin letters/digits, or a number of up to 15 digits",
        )
    return SenderConfig(
        code=code,
        route=_str(t, key, "route"),
        sender_id=sender_id,
        name=_str(t, key, "name", default=code),
        portal=_str(t, key, "portal", default=None),
    )


# --- typed readers --------------------------------------------------------------

_MISSING = object()


def _only(t: Mapping[str, Any], key: str, allowed: set[str]) -> None:
    for k in t:
        if k not in allowed:
            where = f"{key}.{k}" if key else k
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(allowed))})")


def _table(t: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    v = t.get(name)
    if v is None:
        raise ConfigError(name, "missing section")
    if not isinstance(v, dict):
        raise ConfigError(name, "must be a table")
    return v


def _get(t: Mapping[str, Any], key: str, name: str, default: Any) -> Any:
    v = t.get(name, default)
    if v is _MISSING:
        raise ConfigError(f"{key}.{name}", "missing")
    return v


def _str(t: Mapping[str, Any], key: str, name: str, default: Any = _MISSING) -> Any:
    v = _get(t, key, name, default)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, str):
        raise ConfigError(f"{key}.{name}", f"must be a string, got {type(v).__name__}")
    if default is _MISSING and not v:
        raise ConfigError(f"{key}.{name}", "must not be empty")
    return v


ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _secret(t: Mapping[str, Any], key: str, name: str, default: Any = _MISSING) -> Any:
    """A secret, given inline or as ``"${NAME}"``: read from the environment.

    The reference form keeps secrets out of config.toml (and out of the unit
    files): systemd passes them from a root-only ``EnvironmentFile=``.
    """
    v = _str(t, key, name, default)
    m = ENV_REF.match(v) if isinstance(v, str) else None
    if m is None:
        return v
    value = os.environ.get(m[1])
    if not value:
        raise ConfigError(f"{key}.{name}", f"environment variable {m[1]} is not set (see EnvironmentFile=)")
    return value


def _url(t: Mapping[str, Any], key: str, name: str) -> str:
    v = _str(t, key, name)
    if not v.startswith(("http://", "https://")):
        raise ConfigError(f"{key}.{name}", f"must be an http(s) URL, got {v!r}")
    return v if v.endswith("/") else v + "/"


def _int(t: Mapping[str, Any], key: str, name: str, default: Any = _MISSING, *, low: int, high: int) -> int:
    v = _get(t, key, name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise ConfigError(f"{key}.{name}", f"must be an integer from {low} to {high}, got {v!r}")
    return v


def _number(t: Mapping[str, Any], key: str, name: str, default: Any = _MISSING, *, low: float) -> float:
    v = _get(t, key, name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
        raise ConfigError(f"{key}.{name}", f"must be a number ≥ {low}, got {v!r}")
    return float(v)
