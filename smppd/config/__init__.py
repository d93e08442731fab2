"""config.toml → typed, frozen objects; every default and every check written once.

A bad config must stop start-up with one line that names the key and the
problem (``route.life.port: must be an integer from 1 to 65535``). Secrets are
``repr=False`` so a config object can be logged safely. Each default lives in
its typed class only: the parsers read it from there, and the parts (routes, the
SMPP session) take their values from the parsed object, never a default of
their own (tests/test_config_defaults.py holds both to that).

The package is cut along the file's sections: ``readers`` (typed readers, the
error, files and ``${NAME}`` secrets), ``processes`` (``[daemon]``, ``[shim]``),
``portals`` (``[[portal]]``, ``[[app]]``, ``[app_events]``), ``routes``
(``[route.NAME]`` of each kind), ``rules`` (``[sender.CODE]``, ``[rules]``) and
``document`` (the whole file and the checks across sections).
"""

from .document import Config, load, load_daemon, parse, spool_dir
from .portals import AppConfig, AppEventsConfig, PortalConfig, normalize_domain
from .processes import LOOPBACK, NO_AUTH_CHOICES, DaemonConfig, IPNetwork, ShimConfig
from .readers import ENV_REF, ConfigError, read_env_file
from .routes import (
    ANY_COUNTRY,
    BIND_MODES,
    ID_BASES,
    LATIN_CODINGS,
    LONG_METHODS,
    MULTIPART_RECEIPTS,
    RECEIPT_ID_BASES,
    ROUTE_KINDS,
    SMPP_MAX_PARTS,
    SMSC_MAX_CHARS,
    SMSC_MAX_PARTS,
    SMSRU_MAX_PARTS,
    UNKNOWN_RECEIPTS_MAX,
    UNKNOWN_RECEIPTS_TTL,
    HttpRouteConfig,
    RouteConfig,
    SmppRouteConfig,
    SmscRouteConfig,
    SmsRuRouteConfig,
)
from .rules import (
    ALNUM_SENDER_RE,
    CODE_RE,
    DUPLICATE_OUTCOMES,
    MESSAGE_TYPES,
    NUMERIC_SENDER_RE,
    RulesConfig,
    SenderConfig,
)

__all__ = [
    "ALNUM_SENDER_RE", "ANY_COUNTRY", "BIND_MODES", "CODE_RE", "DUPLICATE_OUTCOMES", "ENV_REF", "ID_BASES",
    "LATIN_CODINGS", "LONG_METHODS", "LOOPBACK", "MESSAGE_TYPES", "MULTIPART_RECEIPTS", "NO_AUTH_CHOICES",
    "NUMERIC_SENDER_RE", "RECEIPT_ID_BASES", "ROUTE_KINDS", "SMPP_MAX_PARTS", "SMSC_MAX_CHARS", "SMSC_MAX_PARTS",
    "SMSRU_MAX_PARTS", "UNKNOWN_RECEIPTS_MAX", "UNKNOWN_RECEIPTS_TTL",
    "AppConfig", "AppEventsConfig", "Config", "ConfigError", "DaemonConfig", "HttpRouteConfig", "IPNetwork",
    "PortalConfig", "RouteConfig", "RulesConfig", "SenderConfig", "ShimConfig", "SmppRouteConfig",
    "SmscRouteConfig", "SmsRuRouteConfig",
    "load", "load_daemon", "normalize_domain", "parse", "read_env_file", "spool_dir",
]
