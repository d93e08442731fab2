"""config.toml → typed, frozen objects.

A bad config must stop start-up with one line that names the key and the
problem (``route.life.port: must be an integer from 1 to 65535``), because the
person reading it is an admin at a terminal, not a developer at a debugger.
Secrets are ``repr=False`` so a config object can be logged safely.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

CODE_RE = re.compile(r"^[a-z0-9.\-_]+$")  # Bitrix24's rule for provider CODEs
ALNUM_SENDER_RE = re.compile(r"^[A-Za-z0-9 .\-_&!'+]{1,11}$")
NUMERIC_SENDER_RE = re.compile(r"^\+?[0-9]{1,15}$")
BIND_MODES = ("transceiver", "transmitter", "receiver", "pair")
ID_BASES = ("as-is", "hex", "dec")
RECEIPT_ID_BASES = ("auto", *ID_BASES)  # issue 14.6: auto tries as-is, then the hex<->dec readings
MULTIPART_RECEIPTS = ("all", "first", "last", "any")
LONG_METHODS = ("udh8", "udh16", "sar", "payload")
LATIN_CODINGS = (0x00, 0x01, 0x03)
MESSAGE_TYPES = ("transactional", "marketing")
DUPLICATE_OUTCOMES = ("follow-first", "failed")
# Countries a route of each kind takes when the config names none: the Belarusian
# operators carry +375 only (their contracts and sender registrations are national).
# The Belarusian operators take +375 only unless told otherwise; the aggregators
# (SMS.ru, SMSC) route internationally.
DEFAULT_COUNTRIES: dict[str, frozenset[str] | None] = {"smpp": frozenset({"BY"}), "smsru": None, "smsc": None}
ANY_COUNTRY = "*"


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NO_AUTH_CHOICES = ("accept", "refuse")
UNKNOWN_RECEIPTS_MAX = 1000  # per HTTP route: callbacks kept for ids whose send answer is not in yet
UNKNOWN_RECEIPTS_TTL = 600.0  # seconds such a callback waits for its id before it is dropped


class ConfigError(ValueError):
    """A config problem, always tied to the key that has it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class DaemonConfig:
    socket_path: str
    database: str = field(repr=False)  # a PostgreSQL URL carries a password: "${NAME}" allowed
    socket_group: str | None = None
    metrics: tuple[str, int] | None = None  # loopback host:port of /metrics, None = off
    # A full disk (issue 19 item 3): the free space under the database below which the
    # SmppdDiskSpaceLow alert fires (smppd_store_free_bytes vs _threshold_bytes), and how
    # many receipts may wait in memory while the store cannot write.
    min_free_mb: int = 500
    max_held_receipts: int = 10_000
    # Several daemons on one PostgreSQL (README "Two machines"): this node's name in the
    # lease table and in `smppd status`; "" = the host name.
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
class AppConfig:
    """Our local application as created on one portal, before (and after) it is installed.

    The install event brings member_id and tokens; this entry is what makes us trust it:
    the event's endpoints must be these, and its token must answer ``app.info`` with this
    client_id on this client_endpoint (never on one taken from the event).
    """

    domain: str
    client_id: str
    client_secret: str = field(repr=False)
    client_endpoint: str = ""  # default https://<domain>/rest/
    server_endpoint: str = "https://oauth.bitrix.info/rest/"
    rate: float = 2.0
    burst: int = 50


# Maximum message lengths (issue 19 item 7), from reference/providers.md: SMS.ru answers
# error 205 above 8 parts; SMSC.ru's send.php takes `mes` of at most 1000 characters
# (15 parts of 67 Cyrillic characters). SMPP operators commonly accept 10 (max_parts).
SMPP_MAX_PARTS = 10
SMSRU_MAX_PARTS = 8
SMSC_MAX_CHARS = 1000
SMSC_MAX_PARTS = 15


@dataclass(frozen=True)
class AppEventsConfig:
    """``[app_events]``: how long and how many unproven events for unknown domains are kept.

    Why bounded: anyone holding the URL key can post installs for made-up domains; each is
    kept (a genuine one may arrive before its ``[[app]]`` is written) but never more than
    ``max_unknown`` at once, nor longer than ``unknown_max_age`` seconds.
    """

    max_unknown: int = 20
    unknown_max_age: float = 7 * 86400.0


_DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+(:[0-9]{1,5})?")


def normalize_domain(value: str) -> str | None:
    """A portal's ``host[:port]`` as Bitrix24 reports it in ``auth[domain]``, lower-cased; None if
    it is not one. Why a port: an on-premise portal on a non-standard port reports
    ``crm.example.by:8443``, and that is the string every event and post carries."""
    domain = value.strip().lower()
    if not _DOMAIN_RE.fullmatch(domain):
        return None
    host, _, port = domain.partition(":")
    if port and not 0 < int(port) < 65536:
        return None
    return domain


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
    receipt_id_base: str = "auto"
    registered_delivery: int = 1
    kind: str = "smpp"
    # issue 3: operator profile knobs (see config.toml for what each one means)
    binds: int = 1  # transceivers, or transmitter + receiver pairs with bind_mode = "pair"
    resp_id_base: str | None = None  # None: same as receipt_id_base
    long_method: str = "udh8"
    latin_data_coding: int = 0x00
    alpha_ton: int = 5
    alpha_npi: int = 0
    numeric_ton: int = 1
    numeric_npi: int = 1
    countries: frozenset[str] | None = frozenset({"BY"})  # ISO regions it may send to; None = any
    max_parts: int = SMPP_MAX_PARTS  # issue 19 item 7: a longer text fails with the reason (what operators accept)
    # issue 14 item 12: true = phonenumbers' "not a valid number" is final, even for a mobile shape
    strict_numbers: bool = False
    # issue 14: operators on bad days (see config.toml for what each one means)
    bind_retry_min: float = 5.0  # first wait after a refused bind (RALYBND, RBINDFAIL), doubling
    queue_full_pause: float = 0.1  # first pause on ESME_RMSGQFUL, doubling while it repeats
    queue_full_pause_max: float = 5.0
    throttle_recovery: float = 3.0  # back to the configured rate this long after the last 0x58
    temporary_retries: int = 5  # sends of a part refused with 0x08, 0x64, ... before it fails
    temporary_retry_age: float = 600.0  # seconds from the first such refusal before it fails
    multipart_receipts: str = "all"  # which parts of a long message the operator sends receipts for
    validity: float = 172800.0  # no receipt this long after acceptance: undelivered, "no receipt"
    query_sm: bool = False  # ask the SMSC with query_sm before giving up on a receipt
    query_sm_delay: float = 3600.0  # after acceptance, before the first query_sm


@dataclass(frozen=True)
class SmsRuRouteConfig:
    """An SMS.ru account (reference/providers.md §1)."""

    name: str
    api_id: str = field(repr=False)
    base_url: str = "https://sms.ru/"
    ttl: int = 0  # minutes, 1–1440; 0 = the provider's default
    translit: bool = False
    test: bool = False  # SMS.ru sends and charges nothing, answers with dummy ids
    batch_size: int = 1  # numbers per sms/send request (up to 100) for identical texts
    batch_interval: float = 0.0
    callback_key: str = field(default="", repr=False)  # ?key= of /dlr/{route}; "" = no callback door (issue 18)
    unknown_receipts_max: int = UNKNOWN_RECEIPTS_MAX  # callbacks kept for ids not known yet (issue 18)
    unknown_receipts_ttl: float = UNKNOWN_RECEIPTS_TTL  # seconds one waits for its id, then dropped
    rate: float = 0.0  # requests per second, 0 = no cap
    concurrency: int = 4
    timeout: float = 15.0
    retry_min: float = 1.0
    retry_max: float = 300.0
    poll_after: float = 300.0  # seconds without a final status before we ask sms/status
    poll_interval: float = 60.0
    poll_for: float = 3 * 86400.0  # stop asking about a message this long after it was received
    countries: frozenset[str] | None = None  # ISO regions it may send to; None = any
    max_parts: int = SMSRU_MAX_PARTS  # SMS.ru refuses more (error 205): fail it here with the reason
    kind: str = "smsru"
    strict_numbers: bool = False  # issue 14 item 12, see SmppRouteConfig


@dataclass(frozen=True)
class SmscRouteConfig:
    """An SMSC.ru account (reference/providers.md §2): login+password or an API key."""

    name: str
    login: str = ""
    password: str = field(default="", repr=False)
    apikey: str = field(default="", repr=False)
    base_url: str = "https://smsc.ru/sys/"
    batch_size: int = 100  # numbers per send.php request
    batch_interval: float = 2.0  # seconds a batch waits for more numbers
    viber: bool = False  # Viber first, SMS when Viber does not deliver
    viber_fallback: float = 300.0  # seconds Viber gets before the SMS goes out
    skip_viber_for_sms_contacts: bool = False  # issue 16: SMS at once to numbers whose Viber last failed
    valid: int = 0  # lifetime in minutes, 0 = the provider's default
    callback_key: str = field(default="", repr=False)
    unknown_receipts_max: int = UNKNOWN_RECEIPTS_MAX  # callbacks kept for ids not known yet (issue 18)
    unknown_receipts_ttl: float = UNKNOWN_RECEIPTS_TTL  # seconds one waits for its id, then dropped
    rate: float = 0.0
    concurrency: int = 4
    timeout: float = 15.0
    retry_min: float = 1.0
    retry_max: float = 300.0
    poll_after: float = 300.0
    poll_interval: float = 60.0
    poll_for: float = 3 * 86400.0  # stop asking about a message this long after it was received
    countries: frozenset[str] | None = None
    # SMSC.ru takes at most 1000 characters (SMSC_MAX_CHARS), 15 Cyrillic parts; fewer by config
    max_parts: int = SMSC_MAX_PARTS
    kind: str = "smsc"
    strict_numbers: bool = False  # issue 14 item 12, see SmppRouteConfig


HttpRouteConfig = SmsRuRouteConfig | SmscRouteConfig
RouteConfig = SmppRouteConfig | SmsRuRouteConfig | SmscRouteConfig


@dataclass(frozen=True)
class SenderConfig:
    """A Bitrix24 provider CODE: which route it goes out on and under which name."""

    code: str
    route: str
    sender_id: str
    name: str
    portal: str | None = None  # member_id, when the CODE belongs to one portal only
    type: str = "transactional"  # or "marketing": needs consent, obeys the stop list and quiet hours
    marketing_sender_id: str | None = None  # used for marketing posts on this CODE; default sender_id

    def sender_for(self, marketing: bool) -> str:
        """The sender ID a message goes out under: operators bill and filter by it."""
        return (self.marketing_sender_id or self.sender_id) if marketing else self.sender_id


@dataclass(frozen=True)
class RulesConfig:
    """Business rules the gateway enforces so no Bitrix24 robot can forget them (issue 8)."""

    consent_field: str = "UF_CRM_SMS_CONSENT"
    consent_cache_ttl: float = 600.0
    duplicate_window: float = 600.0  # seconds; 0 turns the check off
    duplicate_outcome: str = "follow-first"  # or "failed"
    quiet_hours: tuple[int, int] | None = (21 * 60, 9 * 60)  # minutes after midnight, [start, end)
    timezone: str = "Europe/Minsk"
    stop_words: frozenset[str] = frozenset({"STOP", "СТОП"})
    # issue 14 item 11: a message held longer than this (consent, quiet hours) fails with the hold's reason
    hold_max_age: float = 86400.0


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    shim: ShimConfig
    portals: Mapping[str, PortalConfig]
    routes: Mapping[str, RouteConfig]
    senders: Mapping[str, SenderConfig]
    apps: Mapping[str, AppConfig] = field(default_factory=lambda: MappingProxyType({}))  # by domain
    rules: RulesConfig = field(default_factory=RulesConfig)
    app_events: AppEventsConfig = field(default_factory=AppEventsConfig)


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
    _only(raw, "", {"daemon", "shim", "portal", "app", "route", "sender", "rules", "app_events"})
    daemon = _daemon(_table(raw, "daemon"))
    shim = _shim(_table(raw, "shim"))
    portals = _portals(raw.get("portal", []))
    apps = _apps(raw.get("app", []))
    routes = {name: _route(name, t) for name, t in _table(raw, "route").items()}
    senders = {code: _sender(code, t) for code, t in _table(raw, "sender").items()}
    if not senders:
        raise ConfigError("sender", "at least one [sender.<CODE>] is needed")
    for code, s in senders.items():
        if s.route not in routes:
            raise ConfigError(f"sender.{code}.route", f"no route named {s.route!r}")
        if s.portal is not None and s.portal not in portals:
            raise ConfigError(f"sender.{code}.portal", f"no portal with member_id {s.portal!r}")
    _callback_keys_apart(shim, routes)
    return Config(
        daemon=daemon,
        shim=shim,
        portals=MappingProxyType(portals),
        routes=MappingProxyType(routes),
        senders=MappingProxyType(senders),
        apps=MappingProxyType(apps),
        rules=_rules(raw.get("rules", {})),
        app_events=_app_events(raw.get("app_events", {})),
    )


def _app_events(t: Any) -> AppEventsConfig:
    if not isinstance(t, dict):
        raise ConfigError("app_events", "must be a table")
    _only(t, "app_events", {"max_unknown", "unknown_max_age"})
    return AppEventsConfig(
        max_unknown=_int(t, "app_events", "max_unknown", default=20, low=1, high=10_000),
        unknown_max_age=_number(t, "app_events", "unknown_max_age", default=7 * 86400.0, low=60.0),
    )


def _domain(t: Mapping[str, Any], key: str) -> str:
    domain = normalize_domain(_str(t, key, "domain"))
    if domain is None:
        raise ConfigError(f"{key}.domain", "must be the portal's host name with an optional port, as Bitrix24"
                          f" reports it, e.g. example.bitrix24.by or crm.example.by:8443, got {t['domain']!r}")
    return domain


def _callback_keys_apart(shim: ShimConfig, routes: Mapping[str, Any]) -> None:
    """A callback_key must be none of the handler keys, which every HANDLER post
    carries in its URL (issue 18): the same string would open /dlr/ to anyone
    holding one captured post, the very thing a route's own key is there to stop."""
    handler_keys = {shim.handler_key, shim.handler_key_previous} - {""}
    for name, route in routes.items():
        key = getattr(route, "callback_key", "")
        if key and key in handler_keys:
            raise ConfigError(f"route.{name}.callback_key",
                              "must not be the shim's handler_key: every HANDLER post carries that in its URL")


# --- sections -------------------------------------------------------------------


def _daemon(t: Mapping[str, Any]) -> DaemonConfig:
    _only(t, "daemon", {"socket", "database", "socket_group", "metrics", "min_free_mb", "max_held_receipts", "node"})
    return DaemonConfig(
        socket_path=_str(t, "daemon", "socket"),
        database=_secret(t, "daemon", "database"),
        socket_group=_str(t, "daemon", "socket_group", default=None),
        metrics=_metrics(t, "daemon"),
        min_free_mb=_int(t, "daemon", "min_free_mb", default=500, low=0, high=10**7),
        max_held_receipts=_int(t, "daemon", "max_held_receipts", default=10_000, low=0, high=10**7),
        node=_str(t, "daemon", "node", default=""),
    )


def _shim(t: Mapping[str, Any]) -> ShimConfig:
    _only(t, "shim", {"listen", "handler_key", "public_url", "metrics", "posts_without_auth", "ts_window",
                      "allow_from", "spool_dir", "spool_max_bytes", "spool_after", "handler_key_previous"})
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
        **_shim_doors(t),
        **_spool(t),
    )


def _shim_doors(t: Mapping[str, Any]) -> dict[str, Any]:
    """The issue-18 door keys of ``[shim]``: who may post, and how old a post may be."""
    no_auth = _str(t, "shim", "posts_without_auth", default="accept")
    if no_auth not in NO_AUTH_CHOICES:
        raise ConfigError("shim.posts_without_auth", f"must be one of {', '.join(NO_AUTH_CHOICES)}, got {no_auth!r}")
    raw = _get(t, "shim", "allow_from", [])
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
    previous = _secret(t, "shim", "handler_key_previous", default="")
    if previous and len(previous) < 24:
        raise ConfigError("shim.handler_key_previous", "must be at least 24 random characters (the old handler_key)")
    if previous and previous == _secret(t, "shim", "handler_key"):
        raise ConfigError("shim.handler_key_previous", "is the same as handler_key: put the old key here")
    return dict(posts_without_auth=no_auth, ts_window=_number(t, "shim", "ts_window", default=86400.0, low=0.0),
                allow_from=tuple(networks), handler_key_previous=previous)


def _spool(t: Mapping[str, Any]) -> dict[str, Any]:
    after = _number(t, "shim", "spool_after", 0.5, low=0.01)
    if after > 30:
        raise ConfigError("shim.spool_after", f"must be at most 30 seconds, got {after!r}")
    return {
        "spool_dir": _str(t, "shim", "spool_dir", default=""),
        "spool_max_bytes": _int(t, "shim", "spool_max_bytes", 1024 * 1024 * 1024, low=1024 * 1024, high=2**50),
        "spool_after": after,
    }


def spool_dir(cfg: Config, env: Mapping[str, str] | None = None) -> str:
    """The shim's spool directory: ``shim.spool_dir``, or under systemd's
    ``StateDirectory=`` (``$STATE_DIRECTORY``), or beside the database, so a
    config written before the spool existed still gets one."""
    if cfg.shim.spool_dir:
        return cfg.shim.spool_dir
    state = (os.environ if env is None else env).get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return os.path.join(state, "spool")
    return os.path.join(os.path.dirname(os.path.abspath(cfg.daemon.database)), "shim-spool")


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


def _tables(items: Any, name: str, cls: type) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(key, table) of each [[name]] entry, checked for unknown keys against ``cls``."""
    if not isinstance(items, list):
        raise ConfigError(name, f"must be an array of tables: [[{name}]]")
    for i, t in enumerate(items):
        key = f"{name}[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(key, "must be a table")
        _only(t, key, {f.name for f in cls.__dataclass_fields__.values()})
        yield key, t


def _portals(items: Any) -> dict[str, PortalConfig]:
    portals: dict[str, PortalConfig] = {}
    for key, t in _tables(items, "portal", PortalConfig):
        p = PortalConfig(
            member_id=_str(t, key, "member_id"),
            domain=_domain(t, key),
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


def _apps(items: Any) -> dict[str, AppConfig]:
    apps: dict[str, AppConfig] = {}
    for key, t in _tables(items, "app", AppConfig):
        domain = _domain(t, key)
        client_endpoint = _url(t, key, "client_endpoint") if "client_endpoint" in t else f"https://{domain}/rest/"
        server_endpoint = (_url(t, key, "server_endpoint") if "server_endpoint" in t
                           else "https://oauth.bitrix.info/rest/")
        app = AppConfig(
            domain=domain,
            client_id=_str(t, key, "client_id"),
            client_secret=_str(t, key, "client_secret"),
            client_endpoint=client_endpoint,
            server_endpoint=server_endpoint,
            rate=_number(t, key, "rate", default=2.0, low=0.01),
            burst=_int(t, key, "burst", default=50, low=1, high=10_000),
        )
        if domain in apps:
            raise ConfigError(f"{key}.domain", f"duplicate domain {domain!r}")
        apps[domain] = app
    return apps


def _route(name: str, t: Any) -> RouteConfig:
    key = f"route.{name}"
    if not isinstance(t, dict):
        raise ConfigError(key, "must be a table")
    kind = _str(t, key, "kind", default="smpp")
    if kind in ("smsru", "smsc"):
        return _http_route(name, kind, t)
    if kind != "smpp":
        raise ConfigError(f"{key}.kind", f"unknown route kind {kind!r} (known: smpp, smsru, smsc)")
    _only(t, key, {f.name for f in SmppRouteConfig.__dataclass_fields__.values()} - {"name"})
    bind_mode = _str(t, key, "bind_mode", default="transceiver")
    if bind_mode not in BIND_MODES:
        raise ConfigError(f"{key}.bind_mode", f"must be one of {', '.join(BIND_MODES)}")
    id_base = _str(t, key, "receipt_id_base", default="auto")
    if id_base not in RECEIPT_ID_BASES:
        raise ConfigError(f"{key}.receipt_id_base", f"must be one of {', '.join(RECEIPT_ID_BASES)}")
    system_id = _str(t, key, "system_id")
    if len(system_id) > 15:
        raise ConfigError(f"{key}.system_id", "at most 15 characters (SMPP 3.4)")
    password = _secret(t, key, "password")
    if len(password) > 8:
        raise ConfigError(f"{key}.password", "at most 8 characters (SMPP 3.4)")
    countries = _countries(t, key, kind)
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
        **_route_profile(t, key),
        **_route_bad_days(t, key),
        countries=countries,
        max_parts=_int(t, key, "max_parts", default=SMPP_MAX_PARTS, low=1, high=255),
        strict_numbers=_bool(t, key, "strict_numbers", default=False),
    )


def _route_bad_days(t: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The knobs of issue 14: refused binds, queue-full, throttling, retries, receipts."""
    multipart = _str(t, key, "multipart_receipts", default="all")
    if multipart not in MULTIPART_RECEIPTS:
        raise ConfigError(f"{key}.multipart_receipts", f"must be one of {', '.join(MULTIPART_RECEIPTS)}")
    pause = _number(t, key, "queue_full_pause", default=0.1, low=0.01)
    validity = _number(t, key, "validity", default=172800.0, low=1.0)
    query_delay = _number(t, key, "query_sm_delay", default=3600.0, low=1.0)
    query = _bool(t, key, "query_sm", default=False)
    if query and query_delay >= validity:
        raise ConfigError(f"{key}.query_sm_delay", "must be shorter than validity, or no query_sm is ever sent")
    return dict(
        bind_retry_min=_number(t, key, "bind_retry_min", default=5.0, low=0.01),
        queue_full_pause=pause,
        queue_full_pause_max=_number(t, key, "queue_full_pause_max", default=max(5.0, pause), low=pause),
        throttle_recovery=_number(t, key, "throttle_recovery", default=3.0, low=0.1),
        temporary_retries=_int(t, key, "temporary_retries", default=5, low=1, high=1000),
        temporary_retry_age=_number(t, key, "temporary_retry_age", default=600.0, low=1.0),
        multipart_receipts=multipart,
        validity=validity,
        query_sm=query,
        query_sm_delay=query_delay,
    )


def _route_profile(t: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The per-operator knobs of issue 3: binds, id bases, long messages, coding, TON/NPI."""
    resp_id_base = _str(t, key, "resp_id_base", default=None)
    if resp_id_base is not None and resp_id_base not in ID_BASES:
        raise ConfigError(f"{key}.resp_id_base", f"must be one of {', '.join(ID_BASES)}")
    long_method = _str(t, key, "long_method", default="udh8")
    if long_method not in LONG_METHODS:
        raise ConfigError(f"{key}.long_method", f"must be one of {', '.join(LONG_METHODS)}")
    throughput = t.get("throughput", 0)
    if isinstance(throughput, (int, float)) and 0 < throughput < 1:
        raise ConfigError(f"{key}.throughput", "must be 0 (no cap) or at least 1 segment per second")
    latin = _int(t, key, "latin_data_coding", default=0, low=0, high=0xFF)
    if latin not in LATIN_CODINGS:
        raise ConfigError(f"{key}.latin_data_coding", "must be 0 (GSM 03.38), 1 (IA5/ASCII) or 3 (Latin-1)")
    return dict(
        binds=_int(t, key, "binds", default=1, low=1, high=32),
        resp_id_base=resp_id_base,
        long_method=long_method,
        latin_data_coding=latin,
        alpha_ton=_int(t, key, "alpha_ton", default=5, low=0, high=6),
        alpha_npi=_int(t, key, "alpha_npi", default=0, low=0, high=18),
        numeric_ton=_int(t, key, "numeric_ton", default=1, low=0, high=6),
        numeric_npi=_int(t, key, "numeric_npi", default=1, low=0, high=18),
    )


def _http_route(name: str, kind: str, t: Mapping[str, Any]) -> HttpRouteConfig:
    key = f"route.{name}"
    cls = SmsRuRouteConfig if kind == "smsru" else SmscRouteConfig
    _only(t, key, {f.name for f in cls.__dataclass_fields__.values()} - {"name"})
    callback_key = _str(t, key, "callback_key", default="")
    if callback_key and len(callback_key) < 24:
        raise ConfigError(f"{key}.callback_key", "must be at least 24 random characters")
    retry_min = _number(t, key, "retry_min", default=1.0, low=0.01)
    common: dict[str, Any] = dict(
        name=name,
        base_url=_url(t, key, "base_url") if "base_url" in t else cls.base_url,
        callback_key=callback_key,
        rate=_number(t, key, "rate", default=0.0, low=0.0),
        concurrency=_int(t, key, "concurrency", default=4, low=1, high=100),
        timeout=_number(t, key, "timeout", default=15.0, low=0.1),
        retry_min=retry_min,
        retry_max=_number(t, key, "retry_max", default=300.0, low=retry_min),
        poll_after=_number(t, key, "poll_after", default=300.0, low=0.0),
        poll_interval=_number(t, key, "poll_interval", default=60.0, low=1.0),
        poll_for=_number(t, key, "poll_for", default=3 * 86400.0, low=60.0),
        countries=_countries(t, key, kind),
        unknown_receipts_max=_int(t, key, "unknown_receipts_max", default=UNKNOWN_RECEIPTS_MAX, low=0,
                                  high=1_000_000),
        unknown_receipts_ttl=_number(t, key, "unknown_receipts_ttl", default=UNKNOWN_RECEIPTS_TTL, low=1.0),
        max_parts=_int(t, key, "max_parts", default=cls.max_parts, low=1,
                       high=SMSRU_MAX_PARTS if kind == "smsru" else SMSC_MAX_PARTS),
        strict_numbers=_bool(t, key, "strict_numbers", default=False),
    )
    if kind == "smsru":
        return SmsRuRouteConfig(
            batch_size=_int(t, key, "batch_size", default=1, low=1, high=100),
            batch_interval=_number(t, key, "batch_interval", default=0.0, low=0.0),
            api_id=_str(t, key, "api_id"),
            ttl=_int(t, key, "ttl", default=0, low=0, high=1440),
            translit=_bool(t, key, "translit", default=False),
            test=_bool(t, key, "test", default=False),
            **common,
        )
    login = _str(t, key, "login", default="")
    password = _str(t, key, "password", default="")
    apikey = _str(t, key, "apikey", default="")
    if not apikey and not (login and password):
        raise ConfigError(key, "needs apikey, or login and password")
    if apikey and (login or password):
        raise ConfigError(f"{key}.apikey", "give either apikey or login+password, not both")
    return SmscRouteConfig(
        login=login,
        password=password,
        apikey=apikey,
        batch_size=_int(t, key, "batch_size", default=100, low=1, high=100),
        batch_interval=_number(t, key, "batch_interval", default=2.0, low=0.0),
        viber=_bool(t, key, "viber", default=False),
        viber_fallback=_number(t, key, "viber_fallback", default=300.0, low=1.0),
        skip_viber_for_sms_contacts=_bool(t, key, "skip_viber_for_sms_contacts", default=False),
        valid=_int(t, key, "valid", default=0, low=0, high=24 * 60),
        **common,
    )


def _sender(code: str, t: Any) -> SenderConfig:
    key = f"sender.{code}"
    if not CODE_RE.match(code):
        raise ConfigError(key, "a CODE may only have a-z, 0-9, '.', '-' and '_' (Bitrix24's rule)")
    if not isinstance(t, dict):
        raise ConfigError(key, "must be a table")
    _only(t, key, {"route", "sender_id", "name", "portal", "type", "marketing_sender_id"})
    message_type = _str(t, key, "type", default="transactional")
    if message_type not in MESSAGE_TYPES:
        raise ConfigError(f"{key}.type", f"must be one of {', '.join(MESSAGE_TYPES)}, got {message_type!r}")
    marketing_sender_id = _str(t, key, "marketing_sender_id", default=None)
    if marketing_sender_id is not None:
        _sender_id(f"{key}.marketing_sender_id", marketing_sender_id)
    return SenderConfig(
        code=code,
        route=_str(t, key, "route"),
        sender_id=_sender_id(f"{key}.sender_id", _str(t, key, "sender_id")),
        name=_str(t, key, "name", default=code),
        portal=_str(t, key, "portal", default=None),
        type=message_type,
        marketing_sender_id=marketing_sender_id,
    )


def _sender_id(key: str, value: str) -> str:
    """A sender ID the operators will take, or an error saying exactly why not.

    Operators register alphanumeric names in Latin letters only (the source_addr of
    an SMS is GSM-7 at best), so a Cyrillic name would be rewritten or dropped by the
    SMSC long after Bitrix24 was told the message was sent.
    """
    if any(_is_cyrillic(c) for c in value):
        raise ConfigError(key, f"Cyrillic letters are not allowed in a sender ID (operators register "
                               f"Latin names only), got {value!r}")
    if NUMERIC_SENDER_RE.match(value) or ALNUM_SENDER_RE.match(value):
        return value
    if value.lstrip("+").isdigit():
        raise ConfigError(key, f"a numeric sender ID is at most 15 digits, got {len(value.lstrip('+'))}")
    if len(value) > 11 and ALNUM_SENDER_RE.match(value[:11]):
        raise ConfigError(key, f"an alphanumeric sender ID is at most 11 characters, got {len(value)}")
    raise ConfigError(key, "must be up to 11 Latin letters/digits, or a number of up to 15 digits")


def _is_cyrillic(char: str) -> bool:
    return "\u0400" <= char <= "\u052f"


def _countries(t: Mapping[str, Any], key: str, kind: str) -> frozenset[str] | None:
    """Regions a route sends to: ISO codes (``["BY", "RU"]``) or ``["*"]`` for any."""
    v = t.get("countries")
    if v is None:
        return DEFAULT_COUNTRIES.get(kind)
    if not isinstance(v, list) or not v or not all(isinstance(c, str) for c in v):
        raise ConfigError(f"{key}.countries", 'must be a non-empty list of country codes like ["BY", "RU"] or ["*"]')
    if ANY_COUNTRY in v:
        return None
    known = phonenumbers.SUPPORTED_REGIONS
    for c in v:
        if c.upper() not in known:
            raise ConfigError(f"{key}.countries", f"unknown country code {c!r} (ISO 3166 alpha-2, e.g. BY, RU)")
    return frozenset(c.upper() for c in v)


def _rules(t: Any) -> RulesConfig:
    key = "rules"
    if not isinstance(t, dict):
        raise ConfigError(key, "must be a table")
    _only(t, key, {f.name for f in RulesConfig.__dataclass_fields__.values()})
    d = RulesConfig()
    outcome = _str(t, key, "duplicate_outcome", default=d.duplicate_outcome)
    if outcome not in DUPLICATE_OUTCOMES:
        raise ConfigError(f"{key}.duplicate_outcome", f"must be one of {', '.join(DUPLICATE_OUTCOMES)}")
    timezone = _str(t, key, "timezone", default=d.timezone)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}.timezone", f"unknown time zone {timezone!r} (e.g. Europe/Minsk)") from None
    words = t.get("stop_words", sorted(d.stop_words))
    if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
        raise ConfigError(f"{key}.stop_words", "must be a list of non-empty strings")
    field_name = _str(t, key, "consent_field", default=d.consent_field)
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", field_name):
        raise ConfigError(f"{key}.consent_field", f"must be a CRM field name like UF_CRM_SMS_CONSENT, got {field_name!r}")
    return RulesConfig(
        consent_field=field_name,
        consent_cache_ttl=_number(t, key, "consent_cache_ttl", default=d.consent_cache_ttl, low=0.0),
        duplicate_window=_number(t, key, "duplicate_window", default=d.duplicate_window, low=0.0),
        duplicate_outcome=outcome,
        quiet_hours=_quiet_hours(t, key, d.quiet_hours),
        timezone=timezone,
        stop_words=frozenset(w.strip().upper() for w in words),
        hold_max_age=_number(t, key, "hold_max_age", default=d.hold_max_age, low=60.0),
    )


def _quiet_hours(t: Mapping[str, Any], key: str, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """``"21:00-09:00"`` (may wrap midnight) or ``""`` for none."""
    v = t.get("quiet_hours")
    if v is None:
        return default
    if v == "":
        return None
    m = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])-([01]?[0-9]|2[0-3]):([0-5][0-9])", v) \
        if isinstance(v, str) else None
    if m is None:
        raise ConfigError(f"{key}.quiet_hours", f'must be "HH:MM-HH:MM" or "" for none, got {v!r}')
    start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if start == end:
        raise ConfigError(f"{key}.quiet_hours", "start and end are equal; use \"\" to turn quiet hours off")
    return start, end


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


def _bool(t: Mapping[str, Any], key: str, name: str, default: Any = _MISSING) -> bool:
    v = _get(t, key, name, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{key}.{name}", f"must be true or false, got {v!r}")
    return v


def _number(t: Mapping[str, Any], key: str, name: str, default: Any = _MISSING, *, low: float) -> float:
    v = _get(t, key, name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
        raise ConfigError(f"{key}.{name}", f"must be a number ≥ {low}, got {v!r}")
    return float(v)
